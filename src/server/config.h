// ServerConfig: every mx-server setting, from (highest first) command-line flags, the
// environment (ModelExpress and HF variable names), a YAML file (--config), defaults.
// The server starts from the environment alone.
#pragma once

#include <cstdint>
#include <string>

#include "common/status.h"
#include "hub/hub_client.h"
#include "registry/registry.h"

namespace mx::server {

struct ServerConfig {
  std::string host = "0.0.0.0";   // MODEL_EXPRESS_SERVER_HOST
  int port = 8001;                // MODEL_EXPRESS_SERVER_PORT (gRPC)
  int metrics_port = 9401;        // MODEL_EXPRESS_SERVER_METRICS_PORT (0 = off)
  int mirror_port = 8002;         // MX_MIRROR_PORT (0 = off)
  hub::HubConfig hub;             // cache dir, upstream endpoint, token, offline
  registry::StoreConfig store;    // MX_METADATA_BACKEND, REDIS_URL, MX_REDIS_HOST/PORT
  std::string tls_cert, tls_key;  // --tls-cert/--tls-key (both or neither)
  std::string auth_token_file;    // --auth-token-file: bearer token clients must send
  std::string auth_token;         // loaded from auth_token_file; never logged
  // Who may read gated and private repos through this server (gRPC and mirror alike):
  // "any" (ModelExpress's behaviour: the server's HF_TOKEN serves every caller that passed
  // auth) or "authenticated" (MX_GATED_REPOS): callers without the bearer token are served
  // only repos that upstream serves anonymously; callers with it get the server's HF_TOKEN.
  std::string gated_repos = "any";
  // The mirror and metrics ports speak plain HTTP. With TLS and a token configured, the
  // server refuses to start a mirror (whose clients would send the token in clear) unless
  // this is set (--allow-plaintext-mirror, MX_ALLOW_PLAINTEXT_MIRROR=1).
  bool allow_plaintext_mirror = false;
  std::string log_format = "text";  // --log-format text|json
  std::string log_level = "info";
  uint32_t default_chunk_bytes = 1 << 20;  // StreamModelFiles chunk when the client says 0
  uint32_t max_message_bytes = 16 << 20;   // gRPC send/receive limit; chunks are clamped below it
  int download_workers = 16;               // connections per download
  int64_t lease_ms = 30000;
  int64_t lease_renew_ms = 10000;
  int64_t heartbeat_timeout_s = 90;  // MX_HEARTBEAT_TIMEOUT_SECS
  int64_t gc_timeout_s = 3600;       // MX_GC_TIMEOUT_SECS
  int64_t reaper_interval_ms = 5000;
  // LRU eviction (off when all are 0).
  int max_models = 0;
  uint64_t max_bytes = 0;
  int64_t unused_after_s = 0;
};

// Parses flags (argv) over environment over YAML over defaults. `validate_only` is set
// when --validate-config was given. InvalidArgument names the offending setting.
Result<ServerConfig> LoadServerConfig(int argc, char** argv, bool* validate_only);

// Human-readable summary without secrets, for logs and --validate-config.
std::string DescribeConfig(const ServerConfig& config);

}  // namespace mx::server
