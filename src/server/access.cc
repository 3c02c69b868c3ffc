#include "server/access.h"

#include <chrono>

#include "hub/hub_client.h"
#include "server/http_parse.h"

namespace mx::server {

namespace {

constexpr int64_t kRememberMs = 5 * 60 * 1000;
constexpr size_t kMaxRemembered = 4096;

int64_t SteadyMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

AccessPolicy::Caller AccessPolicy::Classify(std::string_view authorization) const {
  if (config_.auth_token.empty()) return Caller::kAnonymous;
  if (BearerTokenMatches(authorization, config_.auth_token)) return Caller::kAuthenticated;
  // Without a token an anonymous caller may still read public repos under the
  // "authenticated" policy; a wrong token is always refused (a misconfigured client should
  // hear about it, not silently get less).
  if (authorization.empty() && config_.gated_repos == "authenticated") return Caller::kAnonymous;
  return Caller::kRejected;
}

Status AccessPolicy::CheckRepo(Caller caller, const std::string& repo_id,
                               const std::string& revision) {
  if (caller == Caller::kRejected) {
    return Status::Unauthenticated("missing or wrong bearer token");
  }
  if (config_.gated_repos != "authenticated" || caller == Caller::kAuthenticated) {
    return Status::OK();
  }
  const Status denied = Status::PermissionDenied(
      repo_id +
      " is gated or private upstream (or could not be checked): this server serves it "
      "only to callers with its bearer token");
  int64_t now = SteadyMs();
  const std::string key = repo_id + "@" + revision;
  {
    std::lock_guard<std::mutex> l(mu_);
    auto it = checked_.find(key);
    if (it != checked_.end() && now - it->second.second < kRememberMs) {
      return it->second.first ? Status::OK() : denied;
    }
  }
  if (config_.hub.offline) return denied;
  hub::HubConfig anonymous = config_.hub;
  anonymous.token.reset();
  hub::HubClient upstream(anonymous, hub::RepoType::kModel);
  bool restricted = true;
  auto commit = upstream.ResolveRevision(repo_id, revision, &restricted);
  // Gated repos answer this API anonymously: their flags, not the status, decide.
  bool is_public = commit.ok() && !restricted;
  // Only definite answers are remembered: a network error or an unknown revision (which
  // anyone could ask for, to lock others out of a public repo) is asked again next time.
  bool definite = commit.ok() || commit.status().code() == StatusCode::kUnauthenticated ||
                  commit.status().code() == StatusCode::kPermissionDenied;
  if (definite) {
    std::lock_guard<std::mutex> l(mu_);
    if (checked_.size() >= kMaxRemembered) checked_.clear();
    checked_[key] = {is_public, now};
  }
  if (is_public) return Status::OK();
  // Not found anonymously: an unknown revision, or a private repo, which the hub itself
  // shows anonymous callers as missing. Say the same (and nothing about the server's view).
  if (commit.status().code() == StatusCode::kNotFound) return commit.status();
  return denied;
}

}  // namespace mx::server
