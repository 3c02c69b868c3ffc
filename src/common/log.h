// Logging: spdlog to stderr. Messages never contain secrets: callers pass URLs through
// RedactUrl() and never format tokens or Authorization headers.
//
// Two formats. Text: "2026-01-02 03:04:05.678 info message key=value ...". JSON (for pod
// log collectors): one object per line, {"time", "level", "msg"} plus, for records made
// with LogEvent, one key per field ({"msg":"download done","model":"org/m","bytes":42}),
// so a collector can filter and sum without parsing the message. Every string is escaped
// (quotes, backslashes, control characters; invalid UTF-8 becomes '?'), so no input can
// break a record or forge another one.
#pragma once

#include <spdlog/spdlog.h>

#include <cstdint>
#include <initializer_list>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>

namespace mx {

enum class LogFormat { kText, kJson };

// level: "debug", "info", "warn", "error". MX_LOG_LEVEL, when set to a known level,
// overrides it unless `env_overrides` is false (mx-server merges the variable into its
// own settings, where a flag beats it).
void InitLogging(std::string_view level, LogFormat format = LogFormat::kText,
                 bool env_overrides = true);

// The level names InitLogging accepts: trace, debug, info, warn, warning, error,
// critical, off. (spdlog silently turns any other name into "off".)
bool IsLogLevel(std::string_view level);

// Drops user:password@ and any query string (signed CDN URLs carry credentials there).
std::string RedactUrl(std::string_view url);

// One key/value of a structured record. Numbers stay numbers in JSON; everything else is
// a string. Keys are fixed identifiers chosen by the caller (never input).
struct LogField {
  LogField(std::string_view k, std::string_view v) : key(k), text(v), number(false) {}
  LogField(std::string_view k, const char* v) : key(k), text(v), number(false) {}
  LogField(std::string_view k, const std::string& v) : key(k), text(v), number(false) {}
  template <typename T, typename = std::enable_if_t<std::is_integral_v<T>>>
  LogField(std::string_view k, T v) : key(k), text(std::to_string(v)), number(true) {}
  LogField(std::string_view k, double v);

  std::string key;
  std::string text;
  bool number;
};

// Logs `message` with `fields`: in text as "message key=value key="two words"" (values
// escaped, quoted when they hold a space, '"' or '='), in JSON as separate keys.
void LogEvent(spdlog::level::level_enum level, std::string_view message,
              std::initializer_list<LogField> fields);
// The same, for fields gathered at run time (some present only sometimes).
void LogEvent(spdlog::level::level_enum level, std::string_view message,
              std::span<const LogField> fields);

// A JSON string literal (with the quotes) for `text`: escaped as described above.
std::string JsonQuote(std::string_view text);

}  // namespace mx
