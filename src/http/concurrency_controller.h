// ConcurrencyController: how many connections the RangeEngine keeps busy at once.
//
// A pure decision rule, fed one ConcurrencySample per measuring interval and answering the
// connection limit for the next one; it reads no clock and does no I/O, so unit tests
// replay recorded throughput traces through it. The rule itself (and the measurements that
// chose its constants) is explained at its one home, concurrency_controller.cc.
//
// With `fixed` set it always answers `ceiling` (the user's --max-workers N).
#pragma once

#include <cstdint>

namespace mx::http {

struct ConcurrencySample {
  double seconds = 0;        // length of the interval
  uint64_t bytes = 0;        // body bytes received during it
  double busy = 0;           // transfers in flight, averaged over the interval
  int throttled = 0;         // 429 and 503 answers during it
  int connect_failures = 0;  // connects refused or timed out, requests never answered
};

class ConcurrencyController {
 public:
  struct Options {
    int initial = 16;    // connections at the start
    int ceiling = 128;   // never more than this (--max-workers, MX_MAX_CONNECTIONS)
    bool fixed = false;  // always `ceiling`: no adaptation
  };

  explicit ConcurrencyController(Options options);

  // The connection limit now.
  int limit() const { return limit_; }

  // Takes the measurements of the interval that just ended; returns the new limit().
  int OnSample(const ConcurrencySample& sample);

 private:
  enum class Phase { kGrow, kHold };

  void EnterHold(int probe_after);
  void Raise();
  void Shed(int new_limit, int hold_intervals);

  Options options_;
  int limit_;
  Phase phase_ = Phase::kGrow;
  int settle_ = 0;            // intervals still to skip after a change
  bool have_base_ = false;    // base_rate_ was measured
  double base_rate_ = 0;      // bytes/s measured at base_limit_
  int base_limit_ = 0;        // the limit that gave base_rate_
  int hold_intervals_ = 0;    // busy intervals spent in kHold
  double hold_rate_sum_ = 0;  // their rates, summed: a probe compares with their mean
  int probe_after_ = 0;       // kHold intervals before the next upward probe
  int slow_intervals_ = 0;    // consecutive kHold intervals below half of base_rate_
};

}  // namespace mx::http
