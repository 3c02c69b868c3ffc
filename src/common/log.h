// Logging: spdlog to stderr. Messages never contain secrets: callers pass URLs through
// RedactUrl() and never format tokens or Authorization headers.
#pragma once

#include <spdlog/spdlog.h>

#include <string>
#include <string_view>

namespace mx {

enum class LogFormat { kText, kJson };

// level: "debug", "info", "warn", "error" (MX_LOG_LEVEL overrides when set).
void InitLogging(std::string_view level, LogFormat format = LogFormat::kText);

// Drops user:password@ and any query string (signed CDN URLs carry credentials there).
std::string RedactUrl(std::string_view url);

}  // namespace mx
