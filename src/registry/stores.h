// Internal to src/registry: the backends and the claim rule they share.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "registry/registry.h"

namespace mx::registry {

// The claim rule every backend applies atomically (Redis in Lua, SQLite in a transaction).
bool CanClaim(const std::optional<ModelRecord>& current, int64_t now_ms, bool retry_error);

Result<std::unique_ptr<MetadataStore>> OpenSqliteStore(const std::string& path);
Result<std::unique_ptr<MetadataStore>> OpenRedisStore(const StoreConfig& config);

}  // namespace mx::registry
