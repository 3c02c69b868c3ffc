#include "server/health.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/fs.h"
#include "common/log.h"

namespace mx::server {
namespace {

// Creates, writes and removes a file in the cache's private folder.
Status ProbeWritable(const std::string& cache_dir) {
  std::string dir = cache_dir + "/.locks/mx";
  MX_RETURN_IF_ERROR(MakeDirs(dir));
  std::string path = dir + "/.ready-probe." + UniqueTempSuffix();
  ScopedFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (fd.get() < 0) return Status::FromErrno(errno, "create " + path);
  bool wrote = ::write(fd.get(), "ok", 2) == 2;
  int write_errno = errno;
  ::unlink(path.c_str());
  if (!wrote) return Status::FromErrno(write_errno, "write " + path);
  return Status::OK();
}

}  // namespace

Readiness::Report Readiness::Check() {
  std::lock_guard<std::mutex> l(mu_);
  auto now = std::chrono::steady_clock::now();
  if (last_ && now - last_at_ < std::chrono::seconds(1)) return *last_;
  last_ = Run();
  last_at_ = now;
  return *last_;
}

Readiness::Report Readiness::Run() {
  Report r;
  r.ready = true;
  // A read of a key nobody writes: it needs a working store, and changes nothing.
  registry::ModelKey probe{0, "mx-readiness-probe/none", "", false};
  auto got = store_->GetModel(probe);
  if (got.ok()) {
    r.text += "registry: ok (" + backend_ + ")\n";
  } else {
    r.ready = false;
    r.text += "registry: failed (" + backend_ + " unreachable or failing)\n";
    spdlog::warn("readiness: the registry ({}) failed: {}", backend_, got.status().message());
  }
  if (Status st = ProbeWritable(cache_dir_); st.ok()) {
    r.text += "cache: ok\n";
  } else {
    r.ready = false;
    r.text += "cache: failed (not writable)\n";
    spdlog::warn("readiness: the cache is not writable: {}", st.message());
  }
  return r;
}

std::optional<HttpResponse> HealthEndpoint(const HttpRequest& request, Readiness* readiness) {
  if (request.path == "/healthz") return HttpResponse::Text(200, "ok\n");
  if (request.path == "/readyz") {
    Readiness::Report report = readiness->Check();
    HttpResponse r = HttpResponse::Text(report.ready ? 200 : 503,
                                        (report.ready ? "ready\n" : "not ready\n") + report.text);
    r.Add("Cache-Control", "no-store");
    return r;
  }
  return std::nullopt;
}

}  // namespace mx::server
