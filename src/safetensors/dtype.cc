#include "safetensors/dtype.h"

#include <array>

namespace mx::safetensors {
namespace {

struct Row {
  DType dtype;
  std::string_view name;
  int bits;
  std::string_view torch;
};

constexpr std::array<Row, 22> kTable = {{
    {DType::kBool, "BOOL", 8, "torch.bool"},
    {DType::kU8, "U8", 8, "torch.uint8"},
    {DType::kI8, "I8", 8, "torch.int8"},
    {DType::kF8_E5M2, "F8_E5M2", 8, "torch.float8_e5m2"},
    {DType::kF8_E4M3, "F8_E4M3", 8, "torch.float8_e4m3fn"},
    {DType::kF8_E8M0, "F8_E8M0", 8, ""},
    {DType::kF8_E4M3FNUZ, "F8_E4M3FNUZ", 8, ""},
    {DType::kF8_E5M2FNUZ, "F8_E5M2FNUZ", 8, ""},
    {DType::kI16, "I16", 16, "torch.int16"},
    {DType::kU16, "U16", 16, ""},
    {DType::kF16, "F16", 16, "torch.float16"},
    {DType::kBF16, "BF16", 16, "torch.bfloat16"},
    {DType::kI32, "I32", 32, "torch.int32"},
    {DType::kU32, "U32", 32, ""},
    {DType::kF32, "F32", 32, "torch.float32"},
    {DType::kI64, "I64", 64, "torch.int64"},
    {DType::kU64, "U64", 64, ""},
    {DType::kF64, "F64", 64, "torch.float64"},
    {DType::kC64, "C64", 64, ""},
    {DType::kF4, "F4", 4, ""},
    {DType::kF6_E2M3, "F6_E2M3", 6, ""},
    {DType::kF6_E3M2, "F6_E3M2", 6, ""},
}};

const Row& RowOf(DType d) { return kTable[static_cast<size_t>(d)]; }

}  // namespace

std::optional<DType> ParseDType(std::string_view name) {
  for (const auto& r : kTable) {
    if (r.name == name) return r.dtype;
  }
  return std::nullopt;
}

std::string_view DTypeName(DType d) { return RowOf(d).name; }
int DTypeBits(DType d) { return RowOf(d).bits; }
std::string_view TorchDTypeName(DType d) { return RowOf(d).torch; }

}  // namespace mx::safetensors
