// libFuzzer target: every parser of a token endpoint's or credential file's bytes in
// src/cloud, which a hostile metadata server, STS stand-in or a planted file controls. The
// first byte picks the parser; the rest is its input. Invariants checked: nothing crashes or
// throws; an accepted token or key is non-empty, bounded and free of CR/LF (it goes into a
// header); an accepted expiry is after `now`.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <ctime>
#include <string>
#include <string_view>

#include "cloud/aws_credentials.h"
#include "cloud/azure_credentials.h"
#include "cloud/google_credentials.h"
#include "cloud/token_cache.h"

namespace {

constexpr std::time_t kNow = 1796079600;  // 2026-11-30T23:00:00Z

void CheckHeaderValue(const std::string& v) {
  if (v.empty() || v.size() > (1u << 20) || v.find_first_of("\r\n") != std::string::npos) {
    std::abort();
  }
}

void CheckExpiry(const std::optional<std::time_t>& at) {
  if (at && *at <= kNow) std::abort();
}

template <typename T>
void CheckToken(const mx::Result<mx::cloud::Expiring<T>>& r) {
  if (!r.ok()) return;
  if constexpr (std::is_same_v<T, std::string>) {
    CheckHeaderValue(r->value);
  } else {
    CheckHeaderValue(r->value.access_key_id);
    CheckHeaderValue(r->value.secret_access_key);
  }
  CheckExpiry(r->expires_at);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  std::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 10) {
    case 0:
      CheckToken(mx::cloud::ParseStsCredentials(text, kNow));
      break;
    case 1:
      CheckToken(mx::cloud::ParseAwsCredentialJson(text, kNow));
      break;
    case 2:
      (void)mx::cloud::ParseAwsIni(text, data[0] & 0x10);
      break;
    case 3:
      (void)mx::cloud::ParseGoogleCredentialFile(text, "fuzz");
      break;
    case 4:
      CheckToken(mx::cloud::ParseGoogleTokenResponse(text, "fuzz", kNow));
      break;
    case 5:
      CheckToken(mx::cloud::ParseGoogleImpersonationResponse(text, "fuzz", kNow));
      break;
    case 6:
      CheckToken(mx::cloud::ParseAzureAdTokenAnswer(text, kNow));
      break;
    case 7:
      CheckToken(mx::cloud::ParseManagedIdentityTokenAnswer(text, kNow));
      break;
    case 8:
      (void)mx::cloud::ParseAzureConnectionString(text);
      break;
    default:
      (void)mx::cloud::ParseIso8601Utc(text);
      break;
  }
  return 0;
}
