#include "cloud/google_credentials.h"

#include <gtest/gtest.h>
