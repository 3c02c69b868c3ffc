#include "cli/progress.h"

#include <algorithm>
#include <cstdio>

#include "common/env.h"

namespace mx::cli {

Result<int> ProgressIntervalSeconds() {
  auto text = GetEnv("MX_PROGRESS_INTERVAL_SECONDS");
  if (!text || text->empty()) return 5;
  MX_ASSIGN_OR_RETURN(int64_t n, ParseIntInRange("MX_PROGRESS_INTERVAL_SECONDS", *text, 1, 3600));
  return static_cast<int>(n);
}

std::string TransferProgressText(uint64_t bytes_done, uint64_t bytes_total, size_t files_done,
                                 size_t files_total, double elapsed) {
  double rate = elapsed > 0 ? bytes_done / elapsed : 0;
  int percent =
      bytes_total ? static_cast<int>(std::min<uint64_t>(100, bytes_done * 100 / bytes_total)) : 100;
  std::string eta = "--";
  if (rate > 0 && bytes_total > bytes_done) {
    eta = std::to_string(static_cast<long>((bytes_total - bytes_done) / rate)) + "s";
  }
  char line[256];
  std::snprintf(line, sizeof line, "%s / %s (%d%%), %s/s, files %zu/%zu, ETA %s, %.0fs elapsed",
                FormatBytes(bytes_done).c_str(), FormatBytes(bytes_total).c_str(), percent,
                FormatBytes(rate).c_str(), files_done, files_total, eta.c_str(), elapsed);
  return line;
}

PeriodicProgressLine::PeriodicProgressLine(int interval_seconds,
                                           std::function<std::string(double)> line)
    : interval_(interval_seconds),
      line_(std::move(line)),
      start_(std::chrono::steady_clock::now()) {
  thread_ = std::thread([this] { Loop(); });
}

PeriodicProgressLine::~PeriodicProgressLine() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void PeriodicProgressLine::Loop() {
  std::unique_lock<std::mutex> l(mu_);
  while (!cv_.wait_for(l, std::chrono::seconds(interval_), [this] { return stop_; })) {
    double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    std::string text = line_(elapsed);
    if (text.empty()) continue;
    std::fprintf(stderr, "progress: %s\n", text.c_str());
    std::fflush(stderr);
  }
}

}  // namespace mx::cli
