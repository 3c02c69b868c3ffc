#include "http/range_engine.h"

#include <curl/curl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>

#include "common/env.h"
#include "common/log.h"
#include "http/curl_util.h"

namespace mx::http {

std::vector<ByteRange> SplitIntoChunks(uint64_t begin, uint64_t end, uint64_t chunk) {
  std::vector<ByteRange> out;
  if (chunk == 0) chunk = 1;
  while (begin < end) {
    uint64_t next = std::min(end, (begin / chunk + 1) * chunk);
    out.push_back({begin, next});
    begin = next;
  }
  return out;
}

namespace {

using Clock = std::chrono::steady_clock;

// Below this per-transfer rate (for the whole stall window) a transfer counts as stalled.
constexpr long kMinProgressBytesPerSecond = 1024;
// An attempt that moved at least this much (or its whole range) made real progress and
// resets the retry count; a byte or two from a dripping peer does not.
constexpr uint64_t kRealProgressBytes = 1 << 20;

uint64_t FloorRateFromEnv() {
  static const uint64_t rate = [] {
    auto v = GetEnv("MX_MIN_RATE_BYTES_PER_SECOND");
    if (!v || v->empty()) return uint64_t{4096};
    // No error path here (the engine is already running): a bad value is said once, loudly.
    Result<uint64_t> r = ParseByteSizeInRange("MX_MIN_RATE_BYTES_PER_SECOND", *v, 1, 1ull << 40);
    if (!r.ok()) spdlog::error("{}; using 4 KiB/s", r.status().message());
    return r.ok() ? *r : uint64_t{4096};
  }();
  return rate;
}

struct JobState {
  FetchJob job;
  size_t outstanding = 0;  // ranges pending or in flight; the state is freed at 0
  std::string origin;
  std::string data_url;  // where the bytes really are, learned from the first redirect
  size_t ranges_left = 0;
  bool finished = false;
  bool auth_retried = false;  // on_auth_failure was asked once already
};

// One range in flight or waiting for a retry.
struct Work {
  JobState* job = nullptr;
  size_t index = 0;
  uint64_t cursor = 0;  // next byte to write
  uint64_t end = 0;
  int failures = 0;  // consecutive attempts that made no real progress
  Clock::time_point not_before{};
  Clock::time_point deadline{};  // set on the first attempt; the range fails past it
};

struct Transfer {
  void* engine = nullptr;  // RangeEngine::Impl
  Work work;
  CURL* easy = nullptr;
  curl_slist* headers = nullptr;
  char range[64];
  char errbuf[CURL_ERROR_SIZE];
  long status = 0;
  std::string content_range;
  std::optional<double> retry_after;
  bool validated = false;
  bool used_data_url = false;
  uint64_t progress_this_attempt = 0;
  std::string failure;  // why we aborted the transfer ourselves
  Status fatal;         // non-retryable: fail the whole job
};

}  // namespace

struct RangeEngine::Impl {
  EngineOptions options;
  std::unordered_map<JobState*, std::unique_ptr<JobState>> jobs;
  // Background mode: jobs arrive through the inbox from other threads.
  std::mutex inbox_mu;
  std::deque<FetchJob> inbox;
  bool background = false;
  bool stop_requested = false;
  std::thread thread;
  std::deque<Work> pending;
  std::vector<CURL*> idle_handles;
  CURLM* multi = nullptr;
  uint64_t bytes_received = 0;
  int active = 0;

  ~Impl() {
    for (CURL* e : idle_handles) curl_easy_cleanup(e);
    if (multi) curl_multi_cleanup(multi);
  }

  void FinishJob(JobState* js, const Status& st) {
    if (js->finished) return;
    js->finished = true;
    if (js->job.on_done) js->job.on_done(st);
  }
  // A range left the engine (done, dropped or failed for good).
  void Release(JobState* js) {
    if (--js->outstanding == 0) {
      if (!js->finished) FinishJob(js, Status::Internal(js->job.display_name + ": not finished"));
      jobs.erase(js);
    }
  }
  void Admit(FetchJob job);
  Status Loop();
  uint64_t FloorRate() const {
    return options.min_rate_bytes_per_second ? options.min_rate_bytes_per_second
                                             : FloorRateFromEnv();
  }
  // Fails the job: range `w` did not finish by its deadline. `url` is where it came from.
  void FailDeadline(const Work& w, const std::string& url);

