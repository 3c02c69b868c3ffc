// The safetensors dtype table: names, bit widths, torch spellings.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace mx::safetensors {

enum class DType {
  kBool,
  kU8,
  kI8,
  kF8_E5M2,
  kF8_E4M3,
  kF8_E8M0,
  kF8_E4M3FNUZ,
  kF8_E5M2FNUZ,
  kI16,
  kU16,
  kF16,
  kBF16,
  kI32,
  kU32,
  kF32,
  kI64,
  kU64,
  kF64,
  kC64,
  kF4,
  kF6_E2M3,
  kF6_E3M2,
};

std::optional<DType> ParseDType(std::string_view name);
std::string_view DTypeName(DType dtype);
// Bits per element (4 for F4, 6 for the F6 types).
int DTypeBits(DType dtype);
// torch's spelling ("torch.bfloat16"), or empty when torch has none.
std::string_view TorchDTypeName(DType dtype);

}  // namespace mx::safetensors
