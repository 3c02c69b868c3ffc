#include "server/config.h"

#include <yaml-cpp/yaml.h>

#include <CLI/CLI.hpp>
#include <optional>

#include "common/env.h"
#include "common/fs.h"
#include "common/version.h"

namespace mx::server {
namespace {

// One setting's value as text from one layer, applied by a typed setter.
struct Layered {
  std::optional<std::string> yaml, env, flag;
  std::optional<std::string> Value() const { return flag ? flag : env ? env : yaml; }
};

Status ParseInt(const std::string& name, const std::string& text, int64_t lo, int64_t hi,
                int64_t* out) {
  MX_ASSIGN_OR_RETURN(*out, ParseIntInRange(name, text, lo, hi));  // the shared parser
  return Status::OK();
}

}  // namespace

Result<ServerConfig> LoadServerConfig(int argc, char** argv, bool* validate_only) {
  ServerConfig c;
  c.hub = hub::HubConfig::FromEnvironment();
  std::map<std::string, Layered> s;  // setting name -> layers
  CLI::App app{"mx-server: ModelExpress-compatible model cache server"};
  std::string config_file;
  app.add_option("--config", config_file, "YAML configuration file");
  app.add_flag("--validate-config", *validate_only, "Check the configuration and exit");
  app.set_version_flag("--version", BuildDescription("mx-server"));
  auto flag = [&](const std::string& opt, const std::string& key, const std::string& help) {
    app.add_option_function<std::string>(
        opt, [&s, key](const std::string& v) { s[key].flag = v; }, help);
  };
  flag("--host", "host", "gRPC bind address (MODEL_EXPRESS_SERVER_HOST, default 0.0.0.0)");
  flag("--port", "port", "gRPC port (MODEL_EXPRESS_SERVER_PORT, default 8001)");
  flag("--metrics-port", "metrics_port", "Prometheus port, 0 = off (default 9401)");
  flag("--mirror-port", "mirror_port", "HF mirror port, 0 = off (MX_MIRROR_PORT, default 8002)");
  flag("--cache-dir", "cache_dir", "Model cache (MODEL_EXPRESS_CACHE_DIRECTORY, HF_HUB_CACHE)");
  flag("--metadata-backend", "backend", "embedded or redis (MX_METADATA_BACKEND)");
  flag("--redis-url", "redis_url", "redis://[:password@]host:port[/db] (REDIS_URL)");
  flag("--hf-endpoint", "hf_endpoint", "Upstream hub (HF_ENDPOINT)");
  flag("--tls-cert", "tls_cert", "PEM certificate chain for TLS");
  flag("--tls-key", "tls_key", "PEM private key for TLS");
  flag("--auth-token-file", "auth_token_file", "File holding the bearer token clients must send");
  flag("--gated-repos", "gated_repos",
       "any (the server's HF token serves every caller) or authenticated (MX_GATED_REPOS)");
  flag("--allow-plaintext-mirror", "allow_plaintext_mirror",
       "true: serve the mirror over plain HTTP even with TLS and a token configured");
  flag("--log-format", "log_format", "text or json");
  flag("--log-level", "log_level", "debug, info, warn, error");
  flag("--chunk-size", "chunk_size", "Default StreamModelFiles chunk bytes (1 MiB)");
  flag("--max-message-size", "max_message", "gRPC message limit in bytes (16 MiB)");
  flag("--lease-seconds", "lease_seconds", "Download lease; renewed every third of it (30)");
  flag("--reaper-interval-ms", "reaper_interval_ms", "How often stale sources are reaped (5000)");
  flag("--download-workers", "download_workers", "HTTP connections per download (16)");
  flag("--max-models", "max_models", "Evict least recently used models beyond this count");
  flag("--max-bytes", "max_bytes",
       "Evict least recently used models beyond this size (e.g. 500GiB)");
  flag("--unused-after", "unused_after", "Evict models unused for this many seconds");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    std::printf("%s", app.help().c_str());
    std::exit(0);
  } catch (const CLI::CallForVersion&) {
    std::printf("%s\n", BuildDescription("mx-server").c_str());
    std::exit(0);
  } catch (const CLI::ParseError& e) {
    return Status::InvalidArgument(e.what());
  }

