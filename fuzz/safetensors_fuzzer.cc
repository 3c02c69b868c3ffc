// libFuzzer target: the safetensors header parser. Input = a whole file image. Invariants
// checked on success: tensors are sorted, contiguous from 0 and end at the data length.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "safetensors/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view file(reinterpret_cast<const char*>(data), size);
  auto n = mx::safetensors::ParseHeaderLength(file.substr(0, 8), size);
  if (!n.ok()) return 0;
  auto h = mx::safetensors::ParseHeader(file.substr(8, *n), size);
  if (!h.ok()) return 0;
  uint64_t expect = 0;
  for (const auto& t : h->tensors) {
    if (t.begin != expect || t.end < t.begin) std::abort();
    expect = t.end;
  }
  if (expect != h->data_bytes) std::abort();
  return 0;
}
