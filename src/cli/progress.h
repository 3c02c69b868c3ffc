// Progress for pod logs and CI, where stderr is not a terminal: one plain line every few
// seconds from a background thread, so a stalled transfer still shows up as alive (with its
// rate falling) and `kubectl logs` is never silent for a whole download or stream.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

#include "common/status.h"

namespace mx::cli {

// Seconds between progress lines: MX_PROGRESS_INTERVAL_SECONDS (1..3600), else 5.
// InvalidArgument naming the variable and the range.
Result<int> ProgressIntervalSeconds();

// The pod-log text of a transfer (download, install): "1.2 GiB / 4 GiB (30%), 800 MiB/s,
// files 3/9, ETA 4s, 2s elapsed".
std::string TransferProgressText(uint64_t bytes_done, uint64_t bytes_total, size_t files_done,
                                 size_t files_total, double elapsed);

// Calls `line(elapsed_seconds)` every `interval_seconds` and prints what it returns (when
// not empty) as one stderr line. Stops and joins on destruction. `line` runs on the
// logger's thread: it must read shared numbers under its own lock or atomically.
class PeriodicProgressLine {
 public:
  PeriodicProgressLine(int interval_seconds, std::function<std::string(double elapsed)> line);
  ~PeriodicProgressLine();
  PeriodicProgressLine(const PeriodicProgressLine&) = delete;
  PeriodicProgressLine& operator=(const PeriodicProgressLine&) = delete;

 private:
  void Loop();

  const int interval_;
  const std::function<std::string(double)> line_;
  const std::chrono::steady_clock::time_point start_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace mx::cli
