#include "cli/progress.h"

#include <cstdio>

#include "common/env.h"

namespace mx::cli {

Result<int> ProgressIntervalSeconds() {
  auto text = GetEnv("MX_PROGRESS_INTERVAL_SECONDS");
  if (!text || text->empty()) return 5;
  MX_ASSIGN_OR_RETURN(int64_t n, ParseIntInRange("MX_PROGRESS_INTERVAL_SECONDS", *text, 1, 3600));
  return static_cast<int>(n);
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
