// Liveness and readiness over HTTP, for Kubernetes probes and load balancers, on the
// mirror and metrics ports (without the bearer token: probes carry none, and the answers
// hold no model names, paths or addresses):
//   GET /healthz  200 "ok": the process answers.
//   GET /readyz   200 when every check passes, else 503; one line per check
//                 ("registry: ok", "cache: failed"), so the failing one is named.
// Checks: the registry answers a read (the embedded SQLite file, or a Redis round trip,
// which reconnects), and a file can be created in the cache (under .locks/mx/, which
// huggingface_hub's cache scan skips). Results are kept for a second, so probes (or a
// client hammering /readyz) cost at most one round of checks per second. A failing check
// logs its detail as a warning.
#pragma once

#include <chrono>
#include <mutex>
#include <optional>
#include <string>

#include "registry/registry.h"
#include "server/http_server.h"

namespace mx::server {

class Readiness {
 public:
  Readiness(std::string cache_dir, std::string backend, registry::MetadataStore* store)
      : cache_dir_(std::move(cache_dir)), backend_(std::move(backend)), store_(store) {}

  struct Report {
    bool ready = false;
    std::string text;  // "registry: ok\ncache: ok\n"
  };
  Report Check();

 private:
  Report Run();

  const std::string cache_dir_;
  const std::string backend_;
  registry::MetadataStore* store_;
  std::mutex mu_;
  std::optional<Report> last_;
  std::chrono::steady_clock::time_point last_at_;
};

// The answer for /healthz and /readyz, or nullopt for any other path.
std::optional<HttpResponse> HealthEndpoint(const HttpRequest& request, Readiness* readiness);

}  // namespace mx::server
