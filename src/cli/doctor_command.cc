// `mx doctor`: checks what a first download or a fleet roll-out depends on, one line each:
// the hub endpoint, the token, the cache directory, file locks there, free space, and the
// mx-server named by --endpoint / MODEL_EXPRESS_URL. Nothing secret is printed: the token
// only as "present" or "absent". Exit code 1 when any check failed; a warning (flock not
// working, which mx survives) does not fail.
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>

#include "cli/tool_commands.h"
#include "common/env.h"
#include "common/fs.h"
#include "common/log.h"
#include "common/text.h"
#include "http/http.h"
#include "hub/hub_client.h"
#include "modelexpress/health.grpc.pb.h"

namespace mx::cli {
namespace {

struct DoctorArgs {
  std::string cache_dir;
  std::string server;  // --endpoint
  std::string min_free = "1GiB";
  double timeout_s = 10;
};

enum class Outcome { kOk, kWarn, kFail, kSkip };

// One line per check: "ok    endpoint: ...". Counts failures.
class Report {
 public:
  void Line(Outcome outcome, const std::string& check, const std::string& text) {
    const char* tag = outcome == Outcome::kOk     ? "ok  "
                      : outcome == Outcome::kWarn ? "warn"
                      : outcome == Outcome::kFail ? "FAIL"
                                                  : "--  ";
    if (outcome == Outcome::kFail) ++failures_;
    std::printf("%s  %-11s %s\n", tag, (check + ":").c_str(), text.c_str());
    std::fflush(stdout);
  }
  int failures() const { return failures_; }

