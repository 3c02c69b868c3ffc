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

// New transfers (which may each open a connection) started at most this many per
// kRampTick: a raised limit is never a burst of connects.
constexpr int kRampStep = 8;
constexpr auto kRampTick = std::chrono::milliseconds(20);
// The controller's measuring interval: a few response times, within these bounds.
constexpr double kMinSampleSeconds = 0.1;
constexpr double kMaxSampleSeconds = 1.0;

long SecondsFromEnv(const char* name, long fallback) {
  auto v = GetEnv(name);
  if (!v || v->empty()) return fallback;
  Result<int64_t> s = ParseIntInRange(name, *v, 1, 3600);
  if (!s.ok()) spdlog::error("{}; using {} s", s.status().message(), fallback);
  return s.ok() ? static_cast<long>(*s) : fallback;
}

long ConnectTimeoutSeconds() {
  static const long s = SecondsFromEnv("MX_CONNECT_TIMEOUT_SECONDS", 5);
  return s;
}

long ResponseTimeoutSeconds() {
  static const long s = SecondsFromEnv("MX_RESPONSE_TIMEOUT_SECONDS", 10);
  return s;
}

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
  int failures = 0;    // consecutive attempts that made no real progress
  int unanswered = 0;  // attempts that got no response in time (each doubles the wait)
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
  Clock::time_point started{};
  Clock::time_point last_header{};  // last header line (of any response of the chain)
  bool unanswered = false;          // aborted: no response within the response timeout
  double response_timeout = 0;      // seconds
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
  std::atomic<uint64_t> bytes_received{0};
  std::atomic<int> active{0};
  // Adaptive concurrency (see concurrency_controller.cc for the rule).
  std::unique_ptr<ConcurrencyController> controller;
  std::atomic<int> limit{1};
  int ramp_cap = kRampStep;  // transfers allowed now: at most kRampStep more per kRampTick
  Clock::time_point last_ramp{};
  Clock::time_point sample_start{}, last_tick{};
  uint64_t sample_bytes = 0;
  double busy_seconds = 0;  // sum of active x elapsed over the interval
  int throttled = 0, connect_failures = 0;
  double response_seconds = 0;  // smoothed time from request to first body byte

  // Feeds the controller when an interval has passed; paces the growth of ramp_cap.
  void Tick(Clock::time_point now);

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
  t->last_header = Clock::now();
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
    double secs = std::chrono::duration<double>(Clock::now() - t->started).count();
    self->response_seconds =
        self->response_seconds == 0 ? secs : 0.8 * self->response_seconds + 0.2 * secs;
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
  self->sample_bytes += len;
  if (self->options.on_bytes) self->options.on_bytes(len);
  if (t->work.job->job.on_progress) t->work.job->job.on_progress(t->work.index, t->work.cursor);
  return len;
}

