// Placeholder: the Azure default credential chain (see token_cache.h for the contract).
#pragma once

namespace mx::cloud {

class AzureCredentialProvider;

}  // namespace mx::cloud
