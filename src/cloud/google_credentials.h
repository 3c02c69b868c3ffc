// Placeholder: the Google default credential chain (see token_cache.h for the contract).
#pragma once

namespace mx::cloud {

class GoogleCredentialProvider;

}  // namespace mx::cloud
