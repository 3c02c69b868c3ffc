// Environment variables and small parsing helpers shared by every command.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "common/status.h"

namespace mx {

// The variable's value, or nullopt when unset. An empty value counts as set.
std::optional<std::string> GetEnv(const char* name);

// huggingface_hub's truthy spelling: 1, ON, YES, TRUE in any case.
bool IsTruthy(std::string_view value);
bool EnvIsTruthy(const char* name);

// The one integer parser for flags, environment variables and configuration: the whole of
// `text` must be a base-10 integer (no sign for ParseUint64, no spaces, no suffix) that
// fits the type. InvalidArgument otherwise, quoting (a bounded prefix of) the text.
Result<uint64_t> ParseUint64(std::string_view text);
Result<int64_t> ParseInt64(std::string_view text);
// ParseInt64 restricted to [lo, hi]; the error names `what` and the range.
Result<int64_t> ParseIntInRange(std::string_view what, std::string_view text, int64_t lo,
                                int64_t hi);

// "256MiB", "2GB", "1048576", "1.5GiB" -> bytes. Binary (KiB/MiB/GiB/TiB, K/M/G/T) and
// decimal (kB/MB/GB/TB) suffixes. InvalidArgument when the value does not fit 64 bits.
Result<uint64_t> ParseByteSize(std::string_view text);
// ParseByteSize restricted to [lo, hi]. The error names `what` (a flag, an environment
// variable, a YAML key and its file), quotes a bounded copy of the text and says what is
// allowed: "RUNAI_STREAMER_CHUNK_BYTESIZE ('8x'): must be a size between 1 bytes and 1 GiB
// (a number of bytes, or with a unit: 16MiB, 1GiB)".
Result<uint64_t> ParseByteSizeInRange(std::string_view what, std::string_view text, uint64_t lo,
                                      uint64_t hi);
// An exact size in the largest unit that divides it: 65536 -> "64 KiB", 1000 -> "1000 bytes".
std::string ExactSizeText(uint64_t bytes);
// 1536 -> "1.5 KiB".
std::string FormatBytes(double bytes);

}  // namespace mx
