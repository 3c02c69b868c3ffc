#include "common/log.h"

#include <spdlog/sinks/stdout_color_sinks.h>

#include "common/env.h"

namespace mx {

void InitLogging(std::string_view level, LogFormat format) {
  auto logger = spdlog::stderr_color_mt("mx");
  if (format == LogFormat::kJson) {
    logger->set_pattern(R"({"time":"%Y-%m-%dT%H:%M:%S.%e%z","level":"%l","msg":"%v"})");
  } else {
    logger->set_pattern("%Y-%m-%d %H:%M:%S.%e %^%l%$ %v");
  }
  std::string lvl(level);
  if (auto env = GetEnv("MX_LOG_LEVEL")) lvl = *env;
  logger->set_level(spdlog::level::from_str(lvl));
  spdlog::set_default_logger(logger);
}

std::string RedactUrl(std::string_view url) {
  std::string out(url);
  size_t q = out.find('?');
  if (q != std::string::npos) out = out.substr(0, q) + "?<redacted>";
  size_t scheme = out.find("://");
  if (scheme != std::string::npos) {
    size_t host_start = scheme + 3;
    size_t slash = out.find('/', host_start);
    size_t at = out.find('@', host_start);
    if (at != std::string::npos && (slash == std::string::npos || at < slash)) {
      out.erase(host_start, at + 1 - host_start);
    }
  }
  return out;
}

}  // namespace mx