  if (!config_file.empty()) {
    try {
      YAML::Node root = YAML::LoadFile(config_file);
      for (const auto& kv : root) {
        std::string key = kv.first.as<std::string>();
        std::replace(key.begin(), key.end(), '-', '_');
        s[key].yaml = kv.second.as<std::string>();
      }
    } catch (const std::exception& e) {
      return Status::InvalidArgument("config file " + config_file + ": " + e.what());
    }
  }
  auto env = [&](const char* var, const std::string& key) {
    if (auto v = GetEnv(var); v && !v->empty() && !s[key].env) s[key].env = *v;
  };
  env("MODEL_EXPRESS_SERVER_HOST", "host");
  env("MODEL_EXPRESS_SERVER_PORT", "port");
  env("MODEL_EXPRESS_SERVER_METRICS_PORT", "metrics_port");
  env("MX_MIRROR_PORT", "mirror_port");
  env("MODEL_EXPRESS_CACHE_DIRECTORY", "cache_dir");
  env("MX_METADATA_BACKEND", "backend");
  env("REDIS_URL", "redis_url");
  env("MX_REDIS_HOST", "redis_host");
  env("MX_REDIS_PORT", "redis_port");
  env("MX_HEARTBEAT_TIMEOUT_SECS", "heartbeat_timeout");
  env("MX_GC_TIMEOUT_SECS", "gc_timeout");
  env("MX_LOG_FORMAT", "log_format");
  env("MX_LEASE_SECS", "lease_seconds");
  env("MX_GATED_REPOS", "gated_repos");
  env("MX_ALLOW_PLAINTEXT_MIRROR", "allow_plaintext_mirror");

  auto str = [&](const std::string& key, std::string* out) {
    if (auto v = s[key].Value()) *out = *v;
  };
  auto num = [&](const std::string& key, int64_t lo, int64_t hi, auto* out) -> Status {
    auto v = s[key].Value();
    if (!v) return Status::OK();
    int64_t n;
    MX_RETURN_IF_ERROR(ParseInt(key, *v, lo, hi, &n));
    *out = static_cast<std::remove_pointer_t<decltype(out)>>(n);
    return Status::OK();
  };
  str("host", &c.host);
  MX_RETURN_IF_ERROR(num("port", 1, 65535, &c.port));
  MX_RETURN_IF_ERROR(num("metrics_port", 0, 65535, &c.metrics_port));
  MX_RETURN_IF_ERROR(num("mirror_port", 0, 65535, &c.mirror_port));
  str("cache_dir", &c.hub.cache_dir);
  str("hf_endpoint", &c.hub.endpoint);
  while (!c.hub.endpoint.empty() && c.hub.endpoint.back() == '/') c.hub.endpoint.pop_back();
  str("backend", &c.store.backend);
  str("redis_host", &c.store.redis_host);
  MX_RETURN_IF_ERROR(num("redis_port", 1, 65535, &c.store.redis_port));
  if (auto url = s["redis_url"].Value())
    MX_RETURN_IF_ERROR(registry::ParseRedisUrl(*url, &c.store));
  str("tls_cert", &c.tls_cert);
  str("tls_key", &c.tls_key);
  str("auth_token_file", &c.auth_token_file);
  str("log_format", &c.log_format);
  str("log_level", &c.log_level);
  str("gated_repos", &c.gated_repos);
  if (auto v = s["allow_plaintext_mirror"].Value()) {
    if (*v == "1" || *v == "true" || *v == "yes") {
      c.allow_plaintext_mirror = true;
    } else if (*v != "0" && *v != "false" && *v != "no") {
      return Status::InvalidArgument("allow_plaintext_mirror must be true or false, not '" + *v +
                                     "'");
    }
  }
  MX_RETURN_IF_ERROR(num("chunk_size", 1, 256 << 20, &c.default_chunk_bytes));
  MX_RETURN_IF_ERROR(num("max_message", 64 << 10, 1 << 30, &c.max_message_bytes));
  MX_RETURN_IF_ERROR(num("heartbeat_timeout", 1, 1 << 30, &c.heartbeat_timeout_s));
  MX_RETURN_IF_ERROR(num("gc_timeout", 1, 1 << 30, &c.gc_timeout_s));
  MX_RETURN_IF_ERROR(num("max_models", 0, 1 << 30, &c.max_models));
  int64_t lease_s = c.lease_ms / 1000;
  MX_RETURN_IF_ERROR(num("lease_seconds", 1, 3600, &lease_s));
  c.lease_ms = lease_s * 1000;
  c.lease_renew_ms = c.lease_ms / 3;
  MX_RETURN_IF_ERROR(num("reaper_interval_ms", 10, 3600000, &c.reaper_interval_ms));
  MX_RETURN_IF_ERROR(num("download_workers", 1, 256, &c.download_workers));
  MX_RETURN_IF_ERROR(num("unused_after", 0, int64_t(1) << 40, &c.unused_after_s));
  if (auto v = s["max_bytes"].Value()) {
    MX_ASSIGN_OR_RETURN(c.max_bytes, ParseByteSize(*v));
  }

