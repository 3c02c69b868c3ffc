#include "registry/registry.h"

#include <cctype>
#include <chrono>

#include "registry/stores.h"

namespace mx::registry {

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string ModelKey::Id() const {
  // provider|ignore_weights|revision|name: the name goes last because only it may hold '|'.
  return std::to_string(provider) + "|" + (ignore_weights ? "1" : "0") + "|" + revision + "|" +
         name;
}

bool CanClaim(const std::optional<ModelRecord>& current, int64_t now_ms, bool retry_error) {
  if (!current) return true;
  switch (current->state) {
    case ModelState::kDownloaded:
      return false;
    case ModelState::kError:
      return retry_error;
    case ModelState::kDownloading:
      return current->lease_expiry_ms < now_ms;
  }
  return false;
}

namespace {

// %XX escapes in a URL query value (a path with '&' or '%' in it).
std::string PercentDecode(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size() && std::isxdigit(static_cast<unsigned char>(s[i + 1])) &&
        std::isxdigit(static_cast<unsigned char>(s[i + 2]))) {
      out.push_back(static_cast<char>(std::stoi(s.substr(i + 1, 2), nullptr, 16)));
      i += 2;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

// The rediss:// options after '?': ca, cert, key, insecure.
Status ParseRedisTlsQuery(const std::string& query, StoreConfig* config) {
  size_t start = 0;
  while (start <= query.size()) {
    size_t amp = query.find('&', start);
    std::string item =
        query.substr(start, amp == std::string::npos ? std::string::npos : amp - start);
    start = amp == std::string::npos ? query.size() + 1 : amp + 1;
    if (item.empty()) continue;
    size_t eq = item.find('=');
    std::string name = item.substr(0, eq);
    std::string value = eq == std::string::npos ? "" : PercentDecode(item.substr(eq + 1));
    if (name == "ca") {
      config->redis_tls_ca = value;
    } else if (name == "cert") {
      config->redis_tls_cert = value;
    } else if (name == "key") {
      config->redis_tls_key = value;
    } else if (name == "insecure" || name == "insecure_skip_verify") {
      if (value != "true" && value != "1" && value != "false" && value != "0") {
        return Status::InvalidArgument("REDIS_URL option " + name + " must be true or false");
      }
      config->redis_tls_insecure = value == "true" || value == "1";
    } else {
      return Status::InvalidArgument("REDIS_URL has an unknown option '" + name +
                                     "' (known: ca, cert, key, insecure)");
    }
  }
  return Status::OK();
}

}  // namespace

Status ParseRedisUrl(const std::string& url, StoreConfig* config) {
  std::string rest = url;
  if (rest.rfind("redis://", 0) == 0) {
    rest = rest.substr(8);
    config->redis_tls = false;
  } else if (rest.rfind("rediss://", 0) == 0) {
    rest = rest.substr(9);
    config->redis_tls = true;
  } else {
    return Status::InvalidArgument("REDIS_URL must start with redis:// or rediss:// (TLS)");
  }
  size_t at = rest.rfind('@');
  if (at != std::string::npos) {
    std::string auth = rest.substr(0, at);
    size_t colon = auth.find(':');
    config->redis_password = colon == std::string::npos ? auth : auth.substr(colon + 1);
    rest = rest.substr(at + 1);
  }
  if (size_t q = rest.find('?'); q != std::string::npos) {
    if (!config->redis_tls) {
      return Status::InvalidArgument("REDIS_URL options (?" + rest.substr(q + 1, 40) +
                                     ") are for rediss:// (TLS) URLs");
    }
    MX_RETURN_IF_ERROR(ParseRedisTlsQuery(rest.substr(q + 1), config));
    rest = rest.substr(0, q);
  }
  size_t slash = rest.find('/');
  if (slash != std::string::npos) {
    std::string db = rest.substr(slash + 1);
    config->redis_db = db.empty() ? 0 : std::atoi(db.c_str());
    rest = rest.substr(0, slash);
  }
  size_t colon = rest.rfind(':');
  if (colon != std::string::npos) {
    config->redis_port = std::atoi(rest.substr(colon + 1).c_str());
    rest = rest.substr(0, colon);
  }
  if (!rest.empty()) config->redis_host = rest;
  if (config->redis_port <= 0 || config->redis_port > 65535) {
    return Status::InvalidArgument("REDIS_URL has an invalid port");
  }
  return Status::OK();
}

Result<std::unique_ptr<MetadataStore>> OpenStore(const StoreConfig& config) {
  if (config.backend == "embedded" || config.backend == "sqlite")
    return OpenSqliteStore(config.sqlite_path);
  if (config.backend == "redis") return OpenRedisStore(config);
  return Status::InvalidArgument("unknown MX_METADATA_BACKEND '" + config.backend +
                                 "' (use embedded or redis)");
}

}  // namespace mx::registry
