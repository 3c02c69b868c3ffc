#include "registry/registry.h"

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

Status ParseRedisUrl(const std::string& url, StoreConfig* config) {
  std::string rest = url;
  if (rest.rfind("redis://", 0) == 0) {
    rest = rest.substr(8);
  } else {
    return Status::InvalidArgument(
        "REDIS_URL must start with redis:// (rediss:// is not supported)");
  }
  size_t at = rest.rfind('@');
  if (at != std::string::npos) {
    std::string auth = rest.substr(0, at);
    size_t colon = auth.find(':');
    config->redis_password = colon == std::string::npos ? auth : auth.substr(colon + 1);
    rest = rest.substr(at + 1);
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
