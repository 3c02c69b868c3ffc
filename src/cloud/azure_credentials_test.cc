#include "cloud/azure_credentials.h"

#include <gtest/gtest.h>
