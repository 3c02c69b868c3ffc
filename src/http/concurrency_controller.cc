#include "http/concurrency_controller.h"

#include <algorithm>

namespace mx::http {

// The control rule (the one place it is written down).
//
// Goal: as many connections as raise the aggregate rate, no more. CDNs cap each
// connection (8-25 MB/s is common), so a fat link needs many; an uncapped or CPU-bound
// link gains nothing from more and a server that answers 429/503 wants fewer.
//
// 1. Start at `initial` connections (the engine uses 16, the old fixed default, so the
//    start is never slower than it was). Each interval (3 response times, 0.1 to 1 s)
//    the engine reports the bytes it received, how many transfers were busy on average,
//    and how many answers were 429/503 and how many connects failed or went unanswered.
// 2. The interval right after a change is skipped (settle): new connections are still
//    connecting and the old ones' rate says nothing about the new limit.
// 3. An interval in which fewer than 3/4 of the allowed transfers were busy says nothing
//    either (not enough work: small files, the tail): no decision.
// 4. Grow: double the limit (bounded by the ceiling) as long as each doubling raised the
//    aggregate rate by at least kUsefulGain (15 %). Under per-connection caps a doubling
//    is worth up to +100 %; at a fixed limit one 0.1 s interval differs from the next by a
//    few per cent on loopback (the unit tests replay +-8 %), so 15 % is a real gain and
//    not noise, while a link that is already full gains nothing. A doubling that gained
//    less is undone (back to the limit that gave the best rate, so the server is not held
//    with connections that buy nothing) and growth stops. In bench/download.sh shape g
//    (8 MB/s per connection, continuous) this reaches 128 connections and ~500 MB/s in
//    about 0.6 s, where 16 fixed connections give 133 MB/s.
// 5. Hold: keep the limit. Every kProbeIntervals (20) busy intervals try one doubling
//    again (step 4), since the link or the work may have changed; the probe is judged
//    against the mean rate of the held intervals, not one of them, so one lucky interval
//    does not pass for a gain.
// 6. Shed: any 429/503 halves the limit, any connect failure or unanswered request
//    cuts it to 3/4 (a small listen backlog, an overloaded proxy); either waits
//    kProbeIntervals x 2 before probing upward again. Two busy intervals in a row below
//    half the rate the limit once gave (per-connection throughput collapsed) cut it to 3/4
//    (not below 4), and probing resumes kProbeIntervals later.
// Doubling from 16 reaches 128 in three steps (six intervals); the engine additionally
// opens at most 8 new connections per 20 ms, so a doubling is never a burst of connects.
namespace {
constexpr double kUsefulGain = 0.15;
constexpr double kBusyFraction = 0.75;
constexpr double kCollapseFraction = 0.5;
constexpr int kCollapseIntervals = 2;
constexpr int kCollapseFloor = 4;
constexpr int kProbeIntervals = 20;
}  // namespace

ConcurrencyController::ConcurrencyController(Options options) : options_(options) {
  options_.ceiling = std::max(1, options_.ceiling);
  options_.initial = std::clamp(options_.initial, 1, options_.ceiling);
  limit_ = options_.fixed ? options_.ceiling : options_.initial;
  probe_after_ = kProbeIntervals;
  if (limit_ == options_.ceiling) phase_ = Phase::kHold;
}

void ConcurrencyController::EnterHold(int probe_after) {
  phase_ = Phase::kHold;
  hold_intervals_ = 0;
  hold_rate_sum_ = 0;
  probe_after_ = probe_after;
}

void ConcurrencyController::Raise() {
  int next = std::min(options_.ceiling, limit_ * 2);
  if (next == limit_) {
    EnterHold(kProbeIntervals);
    return;
  }
  limit_ = next;
  phase_ = Phase::kGrow;
  settle_ = 1;
}

void ConcurrencyController::Shed(int new_limit, int hold_intervals) {
  limit_ = std::max(1, new_limit);
  EnterHold(hold_intervals);
  have_base_ = false;  // the old rate was measured under other conditions
  base_limit_ = limit_;
  slow_intervals_ = 0;
  settle_ = 1;
}

int ConcurrencyController::OnSample(const ConcurrencySample& s) {
  if (options_.fixed) return limit_;
  if (s.throttled > 0) {
    Shed(limit_ / 2, 2 * kProbeIntervals);
    return limit_;
  }
  if (s.connect_failures > 0) {
    Shed(limit_ * 3 / 4, 2 * kProbeIntervals);
    return limit_;
  }
  if (settle_ > 0) {
    --settle_;
    return limit_;
  }
  if (s.seconds <= 0 || s.busy < kBusyFraction * limit_) return limit_;  // rule 3
  double rate = static_cast<double>(s.bytes) / s.seconds;

  if (phase_ == Phase::kGrow) {
    if (!have_base_ || (rate > 0 && rate >= base_rate_ * (1 + kUsefulGain))) {
      have_base_ = true;
      base_rate_ = rate;
      base_limit_ = limit_;
      Raise();
    } else {
      limit_ = base_limit_;  // the doubling bought nothing worth its connections
      base_rate_ = std::max(base_rate_, rate);
      base_limit_ = limit_;
      EnterHold(kProbeIntervals);
      settle_ = 1;
    }
    return limit_;
  }

  // kHold.
  if (!have_base_) {
    have_base_ = true;
    base_rate_ = rate;
    base_limit_ = limit_;
  }
  if (rate < base_rate_ * kCollapseFraction || (rate == 0 && base_rate_ == 0)) {
    if (++slow_intervals_ >= kCollapseIntervals) {
      // Not below kCollapseFloor: a rate of zero may only mean every request waits on a
      // slow first byte, which fewer connections would not help.
      Shed(std::max(std::min(limit_, kCollapseFloor), limit_ * 3 / 4), kProbeIntervals);
    }
    return limit_;
  }
  slow_intervals_ = 0;
  hold_rate_sum_ += rate;
  if (++hold_intervals_ >= probe_after_ && limit_ < options_.ceiling) {
    base_rate_ = hold_rate_sum_ / hold_intervals_;
    base_limit_ = limit_;
    Raise();
  }
  return limit_;
}

}  // namespace mx::http
