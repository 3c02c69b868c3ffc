#include "server/metrics.h"

namespace mx::server {

namespace {
void Emit(std::string* out, const char* name, const char* type, const char* help, double value) {
  *out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n" +
          name + " " + std::to_string(value) + "\n";
}
}  // namespace

std::string Metrics::Render() const {
  std::string o;
  Emit(&o, "mx_downloads_in_flight", "gauge", "Model downloads running now.",
       downloads_in_flight.load());
  Emit(&o, "mx_downloads_completed_total", "counter", "Model downloads that succeeded.",
       downloads_done.load());
  Emit(&o, "mx_downloads_failed_total", "counter", "Model downloads that failed.",
       downloads_failed.load());
  Emit(&o, "mx_upstream_bytes_total", "counter", "Bytes fetched from the upstream hub or storage.",
       bytes_from_upstream.load());
  Emit(&o, "mx_streamed_bytes_total", "counter", "File bytes sent by StreamModelFiles.",
       bytes_streamed.load());
  Emit(&o, "mx_mirrored_bytes_total", "counter", "File bytes sent by the HF mirror endpoint.",
       bytes_mirrored.load());
  Emit(&o, "mx_active_streams", "gauge", "StreamModelFiles calls in progress.",
       active_streams.load());
  Emit(&o, "mx_streams_total", "counter", "StreamModelFiles calls started.", streams_total.load());
  Emit(&o, "mx_cache_bytes", "gauge", "Bytes of model files in the cache.", cache_bytes.load());
  Emit(&o, "mx_cache_models", "gauge", "Models in the cache.", cache_models.load());
  Emit(&o, "mx_evictions_total", "counter", "Models evicted from the cache.", evictions.load());
  Emit(&o, "mx_auth_failures_total", "counter", "gRPC calls refused for a missing or wrong token.",
       grpc_auth_failures.load());
  o += "# HELP mx_registry_operation_seconds Latency of metadata-store operations.\n";
  o += "# TYPE mx_registry_operation_seconds summary\n";
  o +=
      "mx_registry_operation_seconds_sum " + std::to_string(registry_op_micros.load() / 1e6) + "\n";
  o += "mx_registry_operation_seconds_count " + std::to_string(registry_ops.load()) + "\n";
  return o;
}

}  // namespace mx::server