 private:
  int failures_ = 0;
};

// Server-provided text, bounded and terminal-safe.
std::string FromPeer(std::string_view text) { return Printable(text, 120); }

http::RetryPolicy QuickPolicy() {
  http::RetryPolicy p;
  p.max_attempts = 2;  // a doctor answers in seconds, not after a full backoff ramp
  p.base_delay_s = 0.2;
  p.max_delay_s = 1;
  return p;
}

// The hub answers at all (any HTTP status below 500 is an answer). Returns whether it did.
bool CheckEndpoint(const hub::HubConfig& config, const DoctorArgs& a, Report* r) {
  std::string shown = EscapeControl(RedactUrl(config.endpoint));
  if (config.offline) {
    r->Line(Outcome::kSkip, "endpoint", shown + " not contacted (HF_HUB_OFFLINE is set)");
    return false;
  }
  http::Request req;
  req.url = config.endpoint + "/";
  req.timeout_seconds = static_cast<long>(a.timeout_s);
  req.follow_redirects = false;
  req.max_body_bytes = 4096;
  auto start = std::chrono::steady_clock::now();
  auto resp = http::Fetch(req, QuickPolicy());
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!resp.ok()) {
    r->Line(Outcome::kFail, "endpoint",
            shown + " unreachable: " + EscapeControl(resp.status().message()) +
                " (HF_ENDPOINT; with the cache filled, HF_HUB_OFFLINE=1 works without it)");
    return false;
  }
  char timing[64];
  std::snprintf(timing, sizeof timing, "HTTP %ld in %.2fs", resp->status, secs);
  if (resp->status >= 500) {
    r->Line(Outcome::kFail, "endpoint", shown + " answers with an error (" + timing + ")");
    return false;
  }
  r->Line(Outcome::kOk, "endpoint", shown + " reachable (" + timing + ")");
  return true;
}

// Token present (never shown) and accepted by the hub's whoami-v2.
void CheckToken(const hub::HubConfig& config, bool reachable, const DoctorArgs& a, Report* r) {
  if (!config.token || config.token->empty()) {
    r->Line(Outcome::kOk, "token",
            "absent: public repos only (set HF_TOKEN, or `hf auth login`, for gated ones)");
    return;
  }
  if (!reachable) {
    r->Line(Outcome::kSkip, "token", "present, not checked (the endpoint is not reachable)");
    return;
  }
  http::Request req;
  req.url = config.endpoint + "/api/whoami-v2";
  req.headers.push_back("Authorization: Bearer " + *config.token);
  req.timeout_seconds = static_cast<long>(a.timeout_s);
  req.follow_redirects = false;  // the token goes to the hub's own origin only
  auto resp = http::FetchMetadata(req, 1 << 20, QuickPolicy());
  if (!resp.ok()) {
    r->Line(Outcome::kFail, "token",
            "present, not checked: " + EscapeControl(resp.status().message()));
    return;
  }
  if (resp->status == 401 || resp->status == 403) {
    r->Line(Outcome::kFail, "token",
            "present, refused by the hub (HTTP " + std::to_string(resp->status) +
                "): expired, revoked or for another endpoint");
    return;
  }
  if (resp->status != 200) {
    r->Line(Outcome::kFail, "token",
            "present, not checked: whoami-v2 answered HTTP " + std::to_string(resp->status));
    return;
  }
  auto j = nlohmann::json::parse(resp->body, nullptr, false);
  std::string who;
  if (!j.is_discarded() && j.is_object() && j.contains("name") && j["name"].is_string()) {
    who = " as " + FromPeer(j["name"].get<std::string>());
  }
  r->Line(Outcome::kOk, "token", "present, accepted" + who);
}

// The nearest existing ancestor of `path` (or `path` itself): the cache when it exists,
// else where mx would create it. May be a file that blocks the path.
std::string NearestExisting(const std::string& path) {
  std::string p = path;
  while (!p.empty() && p != "/") {
    struct stat st;
    if (::stat(p.c_str(), &st) == 0) return p;
    size_t slash = p.find_last_of('/');
    if (slash == std::string::npos) return ".";
    p = slash == 0 ? "/" : p.substr(0, slash);
  }
  return "/";
}

// Writes, syncs and removes a probe file; then checks that flock excludes a second holder
// there (on some NFS mounts it is a no-op that always "succeeds").
void CheckCacheAndLocks(const std::string& cache, const DoctorArgs& a, Report* r) {
  std::string shown = EscapeControl(cache);
  std::string dir = NearestExisting(cache);
  bool exists = dir == cache;
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    r->Line(Outcome::kFail, "cache",
            shown + " cannot be created: " + EscapeControl(dir) +
                " is not a directory (HF_HUB_CACHE, HF_HOME, --cache-dir)");
    r->Line(Outcome::kSkip, "flock", "not checked (no writable cache)");
    r->Line(Outcome::kSkip, "free space", "not checked (no cache directory)");
    return;
  }
  // Unique per run: a probe left by a killed doctor must not fail the next one (O_EXCL).
  std::string probe = dir + "/.mx-doctor-" + std::to_string(::getpid()) + "-" +
                      std::to_string(std::chrono::steady_clock::now().time_since_epoch().count()) +
                      ".tmp";
  int fd = ::open(probe.c_str(), O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0 || ::write(fd, "mx", 2) != 2 || ::fsync(fd) != 0) {
    std::string why = std::strerror(errno);
    if (fd >= 0) {
      ::close(fd);
      ::unlink(probe.c_str());
    }
    r->Line(
        Outcome::kFail, "cache",
        shown +
            (exists ? " is not writable: " : " cannot be created in " + EscapeControl(dir) + ": ") +
            why + " (HF_HUB_CACHE, HF_HOME, --cache-dir)");
    r->Line(Outcome::kSkip, "flock", "not checked (no writable cache)");
  } else {
    ::close(fd);
    r->Line(Outcome::kOk, "cache",
            shown + (exists ? " is writable"
                            : " does not exist yet; mx will create it in " + EscapeControl(dir) +
                                  " (writable)"));
    // Two independent opens of one file, the way two mx processes lock a blob.
    auto first = FileLock::TryAcquire(probe);
    auto second = FileLock::TryAcquire(probe);
    if (!first.ok() || !second.ok()) {
      const Status& st = first.ok() ? second.status() : first.status();
      r->Line(Outcome::kWarn, "flock",
              "fails here (" + EscapeControl(st.message()) +
                  "): mx still works, but use one writer per cache on this filesystem");
    } else if (first->held() && !second->held()) {
      r->Line(Outcome::kOk, "flock", "works: several mx processes may share this cache");
    } else {
      r->Line(Outcome::kWarn, "flock",
              "does not work on this filesystem (a second lock was granted): downloads stay "
              "correct but may fetch a file twice, and `mx cache rm` cannot see a reader on "
              "another host; use one writer per cache");
    }
    first = FileLock();
    second = FileLock();
    ::unlink(probe.c_str());
  }
  struct statvfs vfs;
  auto min_free = ParseByteSize(a.min_free);
  if (!min_free.ok()) {
    r->Line(Outcome::kFail, "free space",
            "--min-free: " + EscapeControl(min_free.status().message()));
  } else if (::statvfs(dir.c_str(), &vfs) != 0) {
    r->Line(Outcome::kFail, "free space",
            "cannot tell for " + EscapeControl(dir) + ": " + std::strerror(errno));
  } else {
    uint64_t free_bytes = static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize;
    bool enough = free_bytes >= *min_free;
    r->Line(
        enough ? Outcome::kOk : Outcome::kFail, "free space",
        FormatBytes(static_cast<double>(free_bytes)) + " free in " + EscapeControl(dir) +
            (enough ? ""
                    : " (below --min-free " + FormatBytes(static_cast<double>(*min_free)) + ")"));
  }
}

