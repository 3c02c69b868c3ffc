// libFuzzer target: the hub tree-listing and revision-answer parsers and the path validator.
// Invariant checked: whatever the input, every accepted entry has a safe relative path,
// a 40-hex git oid and (for LFS) a 64-hex sha256 whose size equals the entry's size.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>
#include <vector>

#include "common/fs.h"
#include "common/hash.h"
#include "hub/hub_client.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  std::vector<mx::hub::TreeEntry> entries;
  if (mx::hub::ParseTreePage(input, &entries).ok()) {
    for (const auto& e : entries) {
      if (!mx::IsSafeRelativePath(e.path) || !mx::IsLowerHex(e.git_oid, 40)) std::abort();
      if (e.is_lfs() && !mx::IsLowerHex(*e.lfs_sha256, 64)) std::abort();
    }
  }
  // The same bytes as a revision API answer: an accepted one names a 40-hex commit.
  auto revision = mx::hub::ParseRevisionAnswer(input, "fuzz");
  if (revision.ok() && !mx::IsLowerHex(revision->commit, 40)) std::abort();
  (void)mx::IsSafeRelativePath(input);
  return 0;
}
