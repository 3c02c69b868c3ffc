#include "cloud/google_credentials.h"