  if (c.store.backend != "embedded" && c.store.backend != "redis") {
    return Status::InvalidArgument("metadata backend must be embedded or redis, not '" +
                                   c.store.backend + "'");
  }
  if (c.log_format != "text" && c.log_format != "json") {
    return Status::InvalidArgument("--log-format must be text or json");
  }
  if (c.tls_cert.empty() != c.tls_key.empty()) {
    return Status::InvalidArgument("--tls-cert and --tls-key go together");
  }
  for (const std::string* f : {&c.tls_cert, &c.tls_key}) {
    if (!f->empty() && ::access(f->c_str(), R_OK) != 0) {
      return Status::InvalidArgument("cannot read " + *f);
    }
  }
  if (!c.auth_token_file.empty()) {
    auto token = ReadFile(c.auth_token_file);
    if (!token.ok()) return token.status().WithContext("--auth-token-file");
    c.auth_token = *token;
    while (!c.auth_token.empty() && (c.auth_token.back() == '\n' || c.auth_token.back() == '\r' ||
                                     c.auth_token.back() == ' ')) {
      c.auth_token.pop_back();
    }
    if (c.auth_token.empty()) return Status::InvalidArgument("--auth-token-file is empty");
  }
  if (c.gated_repos != "any" && c.gated_repos != "authenticated") {
    return Status::InvalidArgument("--gated-repos must be any or authenticated, not '" +
                                   c.gated_repos + "'");
  }
  if (!c.tls_cert.empty() && !c.auth_token.empty() && c.mirror_port > 0 &&
      !c.allow_plaintext_mirror) {
    return Status::InvalidArgument(
        "the HF mirror speaks plain HTTP, so its clients would send the bearer token in clear "
        "next to a TLS gRPC port: set --mirror-port 0, put the mirror behind a TLS proxy and "
        "pass --allow-plaintext-mirror, or drop the token");
  }
  if (c.default_chunk_bytes > c.max_message_bytes - (64 << 10)) {
    return Status::InvalidArgument("--chunk-size must be below --max-message-size minus 64 KiB");
  }
  if (c.hub.cache_dir.empty()) return Status::InvalidArgument("no cache directory");
  // Under .locks/: huggingface_hub skips that folder when it scans the cache.
  c.store.sqlite_path = c.hub.cache_dir + "/.locks/mx/registry.db";
  return c;
}

std::string DescribeConfig(const ServerConfig& c) {
  std::string d;
  d += "grpc " + c.host + ":" + std::to_string(c.port);
  d += c.tls_cert.empty() ? " (plaintext" : " (TLS";
  d += c.auth_token.empty() ? ", no auth)" : ", bearer token)";
  if (c.gated_repos == "authenticated") d += "; gated repos for authenticated callers only";
  d += "; mirror :" + (c.mirror_port ? std::to_string(c.mirror_port) : std::string("off"));
  d += "; metrics :" + (c.metrics_port ? std::to_string(c.metrics_port) : std::string("off"));
  d += "; cache " + c.hub.cache_dir;
  d += "; registry " + c.store.backend;
  if (c.store.backend == "redis")
    d += " " + c.store.redis_host + ":" + std::to_string(c.store.redis_port);
  d += "; upstream " + c.hub.endpoint + (c.hub.offline ? " (offline)" : "");
  return d;
}

}  // namespace mx::server