  static size_t OnHeader(char* data, size_t size, size_t n, void* user);
  static size_t OnBody(char* data, size_t size, size_t n, void* user);
  static int OnXferInfo(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t);
  bool Cancelled() const { return options.cancel && options.cancel->load(); }
  bool Validate(Transfer* t);
  void Start(Work work);
  // Both return true when the range went back into the queue (still outstanding).
  bool Complete(Transfer* t, CURLcode rc);
  bool Retry(Transfer* t, const std::string& why);
};

size_t RangeEngine::Impl::OnHeader(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  std::string_view line(data, size * n);
  if (line.substr(0, 5) == "HTTP/") {
    // Each response of a redirect chain starts here; keep only the last one's facts.
    size_t sp = line.find(' ');
    t->status =
        sp == std::string_view::npos ? 0 : std::atol(std::string(line.substr(sp + 1, 3)).c_str());
    t->content_range.clear();
    t->retry_after.reset();
    return size * n;
  }
  std::string name;
  std::string_view value;
  if (!internal::ParseHeaderLine(line, &name, &value)) return size * n;
  if (name == "content-range") t->content_range = std::string(value);
  if (name == "retry-after") t->retry_after = ParseRetryAfter(value);
  return size * n;
}

// Checks the response before the first body byte is written.
bool RangeEngine::Impl::Validate(Transfer* t) {
  if (t->status != 206) {
    t->failure = t->status == 200 ? "server ignored the Range request (200 instead of 206)"
                                  : "HTTP " + std::to_string(t->status);
    return false;
  }
  std::string want = "bytes " + std::to_string(t->work.cursor) + "-" +
                     std::to_string(t->work.end - 1) + "/" + std::to_string(t->work.job->job.size);
  if (t->content_range != want) {
    t->failure = "wrong Content-Range '" + t->content_range + "', expected '" + want + "'";
    return false;
  }
  t->validated = true;
  return true;
}

size_t RangeEngine::Impl::OnBody(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  auto* self = static_cast<Impl*>(t->engine);
  size_t len = size * n;
  if (!t->validated) {
    if (t->status >= 300 && t->status < 400) return len;  // redirect body, not ours
    if (!self->Validate(t)) return 0;                     // abort: CURLE_WRITE_ERROR
  }
  if (t->work.cursor + len > t->work.end) {
    t->failure = "server sent more bytes than the range asked for";
    return 0;
  }
  const char* p = data;
  size_t left = len;
  if (t->work.job->job.sink) {
    Status st = t->work.job->job.sink(t->work.cursor, data, len);
    if (!st.ok()) {
      t->fatal = st;
      return 0;
    }
    t->work.cursor += len;
    left = 0;
  }
  while (left > 0) {
    ssize_t w = ::pwrite(t->work.job->job.fd, p, left, static_cast<off_t>(t->work.cursor));
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) {
      t->fatal = Status::FromErrno(errno, "write " + t->work.job->job.display_name);
      return 0;
    }
    p += w;
    left -= static_cast<size_t>(w);
    t->work.cursor += static_cast<uint64_t>(w);
  }
  t->progress_this_attempt += len;
  self->bytes_received += len;
  if (self->options.on_bytes) self->options.on_bytes(len);
  if (t->work.job->job.on_progress) t->work.job->job.on_progress(t->work.index, t->work.cursor);
  return len;
}

// libcurl calls this at least once a second, even while a transfer is stalled.
int RangeEngine::Impl::OnXferInfo(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  auto* t = static_cast<Transfer*>(user);
  if (!static_cast<Impl*>(t->engine)->Cancelled()) return 0;
  t->fatal = Status::Cancelled(t->work.job->job.display_name + ": download cancelled");
  return 1;  // CURLE_ABORTED_BY_CALLBACK
}

