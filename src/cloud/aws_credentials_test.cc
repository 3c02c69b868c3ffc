#include "cloud/aws_credentials.h"

#include <gtest/gtest.h>
