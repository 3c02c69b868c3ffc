// Content hashes the hub uses to name blobs: sha256 for LFS files, git's blob sha1
// ("blob <len>\0" + content) for regular files. Both are incremental so a file can be
// hashed while it is read once.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "common/status.h"

namespace mx {

enum class HashKind { kSha256, kGitSha1 };

class Hasher {
 public:
  // kGitSha1 needs the total length up front: git hashes a "blob <len>\0" prefix.
  Hasher(HashKind kind, uint64_t total_size);
  ~Hasher();
  Hasher(const Hasher&) = delete;
  Hasher& operator=(const Hasher&) = delete;

  void Update(const void* data, size_t len);
  // Lowercase hex digest. REQUIRES: called once.
  std::string FinalHex();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

std::string Sha256Hex(std::string_view data);
std::string GitSha1Hex(std::string_view data);

// Hashes a whole file by reading it sequentially. NotFound/IoError on read failure.
Result<std::string> HashFile(const std::string& path, HashKind kind);

// HMAC-SHA256 (raw 32 bytes), for request signatures (SigV4, Azure SharedKey).
std::string HmacSha256(std::string_view key, std::string_view data);
// The one hex encoder: lowercase by default (digests), uppercase for percent-encoding.
std::string HexEncode(std::string_view bytes, bool uppercase = false);
std::string Base64Encode(std::string_view bytes);
// NotFound-free: InvalidArgument when `text` is not base64.
Result<std::string> Base64Decode(std::string_view text);

// True if s is exactly `len` lowercase hex digits.
bool IsLowerHex(std::string_view s, size_t len);

}  // namespace mx
