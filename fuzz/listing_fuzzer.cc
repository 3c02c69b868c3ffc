// libFuzzer target: the S3 ListObjectsV2 and Azure List Blobs page parsing, i.e. the
// NextXmlElement scanner driven exactly as s3_storage.cc and azure_storage.cc drive it,
// plus the checks every listed entry goes through (CheckListedKey, ParseObjectSize).
// Invariants checked: the scanner always advances (so a listing page cannot loop), every
// accepted key starts with the listed prefix and has no "." or ".." segment, and every
// accepted size is at most kMaxObjectBytes.
// (The hub revision JSON has no parse function of its own: it is read inline in
// HubClient::ResolveRevision; the tree JSON is covered by hub_tree_fuzzer.)
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "storage/backends.h"
#include "storage/storage.h"

namespace {

using mx::storage::CheckListedKey;
using mx::storage::HasDotSegment;
using mx::storage::kMaxObjectBytes;
using mx::storage::NextXmlElement;
using mx::storage::ParseObjectSize;

const std::string kPrefix = "m/";

// One listed entry: the outer element `entry`, name element `name`, size element `size`.
void Entries(const std::string& body, const char* entry, const char* name, const char* size) {
  size_t pos = 0;
  std::string item;
  while (true) {
    size_t before = pos;
    if (!NextXmlElement(body, entry, &pos, &item)) break;
    if (pos <= before || pos > body.size()) std::abort();  // no progress: an endless page
    size_t p = 0;
    std::string key, bytes;
    if (!NextXmlElement(item, name, &p, &key)) continue;
    p = 0;
    NextXmlElement(item, size, &p, &bytes);
    if (!CheckListedKey(key, kPrefix, "fuzz").ok()) continue;
    if (key.compare(0, kPrefix.size(), kPrefix) != 0 || HasDotSegment(key)) std::abort();
    auto n = ParseObjectSize(bytes);
    if (n.ok() && *n > kMaxObjectBytes) std::abort();
  }
}

void Field(const std::string& body, const char* tag) {
  size_t p = 0;
  std::string text;
  if (NextXmlElement(body, tag, &p, &text) && text.size() > body.size()) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string body(reinterpret_cast<const char*>(data), size);
  Entries(body, "Contents", "Key", "Size");         // S3 ListObjectsV2
  Entries(body, "Blob", "Name", "Content-Length");  // Azure List Blobs
  for (const char* tag : {"IsTruncated", "NextContinuationToken", "NextMarker", "Code", "Message"})
    Field(body, tag);
  return 0;
}
