#include "cloud/azure_credentials.h"