void RangeEngine::Impl::Start(Work work) {
  CURL* easy;
  if (!idle_handles.empty()) {
    easy = idle_handles.back();
    idle_handles.pop_back();
    curl_easy_reset(easy);
  } else {
    easy = curl_easy_init();
  }
  internal::ApplyCommonOptions(easy);
  // Limits enforced by libcurl itself, so the fast path pays nothing per chunk.
  auto now = Clock::now();
  if (work.deadline == Clock::time_point{}) {
    double secs = options.deadline_base_seconds +
                  static_cast<double>(work.end - work.cursor) / static_cast<double>(FloorRate());
    work.deadline =
        now + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(secs));
  }
  auto left_ms = std::chrono::duration_cast<std::chrono::milliseconds>(work.deadline - now);
  curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS,
                   static_cast<long>(std::max<int64_t>(1, left_ms.count())));
  curl_easy_setopt(easy, CURLOPT_LOW_SPEED_LIMIT,
                   static_cast<long>(std::min<uint64_t>(kMinProgressBytesPerSecond, FloorRate())));
  auto* t = new Transfer();
  t->engine = this;
  t->work = work;
  t->easy = easy;
  JobState* js = work.job;
  const std::string& url = js->data_url.empty() ? js->job.url : js->data_url;
  t->used_data_url = !js->data_url.empty();
  // Credentials go only to the origin they were meant for. libcurl strips only
  // Authorization on a cross-host redirect, so a request signed with other credential
  // headers (an S3 session token, an Azure SAS) follows no redirect at all: the 3xx then
  // fails the job, and the token never reaches another host.
  bool follow = true;
  if (OriginOf(url) == js->origin) {
    std::vector<std::string> lines = js->job.headers_for_range
                                         ? js->job.headers_for_range(work.cursor, work.end)
                                         : js->job.headers;
    follow = !CarriesStorageCredentials(lines);
    t->headers = internal::MakeHeaderList(lines);
  }
  std::snprintf(t->range, sizeof t->range, "%llu-%llu",
                static_cast<unsigned long long>(work.cursor),
                static_cast<unsigned long long>(work.end - 1));
  curl_easy_setopt(easy, CURLOPT_URL, url.c_str());
  curl_easy_setopt(easy, CURLOPT_HTTPHEADER, t->headers);
  curl_easy_setopt(easy, CURLOPT_RANGE, t->range);
  curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, follow ? 1L : 0L);
  curl_easy_setopt(easy, CURLOPT_BUFFERSIZE, options.buffer_bytes);
  curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, &Impl::OnHeader);
  curl_easy_setopt(easy, CURLOPT_HEADERDATA, t);
  curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, &Impl::OnBody);
  curl_easy_setopt(easy, CURLOPT_WRITEDATA, t);
  curl_easy_setopt(easy, CURLOPT_PRIVATE, t);
  if (options.cancel) {
    curl_easy_setopt(easy, CURLOPT_XFERINFOFUNCTION, &Impl::OnXferInfo);
    curl_easy_setopt(easy, CURLOPT_XFERINFODATA, t);
    curl_easy_setopt(easy, CURLOPT_NOPROGRESS, 0L);
  }
  t->errbuf[0] = 0;
  curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, t->errbuf);
  curl_multi_add_handle(multi, easy);
  ++active;
}

void RangeEngine::Impl::FailDeadline(const Work& w, const std::string& url) {
  const ByteRange& r = w.job->job.ranges[w.index];
  FinishJob(w.job,
            Status::Unavailable(
                w.job->job.display_name + ": " + OriginOf(url) + " sent " +
                std::to_string(w.cursor - r.begin) + " of " + std::to_string(r.end - r.begin) +
                " bytes of a range too slowly: below " + std::to_string(FloorRate()) +
                " bytes/s plus slack (MX_MIN_RATE_BYTES_PER_SECOND), giving up"));
}

bool RangeEngine::Impl::Retry(Transfer* t, const std::string& why) {
  Work w = t->work;
  const ByteRange& r = w.job->job.ranges[w.index];
  bool real_progress = t->progress_this_attempt >= std::min(kRealProgressBytes, r.end - r.begin);
  w.failures = real_progress ? 0 : w.failures + 1;
  const std::string url = t->used_data_url ? w.job->data_url : w.job->job.url;
  if (t->used_data_url &&
      (t->status == 401 || t->status == 403 || t->status == 404 || t->status == 410)) {
    // A signed CDN URL expired or was refused: go back through the hub for a fresh one.
    w.job->data_url.clear();
  }
  if (w.failures >= options.retry.max_attempts) {
    FinishJob(w.job,
              Status::Unavailable(w.job->job.display_name + ": " + why + " (from " + OriginOf(url) +
                                  "; gave up after " + std::to_string(w.failures) + " attempts)"));
    return false;
  }
  double wait = BackoffSeconds(std::max(1, w.failures), options.retry, t->retry_after);
  if (Clock::now() + std::chrono::duration<double>(wait) >= w.deadline) {
    FailDeadline(w, url);
    return false;
  }
  spdlog::debug("{}: range {}-{} failed ({}), retrying in {:.2f}s", w.job->job.display_name,
                w.cursor, w.end, why, wait);
  w.not_before = Clock::now() +
                 std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(wait));
  pending.push_front(w);
  return true;
}

