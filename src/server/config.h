// ServerConfig: every mx-server setting, from (highest first) command-line flags, the
// environment (ModelExpress and HF variable names), a YAML file (--config), defaults.
// The server starts from the environment alone.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

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
  int download_workers = 0;  // connections per download; 0: adaptive (hub::DownloadOptions)
  int64_t lease_ms = 30000;
  int64_t lease_renew_ms = 10000;
  int64_t heartbeat_timeout_s = 90;  // MX_HEARTBEAT_TIMEOUT_SECS
  int64_t gc_timeout_s = 3600;       // MX_GC_TIMEOUT_SECS
  int64_t reaper_interval_ms = 5000;
  // LRU eviction (off when all are 0).
  int max_models = 0;
  uint64_t max_bytes = 0;
  int64_t unused_after_s = 0;
  // Where each setting that was given came from, by YAML key ("flag --port",
  // "environment variable MX_MIRROR_PORT", "key 'port' in server.yaml"), for messages.
  std::map<std::string, std::string> sources;
  // The source of `key`, "the default" when it was not given.
  std::string SourceOf(const std::string& key) const;
};

// Parses flags (argv) over environment over YAML over defaults. `validate_only` is set
// when --validate-config was given. Refused with InvalidArgument, naming where the value
// came from (flag, environment variable, or key and file) and what is allowed:
// - a YAML key that is no setting (with the nearest known key as a suggestion), a value
//   that is not a scalar;
// - a number or byte size (units as in ParseByteSize: 16MiB, 1GiB) outside its range;
// - two of the gRPC, mirror and metrics ports on one number;
// - a TLS certificate or key that cannot be read or parsed, or a key that does not match
//   the certificate; an unknown log level or format.
Result<ServerConfig> LoadServerConfig(int argc, char** argv, bool* validate_only);

// Whether the ports the server would listen on (gRPC, and the mirror and metrics ports
// when on) can be bound now: FailedPrecondition naming the port and its setting when one
// is taken. For --validate-config; start-up itself fails on the real bind.
Status CheckPortsFree(const ServerConfig& config);

// The name of a YAML key or flag nearest to `word` among `known` (edit distance at most
// 3, else empty): for "did you mean" hints.
std::string NearestWord(const std::string& word, const std::vector<std::string>& known);

// Human-readable summary without secrets, for logs and --validate-config.
std::string DescribeConfig(const ServerConfig& config);

}  // namespace mx::server
