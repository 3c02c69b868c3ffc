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

// "256MiB", "2GB", "1048576", "1.5GiB" -> bytes. Binary (KiB/MiB/GiB/TiB, K/M/G/T) and
// decimal (kB/MB/GB/TB) suffixes.
Result<uint64_t> ParseByteSize(std::string_view text);
// 1536 -> "1.5 KiB".
std::string FormatBytes(double bytes);

}  // namespace mx