bool RangeEngine::Impl::Complete(Transfer* t, CURLcode rc) {
  JobState* js = t->work.job;
  if (js->finished) return false;  // another range already failed the job
  if (!t->fatal.ok()) {
    FinishJob(js, t->fatal);
    return false;
  }
  if (rc == CURLE_OK && !t->validated) Validate(t);  // empty bodies skip OnBody
  if (rc == CURLE_OK && t->validated && t->work.cursor == t->work.end) {
    if (js->data_url.empty()) {
      char* eff = nullptr;
      curl_easy_getinfo(t->easy, CURLINFO_EFFECTIVE_URL, &eff);
      if (eff) js->data_url = eff;
    }
    if (--js->ranges_left == 0) FinishJob(js, Status::OK());
    return false;
  }
  std::string why = t->failure;
  if (why.empty()) {
    if (rc != CURLE_OK) {
      why = t->errbuf[0] ? t->errbuf : curl_easy_strerror(rc);
    } else {
      why = "connection closed after " + std::to_string(t->work.cursor) + " of " +
            std::to_string(t->work.end) + " bytes (short body)";
    }
  }
  if (rc != CURLE_OK && t->failure.empty()) {
    if (auto tls = internal::PermanentTlsFailure(rc, why)) {
      const std::string& url = t->used_data_url ? js->data_url : js->job.url;
      FinishJob(js, Status::FailedPrecondition(js->job.display_name + ": " + OriginOf(url) + ": " +
                                               *tls));
      return false;
    }
  }
  if (Clock::now() >= t->work.deadline) {
    FailDeadline(t->work, t->used_data_url ? js->data_url : js->job.url);
    return false;
  }
  long s = t->status;
  // Final 3xx (a redirect we could not follow) and 4xx other than 408/429 will not get
  // better by retrying, except on a cached CDN URL, which may simply have expired.
  bool permanent =
      !t->validated && ((s >= 300 && s < 400) || (s >= 400 && s < 500 && !IsRetryableStatus(s)));
  // 400 too: S3 answers an expired session token with 400 ExpiredToken (the body, which
  // names it, is not kept), so a signed read with a renewable credential tries once more.
  if (permanent && !t->used_data_url && (s == 400 || s == 401 || s == 403) &&
      js->job.on_auth_failure && !js->auth_retried) {
    js->auth_retried = true;
    if (js->job.on_auth_failure())
      return Retry(t, "HTTP " + std::to_string(s) + ", credential renewed");
  }
  if (permanent && !t->used_data_url) {
    std::string hint = (s == 401 || s == 403) && !js->job.auth_hint.empty()
                           ? " (" + js->job.auth_hint + ")"
                       : s == 404 ? " (not found)"
                       : s == 416 ? " (the object is smaller than expected)"
                                  : "";
    StatusCode code = s == 404                 ? StatusCode::kNotFound
                      : (s == 401 || s == 403) ? StatusCode::kPermissionDenied
                                               : StatusCode::kFailedPrecondition;
    FinishJob(js, Status(code, js->job.display_name + ": HTTP " + std::to_string(s) + hint));
    return false;
  }
  return Retry(t, why);
}

RangeEngine::RangeEngine(EngineOptions options) : impl_(std::make_unique<Impl>()) {
  internal::GlobalInitOnce();
  impl_->options = std::move(options);
  if (impl_->options.max_connections < 1) impl_->options.max_connections = 1;
  impl_->multi = curl_multi_init();
  long conns = impl_->options.max_connections;
  curl_multi_setopt(impl_->multi, CURLMOPT_MAX_HOST_CONNECTIONS, conns);
  curl_multi_setopt(impl_->multi, CURLMOPT_MAXCONNECTS, conns * 2);
  // One transfer per connection, even over HTTP/2: CDNs cap bandwidth per connection, so
  // multiplexing ranges onto one connection would throttle them together.
  curl_multi_setopt(impl_->multi, CURLMOPT_PIPELINING, static_cast<long>(CURLPIPE_NOTHING));
}

