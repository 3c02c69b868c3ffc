#include "cloud/aws_credentials.h"
