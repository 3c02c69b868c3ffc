// safetensors header parsing and validation. Every rule of the format has its own error
// (see ErrorKind), so a bad file says exactly what is wrong with it:
//   8-byte little-endian N, N bytes of UTF-8 JSON (maybe space-padded), then the data.
// Tensors are returned sorted by offset; offsets are relative to the data start (8 + N).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "safetensors/dtype.h"

namespace mx::safetensors {

constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr uint64_t kMaxDimension = (1ull << 48) - 1;

// Which rule a file broke; the Status message starts with the rule's name.
enum class ErrorKind {
  kTooShort,        // fewer than 8 bytes
  kHeaderTooLarge,  // N > 100,000,000
  kHeaderPastEnd,   // 8 + N past the end of the file
  kNotUtf8,
  kNotJsonObject,
  kDuplicateKey,
  kBadMetadata,   // __metadata__ not a string->string map
  kMissingField,  // dtype, shape or data_offsets absent
  kUnknownDType,
  kBadNumber,   // negative, non-integer, or beyond 2^48-1
  kOverflow,    // arithmetic overflow in sizes
  kBadOffsets,  // end < begin, or not two numbers
  kFirstNotZero,
  kGapOrOverlap,
  kTrailingBytes,  // last end != data length
  kSizeMismatch,   // shape x bits != bytes, or not a whole number of bytes
};

std::string_view ErrorKindName(ErrorKind kind);
// The rule a Status from this module reports (its DataLoss statuses).
std::optional<ErrorKind> ErrorKindOf(const Status& status);

struct TensorInfo {
  std::string name;
  DType dtype = DType::kU8;
  std::vector<uint64_t> shape;
  uint64_t begin = 0;  // relative to the data start
  uint64_t end = 0;
  uint64_t bytes() const { return end - begin; }
};

struct Header {
  uint64_t header_bytes = 0;        // N
  uint64_t data_start = 0;          // 8 + N
  uint64_t data_bytes = 0;          // file size - data_start
  std::vector<TensorInfo> tensors;  // sorted by begin
  std::map<std::string, std::string> metadata;
};

// N from the first 8 bytes, checked against the file size.
Result<uint64_t> ParseHeaderLength(std::string_view first_bytes, uint64_t file_size);
// Validates the JSON header (N bytes) of a file of `file_size` bytes.
Result<Header> ParseHeader(std::string_view json, uint64_t file_size);

// model.safetensors.index.json: tensor name -> shard file name.
struct ShardIndex {
  uint64_t total_size = 0;
  std::map<std::string, std::string> weight_map;
  std::vector<std::string> Shards() const;  // distinct file names, sorted
};
Result<ShardIndex> ParseIndex(std::string_view json);

// Writes a valid safetensors file image (for tests and benchmarks): header padded with
// spaces to a multiple of 8, tensors ordered by descending alignment then name.
struct TensorSpec {
  std::string name;
  DType dtype;
  std::vector<uint64_t> shape;
};
std::string BuildHeader(const std::vector<TensorSpec>& tensors,
                        const std::map<std::string, std::string>& metadata,
                        std::vector<TensorInfo>* layout);

}  // namespace mx::safetensors