RangeEngine::~RangeEngine() {
  if (impl_->thread.joinable()) StopBackground();
}

void RangeEngine::Impl::Admit(FetchJob job) {
  auto owned = std::make_unique<JobState>();
  JobState* js = owned.get();
  js->job = std::move(job);
  js->origin = OriginOf(js->job.url);
  for (size_t i = 0; i < js->job.ranges.size(); ++i) {
    Work w;
    w.job = js;
    w.index = i;
    w.cursor = js->job.ranges[i].begin;
    w.end = js->job.ranges[i].end;
    if (w.cursor >= w.end) continue;
    pending.push_back(w);
    ++js->ranges_left;
  }
  js->outstanding = js->ranges_left;
  if (js->outstanding == 0) {
    FinishJob(js, Status::OK());  // nothing to fetch (an empty file)
    return;
  }
  jobs.emplace(js, std::move(owned));
}

void RangeEngine::Add(FetchJob job) {
  {
    std::lock_guard<std::mutex> l(impl_->inbox_mu);
    if (impl_->background) {
      impl_->inbox.push_back(std::move(job));
      curl_multi_wakeup(impl_->multi);
      return;
    }
  }
  impl_->Admit(std::move(job));
}

uint64_t RangeEngine::bytes_received() const { return impl_->bytes_received; }

Status RangeEngine::Run() { return impl_->Loop(); }

void RangeEngine::StartBackground() {
  impl_->background = true;
  impl_->thread = std::thread([this] {
    Status st = impl_->Loop();
    if (!st.ok()) spdlog::error("range engine stopped: {}", st.message());
  });
}

void RangeEngine::StopBackground() {
  {
    std::lock_guard<std::mutex> l(impl_->inbox_mu);
    impl_->stop_requested = true;
  }
  curl_multi_wakeup(impl_->multi);
  if (impl_->thread.joinable()) impl_->thread.join();
}

Status RangeEngine::Impl::Loop() {
  for (;;) {
    bool stopping = false;
    if (background) {
      std::deque<FetchJob> arrived;
      {
        std::lock_guard<std::mutex> l(inbox_mu);
        arrived.swap(inbox);
        stopping = stop_requested;
      }
      for (auto& job : arrived) Admit(std::move(job));
    }
    if (Cancelled()) {
      // Queued ranges are dropped below; transfers in flight abort in OnXferInfo.
      for (auto& [js, owned] : jobs) FinishJob(js, Status::Cancelled("download cancelled"));
    }
    auto now = Clock::now();
    auto next_ready = Clock::time_point::max();
    for (auto it = pending.begin(); it != pending.end() && active < options.max_connections;) {
      if (it->job->finished) {
        JobState* js = it->job;
        it = pending.erase(it);
        Release(js);
      } else if (it->not_before <= now) {
        Work w = *it;
        it = pending.erase(it);
        Start(w);
      } else {
        next_ready = std::min(next_ready, it->not_before);
        ++it;
      }
    }
    if (active == 0 && pending.empty() && (!background || stopping)) break;

    int running = 0;
    if (curl_multi_perform(multi, &running) != CURLM_OK)
      return Status::Internal("curl_multi_perform failed");
    int queued = 0;
    while (CURLMsg* msg = curl_multi_info_read(multi, &queued)) {
      if (msg->msg != CURLMSG_DONE) continue;
      CURL* easy = msg->easy_handle;
      CURLcode rc = msg->data.result;
      Transfer* t = nullptr;
      curl_easy_getinfo(easy, CURLINFO_PRIVATE, &t);
      curl_multi_remove_handle(multi, easy);
      JobState* js = t->work.job;
      if (!Complete(t, rc)) Release(js);
      curl_slist_free_all(t->headers);
      idle_handles.push_back(easy);
      delete t;
      --active;
    }

    int timeout_ms = 100;
    if (next_ready != Clock::time_point::max()) {
      auto until = std::chrono::duration_cast<std::chrono::milliseconds>(next_ready - Clock::now());
      timeout_ms = static_cast<int>(std::clamp<int64_t>(until.count(), 0, 100));
    }
    if (active > 0 || background) {
      curl_multi_poll(multi, nullptr, 0, timeout_ms, nullptr);
    } else if (timeout_ms > 0) {
      ::usleep(static_cast<useconds_t>(timeout_ms) * 1000);
    }
  }
  return Status::OK();
}

}  // namespace mx::http