// libcurl calls this at least once a second, even while a transfer is stalled.
int RangeEngine::Impl::OnXferInfo(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  auto* t = static_cast<Transfer*>(user);
  if (!t->validated) {
    // Connected (or not) but no answer: a request lost in a full accept queue, or a peer
    // that accepts and says nothing. Retried on a fresh connection, long before the stall
    // window would notice.
    auto since = std::max(t->started, t->last_header);
    if (Clock::now() - since > std::chrono::duration<double>(t->response_timeout)) {
      t->unanswered = true;
      char why[128];
      std::snprintf(why, sizeof why, "no response within %.1f s (MX_RESPONSE_TIMEOUT_SECONDS)",
                    t->response_timeout);
      t->failure = why;
      return 1;
    }
  }
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
  curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT, ConnectTimeoutSeconds());
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
  t->started = now;
  // Ten times the usual response time (a request that waits that long is stuck in a queue,
  // not slow), at least 2 s, at most MX_RESPONSE_TIMEOUT_SECONDS; doubled for each earlier
  // attempt of this range that got no answer, so a server that is slow, not stuck, gets
  // the full wait.
  double wait = static_cast<double>(ResponseTimeoutSeconds());
  if (response_seconds > 0) wait = std::clamp(10 * response_seconds, 2.0, wait);
  t->response_timeout = std::min(static_cast<double>(ResponseTimeoutSeconds()),
                                 wait * static_cast<double>(1 << std::min(work.unanswered, 8)));
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
  curl_easy_setopt(easy, CURLOPT_XFERINFOFUNCTION, &Impl::OnXferInfo);
  curl_easy_setopt(easy, CURLOPT_XFERINFODATA, t);
  curl_easy_setopt(easy, CURLOPT_NOPROGRESS, 0L);
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
  if (t->unanswered) ++w.unanswered;
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
  curl_off_t connected_at = 0;
  curl_easy_getinfo(t->easy, CURLINFO_CONNECT_TIME_T, &connected_at);
  if (t->unanswered || rc == CURLE_COULDNT_CONNECT ||
      (rc == CURLE_OPERATION_TIMEDOUT && connected_at == 0)) {
    ++connect_failures;
  }
  if (t->status == 429 || t->status == 503) ++throttled;
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
  // A 3xx is final only when the transfer ended on it; one that failed while following the
  // redirect (a connect to the CDN timed out, no answer from it) still shows the 3xx.
  bool permanent =
      !t->validated && !t->unanswered &&
      ((s >= 300 && s < 400 && rc == CURLE_OK) || (s >= 400 && s < 500 && !IsRetryableStatus(s)));
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
  ConcurrencyController::Options co;
  co.ceiling = impl_->options.max_connections;
  co.initial = std::min(co.initial, co.ceiling);
  co.fixed = !impl_->options.adaptive;
  impl_->controller = std::make_unique<ConcurrencyController>(co);
  impl_->limit = impl_->controller->limit();
  long conns = impl_->options.max_connections;
  curl_multi_setopt(impl_->multi, CURLMOPT_MAX_HOST_CONNECTIONS, conns);
  curl_multi_setopt(impl_->multi, CURLMOPT_MAXCONNECTS, 2L * impl_->limit);
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
int RangeEngine::connection_limit() const { return impl_->limit; }
int RangeEngine::connections_active() const { return impl_->active; }

void RangeEngine::Impl::Tick(Clock::time_point now) {
  if (last_tick == Clock::time_point{}) {
    last_tick = sample_start = last_ramp = now;
    return;
  }
  busy_seconds += active * std::chrono::duration<double>(now - last_tick).count();
  last_tick = now;
  if (now - last_ramp >= kRampTick) {
    ramp_cap = std::min(limit.load(), active + kRampStep);
    last_ramp = now;
  }
  double interval = std::clamp(3 * response_seconds, kMinSampleSeconds, kMaxSampleSeconds);
  double elapsed = std::chrono::duration<double>(now - sample_start).count();
  if (elapsed < interval) return;
  ConcurrencySample s;
  s.seconds = elapsed;
  s.bytes = sample_bytes;
  s.busy = busy_seconds / elapsed;
  s.throttled = throttled;
  s.connect_failures = connect_failures;
  int before = limit;
  limit = controller->OnSample(s);
  if (limit != before) {
    spdlog::debug(
        "connections: {} -> {} ({:.0f} MB/s, {:.1f} busy, {} throttled, {} failed "
        "connects)",
        before, limit.load(), s.bytes / s.seconds / 1e6, s.busy, s.throttled, s.connect_failures);
  }
  ramp_cap = std::min(ramp_cap, limit.load());
  // Idle connections beyond twice the limit (a transfer may hold one to the hub and one to
  // its CDN) are closed: on a server with few workers an idle keep-alive connection holds
  // one that a waiting connection needs.
  if (limit != before) {
    curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, static_cast<long>(2 * limit));
  }
  sample_start = now;
  sample_bytes = 0;
  busy_seconds = 0;
  throttled = connect_failures = 0;
}

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
    Tick(now);
    const int allowed = std::min(limit.load(), ramp_cap);
    auto next_ready = Clock::time_point::max();
    for (auto it = pending.begin(); it != pending.end() && active < allowed;) {
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

    // All done: leave at once (the wait below would be a pure tail after the last byte).
    if (active == 0 && pending.empty() && (!background || stopping)) continue;
    int timeout_ms = ramp_cap < limit && !pending.empty() ? 20 : 100;
    if (next_ready != Clock::time_point::max()) {
      auto until = std::chrono::duration_cast<std::chrono::milliseconds>(next_ready - Clock::now());
      timeout_ms = static_cast<int>(std::clamp<int64_t>(until.count(), 0, timeout_ms));
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
