#include "common/log.h"

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_color_sinks.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <vector>

#include "common/env.h"
#include "common/text.h"

namespace mx {
namespace {

std::atomic<bool> g_json{false};
// The fields of the LogEvent being formatted on this thread. The logger is synchronous
// (the sink formats in the calling thread), so the formatter below sees them.
thread_local const std::span<const LogField>* t_fields = nullptr;

void AppendJsonString(std::string_view text, std::string* out) {
  // Invalid UTF-8 cannot go into JSON: replace it (and cap nothing: Printable's limit is
  // set past any log line).
  std::string valid;
  if (!IsValidUtf8(text)) {
    valid = Printable(text, std::string::npos / 2);
    text = valid;
  }
  out->push_back('"');
  for (char ch : text) {
    auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"':
        *out += "\\\"";
        break;
      case '\\':
        *out += "\\\\";
        break;
      case '\n':
        *out += "\\n";
        break;
      case '\r':
        *out += "\\r";
        break;
      case '\t':
        *out += "\\t";
        break;
      default:
        if (c < 0x20 || c == 0x7f) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          *out += buf;
        } else {
          out->push_back(ch);
        }
    }
  }
  out->push_back('"');
}

// {"time":"...Z","level":"info","msg":"...",<fields>}\n
class JsonFormatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    std::string line = "{\"time\":\"";
    auto since = msg.time.time_since_epoch();
    auto secs = std::chrono::duration_cast<std::chrono::seconds>(since);
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(since - secs).count();
    std::time_t t = static_cast<std::time_t>(secs.count());
    std::tm tm{};
    ::gmtime_r(&t, &tm);
    char buf[40];
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
    line += buf;
    std::snprintf(buf, sizeof buf, ".%03dZ", static_cast<int>(ms));
    line += buf;
    line += "\",\"level\":";
    auto level = spdlog::level::to_string_view(msg.level);
    AppendJsonString(std::string_view(level.data(), level.size()), &line);
    line += ",\"msg\":";
    AppendJsonString(std::string_view(msg.payload.data(), msg.payload.size()), &line);
    if (t_fields != nullptr) {
      for (const LogField& f : *t_fields) {
        line.push_back(',');
        AppendJsonString(f.key, &line);
        line.push_back(':');
        if (f.number) {
          line += f.text;
        } else {
          AppendJsonString(f.text, &line);
        }
      }
    }
    line += "}\n";
    dest.append(line.data(), line.data() + line.size());
  }
  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<JsonFormatter>();
  }
};

// key=value, the value escaped and quoted when it would not read back as one word.
void AppendTextField(const LogField& f, std::string* out) {
  *out += ' ';
  *out += f.key;
  *out += '=';
  std::string v = EscapeControl(f.text);
  bool quote = v.empty() || v.find_first_of(" \"=") != std::string::npos;
  if (!quote) {
    *out += v;
    return;
  }
  *out += '"';
  for (char c : v) {
    if (c == '"' || c == '\\') *out += '\\';
    *out += c;
  }
  *out += '"';
}

}  // namespace

LogField::LogField(std::string_view k, double v) : key(k), number(true) {
  if (!std::isfinite(v)) {
    text = "null";
    return;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3f", v);
  text = buf;
}

bool IsLogLevel(std::string_view level) {
  for (std::string_view known :
       {"trace", "debug", "info", "warn", "warning", "error", "critical", "off"}) {
    if (level == known) return true;
  }
  return false;
}

void InitLogging(std::string_view level, LogFormat format, bool env_overrides) {
  auto logger = spdlog::get("mx");
  if (!logger) logger = spdlog::stderr_color_mt("mx");
  if (format == LogFormat::kJson) {
    logger->set_formatter(std::make_unique<JsonFormatter>());
  } else {
    logger->set_pattern("%Y-%m-%d %H:%M:%S.%e %^%l%$ %v");
  }
  g_json = format == LogFormat::kJson;
  std::string lvl(level);
  if (auto env = GetEnv("MX_LOG_LEVEL"); env_overrides && env && IsLogLevel(*env)) lvl = *env;
  if (lvl == "warning") lvl = "warn";
  logger->set_level(IsLogLevel(lvl) ? spdlog::level::from_str(lvl) : spdlog::level::info);
  spdlog::set_default_logger(logger);
}

void LogEvent(spdlog::level::level_enum level, std::string_view message,
              std::initializer_list<LogField> fields) {
  LogEvent(level, message, std::span<const LogField>(fields.begin(), fields.size()));
}

void LogEvent(spdlog::level::level_enum level, std::string_view message,
              std::span<const LogField> fields) {
  spdlog::logger* logger = spdlog::default_logger_raw();
  if (logger == nullptr || !logger->should_log(level)) return;
  if (g_json) {
    t_fields = &fields;
    logger->log(level, "{}", message);
    t_fields = nullptr;
    return;
  }
  std::string line(message);
  for (const LogField& f : fields) AppendTextField(f, &line);
  logger->log(level, "{}", line);
}

std::string JsonQuote(std::string_view text) {
  std::string out;
  AppendJsonString(text, &out);
  return out;
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
