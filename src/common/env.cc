#include "common/env.h"

#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <system_error>

#include "common/text.h"

namespace mx {

std::optional<std::string> GetEnv(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr) return std::nullopt;
  return std::string(v);
}

bool IsTruthy(std::string_view value) {
  std::string v;
  for (char c : value) v.push_back(static_cast<char>(std::toupper(static_cast<unsigned char>(c))));
  return v == "1" || v == "ON" || v == "YES" || v == "TRUE";
}

bool EnvIsTruthy(const char* name) {
  auto v = GetEnv(name);
  return v && IsTruthy(*v);
}

namespace {

// Error messages quote the input, but never an unbounded amount of it.
std::string Quoted(std::string_view text) {
  constexpr size_t kMax = 64;
  if (text.size() <= kMax) return "'" + std::string(text) + "'";
  return "'" + std::string(text.substr(0, kMax)) + "...'";
}

// std::from_chars over the whole text: no leading '+', spaces or trailing characters.
template <typename T>
Result<T> ParseWhole(std::string_view text, const char* kind) {
  T value{};
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, value, 10);
  if (text.empty() || ec == std::errc::invalid_argument || ptr != end) {
    return Status::InvalidArgument("not " + std::string(kind) + ": " + Quoted(text));
  }
  if (ec == std::errc::result_out_of_range) {
    return Status::InvalidArgument(std::string(kind) + " out of range: " + Quoted(text));
  }
  return value;
}

}  // namespace

Result<uint64_t> ParseUint64(std::string_view text) {
  return ParseWhole<uint64_t>(text, "a non-negative integer");
}

Result<int64_t> ParseInt64(std::string_view text) {
  return ParseWhole<int64_t>(text, "an integer");
}

Result<int64_t> ParseIntInRange(std::string_view what, std::string_view text, int64_t lo,
                                int64_t hi) {
  auto v = ParseInt64(text);
  if (!v.ok() || *v < lo || *v > hi) {
    return Status::InvalidArgument(std::string(what) + ": " + Quoted(text) +
                                   " is not an integer in [" + std::to_string(lo) + ", " +
                                   std::to_string(hi) + "]");
  }
  return *v;
}

Result<uint64_t> ParseByteSize(std::string_view text) {
  std::string s(text);
  size_t pos = 0;
  double number = 0;
  // from_chars for doubles: locale-independent, no exceptions, no leading spaces or '+'.
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), number);
  if (ec == std::errc::invalid_argument) {
    return Status::InvalidArgument("not a byte size: " + Quoted(s) + " (try 256MiB or 1073741824)");
  }
  if (ec == std::errc::result_out_of_range) {
    return Status::InvalidArgument("byte size out of range: " + Quoted(s));
  }
  pos = static_cast<size_t>(ptr - s.data());
  std::string unit = s.substr(pos);
  while (!unit.empty() && unit.front() == ' ') unit.erase(0, 1);
  double mult = 1;
  if (unit.empty() || unit == "B")
    mult = 1;
  else if (unit == "K" || unit == "KiB" || unit == "k")
    mult = 1024.0;
  else if (unit == "M" || unit == "MiB")
    mult = 1024.0 * 1024;
  else if (unit == "G" || unit == "GiB")
    mult = 1024.0 * 1024 * 1024;
  else if (unit == "T" || unit == "TiB")
    mult = 1024.0 * 1024 * 1024 * 1024;
  else if (unit == "kB" || unit == "KB")
    mult = 1e3;
  else if (unit == "MB")
    mult = 1e6;
  else if (unit == "GB")
    mult = 1e9;
  else if (unit == "TB")
    mult = 1e12;
  else
    return Status::InvalidArgument("unknown byte-size unit in " + Quoted(s));
  if (number < 0 || !std::isfinite(number)) {
    return Status::InvalidArgument("byte size must be a non-negative number: " + Quoted(s));
  }
  // Converting a double at or above 2^64 to uint64_t is undefined: refuse it first.
  double bytes = number * mult;
  if (!(bytes < 18446744073709551616.0)) {
    return Status::InvalidArgument("byte size out of range (at most 16 EiB): " + Quoted(s));
  }
  return static_cast<uint64_t>(bytes);
}

std::string ExactSizeText(uint64_t bytes) {
  static const char* kUnits[] = {"bytes", "KiB", "MiB", "GiB", "TiB", "PiB"};
  int u = 0;
  while (u < 5 && bytes >= 1024 && bytes % 1024 == 0) {
    bytes /= 1024;
    ++u;
  }
  return std::to_string(bytes) + " " + kUnits[u];
}

Result<uint64_t> ParseByteSizeInRange(std::string_view what, std::string_view text, uint64_t lo,
                                      uint64_t hi) {
  Result<uint64_t> n = ParseByteSize(text);
  if (n.ok() && *n >= lo && *n <= hi) return n;
  std::string range = lo == 0 ? "at most " + ExactSizeText(hi)
                              : "between " + ExactSizeText(lo) + " and " + ExactSizeText(hi);
  return Status::InvalidArgument(std::string(what) + " ('" + Printable(text, 64) +
                                 "'): must be a size " + range +
                                 " (a number of bytes, or with a unit: 16MiB, 1GiB)");
}

std::string FormatBytes(double bytes) {
  static const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024 && u < 4) {
    bytes /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", bytes, kUnits[u]);
  return buf;
}

}  // namespace mx