// mx-server's HealthService.GetHealth (open without the bearer token).
void CheckServer(const DoctorArgs& a, Report* r) {
  std::string target = a.server;
  std::string source = "--endpoint";
  for (const char* var : {"MODEL_EXPRESS_URL", "MODEL_EXPRESS_ENDPOINT"}) {
    if (!target.empty()) break;
    if (auto v = GetEnv(var); v && !v->empty()) target = *v, source = var;
  }
  if (target.empty()) {
    r->Line(Outcome::kSkip, "server",
            "not configured (pass --endpoint HOST:PORT or set MODEL_EXPRESS_URL)");
    return;
  }
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  std::string address = target;
  if (address.rfind("https://", 0) == 0) {
    address = address.substr(8);
    creds = grpc::SslCredentials(grpc::SslCredentialsOptions());
  } else if (address.rfind("http://", 0) == 0) {
    address = address.substr(7);
  } else if (address.rfind("grpc://", 0) == 0) {
    address = address.substr(7);
  }
  while (!address.empty() && address.back() == '/') address.pop_back();
  std::string shown = EscapeControl(address) + " (" + source + ")";
  auto stub = model_express::health::HealthService::NewStub(grpc::CreateChannel(address, creds));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() +
                   std::chrono::milliseconds(static_cast<int64_t>(a.timeout_s * 1000)));
  model_express::health::HealthRequest req;
  model_express::health::HealthResponse resp;
  grpc::Status st = stub->GetHealth(&ctx, req, &resp);
  if (!st.ok()) {
    r->Line(Outcome::kFail, "server",
            shown + " did not answer: " + FromPeer(st.error_message()) + " (gRPC code " +
                std::to_string(static_cast<int>(st.error_code())) + ")");
    return;
  }
  r->Line(resp.status() == "ok" ? Outcome::kOk : Outcome::kFail, "server",
          shown + ": mx-server " + FromPeer(resp.version()) + ", status " +
              FromPeer(resp.status()) + ", up " + std::to_string(resp.uptime()) + "s");
}

int RunDoctor(const DoctorArgs& a, const GlobalFlags& flags) {
  InitLogging("warn");
  hub::HubConfig config = hub::HubConfig::FromEnvironment();
  if (!a.cache_dir.empty()) config.cache_dir = a.cache_dir;
  if (flags.token) config.token = *flags.token;
  Report r;
  bool reachable = CheckEndpoint(config, a, &r);
  CheckToken(config, reachable, a, &r);
  CheckCacheAndLocks(config.cache_dir, a, &r);
  CheckServer(a, &r);
  return r.failures() > 0 ? 1 : 0;
}

}  // namespace

void RegisterDoctor(CLI::App& app, GlobalFlags& flags, int& exit_code) {
  auto args = std::make_shared<DoctorArgs>();
  CLI::App* cmd = app.add_subcommand(
      "doctor",
      "Check the hub endpoint, token, cache, file locks, free space and mx-server; one line "
      "each, exit 1 when a check fails");
  cmd->add_option("--cache-dir", args->cache_dir,
                  "Cache root (default: $HF_HUB_CACHE or $HF_HOME/hub)");
  cmd->add_option("--endpoint", args->server,
                  "mx-server gRPC address, HOST:PORT or http(s)://HOST:PORT (default: "
                  "$MODEL_EXPRESS_URL, $MODEL_EXPRESS_ENDPOINT)");
  // The value was scrubbed from argv before parsing (see main.cc).
  cmd->add_option("--token", "Hub token to check (prefer HF_TOKEN: argv is visible to others)");
  cmd->add_option("--min-free", args->min_free,
                  "Free space below this fails the check (default 1GiB)");
  cmd->add_option("--timeout", args->timeout_s, "Seconds per network check (default 10)")
      ->check(CLI::Range(1.0, 300.0));
  cmd->callback([args, &flags, &exit_code] { exit_code = RunDoctor(*args, flags); });
}

}  // namespace mx::cli
