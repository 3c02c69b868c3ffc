#include "cloud/jwt.h"

#include <openssl/evp.h>
#include <openssl/pem.h>

#include <cstring>
#include <memory>

#include "common/hash.h"

namespace mx::cloud {

std::string Base64Url(std::string_view bytes) {
  std::string out = Base64Encode(bytes);
  while (!out.empty() && out.back() == '=') out.pop_back();
  for (char& c : out) {
    if (c == '+') c = '-';
    if (c == '/') c = '_';
  }
  return out;
}

int PemPasswordCallback(char* buf, int size, int /*rwflag*/, void* user) {
  const auto* password = static_cast<const std::string*>(user);
  if (password == nullptr || password->empty() || password->size() > static_cast<size_t>(size)) {
    return -1;
  }
  std::memcpy(buf, password->data(), password->size());
  return static_cast<int>(password->size());
}

Result<std::string> MakeJwtRs256(std::string_view header_json, std::string_view claims_json,
                                 std::string_view pem, const std::string& password) {
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(
      BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())), BIO_free);
  if (!bio) return Status::Internal("BIO_new_mem_buf failed");
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(
      PEM_read_bio_PrivateKey(bio.get(), nullptr, PemPasswordCallback,
                              const_cast<std::string*>(&password)),
      EVP_PKEY_free);
  if (!key) {
    return Status::InvalidArgument(password.empty()
                                       ? "no unencrypted PEM private key"
                                       : "no PEM private key that the given password opens");
  }
  if (EVP_PKEY_base_id(key.get()) != EVP_PKEY_RSA) {
    return Status::InvalidArgument("the private key is not RSA (RS256 needs RSA)");
  }
  std::string signing_input = Base64Url(header_json) + "." + Base64Url(claims_json);
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  const auto* data = reinterpret_cast<const unsigned char*>(signing_input.data());
  size_t size = 0;
  if (!ctx || EVP_DigestSignInit(ctx.get(), nullptr, EVP_sha256(), nullptr, key.get()) != 1 ||
      EVP_DigestSign(ctx.get(), nullptr, &size, data, signing_input.size()) != 1) {
    return Status::Internal("RS256 signing failed");
  }
  std::string sig(size, '\0');
  if (EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()), &size, data,
                     signing_input.size()) != 1) {
    return Status::Internal("RS256 signing failed");
  }
  sig.resize(size);
  return signing_input + "." + Base64Url(sig);
}

}  // namespace mx::cloud
