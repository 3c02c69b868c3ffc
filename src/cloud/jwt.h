// The one RS256 JWT signer of the credential chains: Google's service-account assertion
// (RFC 7523) and Azure's certificate client assertion both are `base64url(header) "."
// base64url(claims) "." base64url(RSASSA-PKCS1-v1_5-SHA256 signature)`.
#pragma once

#include <string>
#include <string_view>

#include "common/status.h"

namespace mx::cloud {

// Base64url without padding (RFC 7515 section 2).
std::string Base64Url(std::string_view bytes);

// The compact JWT of `header_json` and `claims_json` (JSON texts, signed as given) with the
// RSA private key in `pem`. An encrypted key opens only with `password`: OpenSSL is never
// allowed to prompt on a terminal. InvalidArgument when the PEM holds no RSA private key
// that opens; the message never quotes the PEM.
Result<std::string> MakeJwtRs256(std::string_view header_json, std::string_view claims_json,
                                 std::string_view pem, const std::string& password = "");

// OpenSSL's password callback for PEM reads: supplies `*static_cast<std::string*>(user)`,
// or fails (-1) when there is none, instead of prompting.
int PemPasswordCallback(char* buf, int size, int rwflag, void* user);

}  // namespace mx::cloud
