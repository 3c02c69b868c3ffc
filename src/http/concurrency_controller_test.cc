#include "http/concurrency_controller.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace mx::http {
namespace {

constexpr double kInterval = 0.2;  // seconds per sample, as the engine measures on loopback
constexpr double kMB = 1e6;

// A link seen through the engine: `per_connection` bytes/s per busy connection (a CDN's
// cap; 0 = none), at most `link` bytes/s in all, with a repeating +-`jitter` wobble as
// recorded between intervals at one fixed limit on loopback (bench/download.sh).
struct Link {
  double per_connection = 0;
  double link = 0;
  double jitter = 0.08;
  int throttle_above = 0;  // answers 503 while more than this many are busy (0 = never)
  int tick = 0;

  ConcurrencySample Sample(int limit) {
    static const double kWobble[] = {0.0, 1.0, -1.0, 0.5, -0.5, 0.25};
    double rate = link;
    if (per_connection > 0) rate = std::min(link, per_connection * limit);
    rate *= 1 + jitter * kWobble[tick++ % 6];
    ConcurrencySample s;
    s.seconds = kInterval;
    s.bytes = static_cast<uint64_t>(rate * kInterval);
    s.busy = limit;
    if (throttle_above > 0 && limit > throttle_above) s.throttled = 2;
    return s;
  }
};

std::vector<int> Replay(ConcurrencyController& c, Link& link, int samples) {
  std::vector<int> limits;
  for (int i = 0; i < samples; ++i) limits.push_back(c.OnSample(link.Sample(c.limit())));
  return limits;
}

TEST(ConcurrencyControllerTest, GrowsUnderPerConnectionCaps) {
  // 8 MB/s per connection, 1 GB/s in all: the answer is the ceiling of 128 (1 GB/s).
  ConcurrencyController c({.initial = 8, .ceiling = 128});
  Link link{.per_connection = 8 * kMB, .link = 1000 * kMB};
  std::vector<int> limits = Replay(c, link, 12);
  EXPECT_EQ(c.limit(), 128);
  // Gradually: every step at most doubles the limit.
  int previous = 8;
  for (int l : limits) {
    EXPECT_LE(l, previous * 2);
    previous = l;
  }
  Replay(c, link, 100);
  EXPECT_EQ(c.limit(), 128);  // and stays there
}

TEST(ConcurrencyControllerTest, StopsWhereThePerConnectionCapsMeetTheLink) {
  // 25 MB/s per connection, 400 MB/s in all: 16 connections fill it; 32 gain nothing.
  ConcurrencyController c({.initial = 8, .ceiling = 128});
  Link link{.per_connection = 25 * kMB, .link = 400 * kMB};
  Replay(c, link, 200);
  EXPECT_EQ(c.limit(), 16);
}

TEST(ConcurrencyControllerTest, HoldsOnAnUncappedLink) {
  ConcurrencyController c({.initial = 8, .ceiling = 128});
  Link link{.link = 2000 * kMB};
  std::vector<int> limits = Replay(c, link, 200);
  EXPECT_EQ(c.limit(), 8);
  // Only probes (one doubling, then back) ever leave 8.
  EXPECT_LE(*std::max_element(limits.begin(), limits.end()), 16);
  EXPECT_LE(std::count(limits.begin(), limits.end(), 16), 30);
}

TEST(ConcurrencyControllerTest, ShedsOn503AndWaitsBeforeGrowingAgain) {
  ConcurrencyController c({.initial = 8, .ceiling = 128});
  Link link{.per_connection = 8 * kMB, .link = 1000 * kMB};
  Replay(c, link, 12);
  ASSERT_EQ(c.limit(), 128);
  link.throttle_above = 20;  // the server starts answering 503 above 20 connections
  EXPECT_EQ(c.OnSample(link.Sample(c.limit())), 64);
  Replay(c, link, 3);
  EXPECT_LE(c.limit(), 20);
  // Later probes above 20 are answered with 503 and shed again: never back to 128.
  std::vector<int> limits = Replay(c, link, 300);
  EXPECT_LE(c.limit(), 20);
  EXPECT_LE(*std::max_element(limits.begin(), limits.end()), 40);
}

TEST(ConcurrencyControllerTest, ShedsOnConnectFailures) {
  ConcurrencyController c({.initial = 32, .ceiling = 128});
  ConcurrencySample s{.seconds = kInterval, .bytes = 1000, .busy = 32, .connect_failures = 3};
  EXPECT_EQ(c.OnSample(s), 24);
  EXPECT_EQ(c.OnSample(s), 18);
}

TEST(ConcurrencyControllerTest, ShedsWhenPerConnectionThroughputCollapses) {
  ConcurrencyController c({.initial = 8, .ceiling = 128});
  Link link{.per_connection = 8 * kMB, .link = 1000 * kMB};
  Replay(c, link, 12);
  ASSERT_EQ(c.limit(), 128);
  link.per_connection = 1 * kMB;  // the path got congested: each connection crawls
  Replay(c, link, 3);
  EXPECT_LT(c.limit(), 128);
}

TEST(ConcurrencyControllerTest, NoDecisionWithoutEnoughWork) {
  ConcurrencyController c({.initial = 8, .ceiling = 128});
  ConcurrencySample idle{.seconds = kInterval, .bytes = 100 * 1000 * 1000, .busy = 3};
  for (int i = 0; i < 50; ++i) EXPECT_EQ(c.OnSample(idle), 8);
}

TEST(ConcurrencyControllerTest, FixedLimitNeverMoves) {
  ConcurrencyController c({.initial = 8, .ceiling = 16, .fixed = true});
  EXPECT_EQ(c.limit(), 16);
  ConcurrencySample s{.seconds = kInterval, .bytes = 1000, .busy = 16, .throttled = 5};
  EXPECT_EQ(c.OnSample(s), 16);
  Link link{.per_connection = 8 * kMB, .link = 1000 * kMB};
  Replay(c, link, 50);
  EXPECT_EQ(c.limit(), 16);
}

TEST(ConcurrencyControllerTest, CeilingBoundsGrowth) {
  ConcurrencyController c({.initial = 8, .ceiling = 20});
  Link link{.per_connection = 8 * kMB, .link = 1000 * kMB};
  Replay(c, link, 50);
  EXPECT_EQ(c.limit(), 20);
}

}  // namespace
}  // namespace mx::http
