// Metrics: the server's Prometheus counters and gauges, rendered in the text exposition
// format on the metrics port. Lock-free counters; histograms are summaries (sum + count).
#pragma once

#include <atomic>
#include <cstdint>
#include <string>

namespace mx::server {

struct Metrics {
  std::atomic<int64_t> downloads_in_flight{0};
  std::atomic<uint64_t> downloads_done{0};
  std::atomic<uint64_t> downloads_failed{0};
  std::atomic<uint64_t> bytes_from_upstream{0};
  std::atomic<uint64_t> bytes_streamed{0};
  std::atomic<uint64_t> bytes_mirrored{0};
  std::atomic<int64_t> active_streams{0};
  std::atomic<uint64_t> streams_total{0};
  std::atomic<uint64_t> cache_bytes{0};
  std::atomic<uint64_t> cache_models{0};
  std::atomic<uint64_t> evictions{0};
  std::atomic<uint64_t> registry_ops{0};
  std::atomic<uint64_t> registry_op_micros{0};
  std::atomic<uint64_t> grpc_auth_failures{0};

  void ObserveRegistryOp(uint64_t micros) {
    ++registry_ops;
    registry_op_micros += micros;
  }
  std::string Render() const;
};

}  // namespace mx::server
