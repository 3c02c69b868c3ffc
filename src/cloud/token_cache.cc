#include "cloud/token_cache.h"

#include <cctype>

#include "common/env.h"
#include "common/fs.h"
#include "common/text.h"
#include "http/http.h"

namespace mx::cloud {

EnvLookup ProcessEnvironment() {
  return [](const char* name) { return GetEnv(name); };
}

Result<std::time_t> ParseIso8601Utc(std::string_view text) {
  int y, mo, d, h, mi, s;
  std::string copy(text.substr(0, 64));
  char rest[32] = {0};
  if (std::sscanf(copy.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d%31s", &y, &mo, &d, &h, &mi, &s, rest) <
      6) {
    return Status::InvalidArgument("not an ISO 8601 UTC time: '" + copy.substr(0, 40) + "'");
  }
  std::string_view tail(rest);
  if (!tail.empty() && tail[0] == '.') {  // fractional seconds
    size_t i = 1;
    while (i < tail.size() && std::isdigit(static_cast<unsigned char>(tail[i]))) ++i;
    tail.remove_prefix(i);
  }
  if (!(tail.empty() || tail == "Z" || tail == "+00:00" || tail == "+0000")) {
    return Status::InvalidArgument("not a UTC time: '" + copy.substr(0, 40) + "'");
  }
  if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || s > 60) {
    return Status::InvalidArgument("time out of range: '" + copy.substr(0, 40) + "'");
  }
  std::tm tm{};
  tm.tm_year = y - 1900;
  tm.tm_mon = mo - 1;
  tm.tm_mday = d;
  tm.tm_hour = h;
  tm.tm_min = mi;
  tm.tm_sec = s;
  return timegm(&tm);
}

std::string FormEncode(const std::vector<std::pair<std::string, std::string>>& fields) {
  std::string out;
  for (const auto& [name, value] : fields) {
    if (!out.empty()) out += '&';
    out += http::UrlQuote(name) + "=" + http::UrlQuote(value);
  }
  return out;
}

Result<std::string> ReadTokenFile(const std::string& path, std::string_view variable) {
  Result<std::string> text = ReadFile(path, 64 << 10);
  if (!text.ok()) {
    return Status(text.status().code(), "cannot read the token file named by " +
                                            std::string(variable) + ": " + text.status().message());
  }
  std::string token(TrimWhitespace(*text));
  if (token.empty()) {
    return Status::InvalidArgument("the token file named by " + std::string(variable) + " (" +
                                   path + ") is empty");
  }
  return token;
}

}  // namespace mx::cloud
