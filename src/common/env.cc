#include "common/env.h"

#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

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

Result<uint64_t> ParseByteSize(std::string_view text) {
  std::string s(text);
  size_t pos = 0;
  double number = 0;
  try {
    number = std::stod(s, &pos);
  } catch (...) {
    return Status::InvalidArgument("not a byte size: '" + s + "' (try 256MiB or 1073741824)");
  }
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
    return Status::InvalidArgument("unknown byte-size unit in '" + s + "'");
  if (number < 0 || !std::isfinite(number)) {
    return Status::InvalidArgument("byte size must be non-negative: '" + s + "'");
  }
  return static_cast<uint64_t>(number * mult);
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
