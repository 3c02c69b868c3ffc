// AccessPolicy: who may read what through mx-server, one rule for gRPC and the mirror.
//
//   * The bearer token (--auth-token-file), when set, is checked in constant time. A
//     request with a wrong token is refused everywhere except the health checks.
//   * --gated-repos any (default, as ModelExpress): every caller that passed the token
//     check is served with the server's own HF_TOKEN, gated and private repos included.
//   * --gated-repos authenticated: callers without the bearer token are anonymous; they are
//     served only repos that upstream marks neither private nor gated (checked upstream
//     without the server's HF_TOKEN, remembered for a few minutes; refused when offline).
//     Callers with the token get the server's HF_TOKEN.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <string_view>

#include "common/status.h"
#include "server/config.h"

namespace mx::server {

class AccessPolicy {
 public:
  enum class Caller { kRejected, kAnonymous, kAuthenticated };

  explicit AccessPolicy(const ServerConfig& config) : config_(config) {}

  // True under --gated-repos authenticated: anonymous callers need CheckRepo.
  bool RestrictsAnonymous() const { return config_.gated_repos == "authenticated"; }

  // From the request's Authorization value ("" when absent).
  Caller Classify(std::string_view authorization) const;

  // OK when `caller` may read repo_id at `revision` (already validated). PermissionDenied
  // for an anonymous caller and a repo upstream does not serve anonymously.
  Status CheckRepo(Caller caller, const std::string& repo_id, const std::string& revision);

 private:
  const ServerConfig& config_;
  std::mutex mu_;
  // repo@revision -> (served anonymously, when checked, steady ms). Bounded.
  std::map<std::string, std::pair<bool, int64_t>> checked_;
};

}  // namespace mx::server
