// RangeEngine: the one bulk-download engine of mx. One libcurl multi handle drives up to
// `max_connections` transfers at once across all files; every transfer fetches one byte
// range and writes it with pwrite as it arrives, so memory stays at about
// max_connections x buffer_bytes however large the files are.
//
// How many of those connections are in use is decided by a ConcurrencyController
// (http/concurrency_controller.h) from the aggregate rate it measures: it starts at 16,
// doubles while that pays, holds when the rate plateaus, and sheds connections on
// 429/503, on connects that fail or time out, and when per-connection throughput
// collapses. New connections are opened at most 8 per 20 ms, so raising the limit is
// never a burst of connects against a small listen backlog. `adaptive = false` keeps
// exactly max_connections (--max-workers N).
//
// The connect phase has its own timeout (MX_CONNECT_TIMEOUT_SECONDS, default 5), and so
// does the wait for the response headers of each request (MX_RESPONSE_TIMEOUT_SECONDS,
// default 10), both far shorter than the stall window: a connection lost in a full
// accept queue is retried on a fresh one in seconds instead of stalling.
//
// Every range is checked: the answer must be 206 with exactly
// "Content-Range: bytes <begin>-<end-1>/<size>" and exactly the asked length. Anything
// else (200 for a range, a wrong Content-Range, a short or long body, a dropped
// connection, 408/429/5xx) fails only that range, which is retried alone from the last
// byte written, after an exponential backoff with jitter (or the server's Retry-After).
// Content is not verified here: callers hash whole files (see hub/downloader).
//
// A peer cannot keep a range alive forever by dripping bytes: a transfer slower than
// min(1 KiB/s, the floor rate) for the stall window (MX_STALL_TIMEOUT_SECONDS) counts as
// stalled, an attempt resets the retry count only if it moved min(1 MiB, the range) bytes,
// and each range must finish within deadline_base_seconds + length / floor rate of its
// first attempt (retries and backoff included); past that the job fails naming the host.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "http/concurrency_controller.h"
#include "http/http.h"

namespace mx::http {

struct ByteRange {
  uint64_t begin = 0;
  uint64_t end = 0;  // exclusive
};

// [begin, end) cut into pieces of at most `chunk` bytes, aligned to multiples of `chunk`.
std::vector<ByteRange> SplitIntoChunks(uint64_t begin, uint64_t end, uint64_t chunk);

struct FetchJob {
  std::string url;
  // Sent with requests to `url`'s origin only; a redirect target on another host (a CDN)
  // never sees them.
  std::vector<std::string> headers;
  uint64_t size = 0;  // the resource's exact length
  int fd = -1;        // destination; bytes land at their own offsets
  // Alternative destination (memory): called with each piece of body in order per range.
  // A non-OK return fails the job.
  std::function<Status(uint64_t offset, const char* data, size_t len)> sink;
  // When set, computes the headers of each request (for signatures that cover the range,
  // as Azure SharedKey's does); `headers` is then ignored.
  std::function<std::vector<std::string>(uint64_t begin, uint64_t end)> headers_for_range;
  std::vector<ByteRange> ranges;
  std::string display_name;  // used in errors
  // Appended to 401/403 errors: what the user should check ("set HF_TOKEN or --token").
  std::string auth_hint;
  // Engine thread, on a 400/401/403 from `url`'s origin (S3 says ExpiredToken with a 400),
  // at most once per job: true when the
  // credential behind headers_for_range was dropped and may be fresh next time (a
  // short-lived cloud token that expired); the range is then retried with new headers.
  std::function<bool()> on_auth_failure;
  // Engine thread, after bytes up to `cursor` (absolute offset) of ranges[index] are written.
  std::function<void(size_t index, uint64_t cursor)> on_progress;
  // Engine thread, exactly once: OK when every range is written, else the first fatal error.
  std::function<void(const Status&)> on_done;
};

struct EngineOptions {
  // The ceiling (adaptive) or the exact number (not adaptive) of transfers at once.
  int max_connections = 128;
  bool adaptive = true;
  RetryPolicy retry{8, 0.25, 20.0};
  long buffer_bytes = 512 * 1024;                    // libcurl receive buffer per transfer
  std::function<void(uint64_t new_bytes)> on_bytes;  // engine thread, for progress display
  // When set and it turns true, Run fails every unfinished job with Cancelled within about
  // a second (transfers in flight, stalled ones included, are aborted) and returns.
  const std::atomic<bool>* cancel = nullptr;
  // Floor transfer rate per range, in bytes/s; 0 means MX_MIN_RATE_BYTES_PER_SECOND, else
  // 4096 (16 connections at the floor still fit a 64 KiB/s link).
  uint64_t min_rate_bytes_per_second = 0;
  double deadline_base_seconds = 60.0;  // slack for connecting, slow starts and retries
};

class RangeEngine {
 public:
  explicit RangeEngine(EngineOptions options);
  ~RangeEngine();
  RangeEngine(const RangeEngine&) = delete;
  RangeEngine& operator=(const RangeEngine&) = delete;

  // Jobs are started in the order added. Thread-safe while running in the background.
  void Add(FetchJob job);

  // Runs until every job has finished (successfully or not); results go to on_done.
  // REQUIRES: not running in the background.
  Status Run();

  // Runs the engine on its own thread until StopBackground(): jobs may be added from any
  // thread at any time and start as soon as a connection is free. on_done runs on the
  // engine thread.
  void StartBackground();
  // Finishes the jobs already added, then stops the thread.
  void StopBackground();

  // Body bytes received over the network, across all Run() calls.
  uint64_t bytes_received() const;

  // The connection limit in force now (any thread; for progress displays).
  int connection_limit() const;
  // Transfers in flight now (any thread).
  int connections_active() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mx::http
