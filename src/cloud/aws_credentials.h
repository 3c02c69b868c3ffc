// Placeholder: the Aws default credential chain (see token_cache.h for the contract).
#pragma once

namespace mx::cloud {

class AwsCredentialProvider;

}  // namespace mx::cloud
