#include "server/config.h"

#include <netdb.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <sys/socket.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <memory>
#include <optional>

#include "common/env.h"
#include "common/fs.h"
#include "common/text.h"
#include "common/version.h"

namespace mx::server {
namespace {

// One setting: its YAML key (the flag is the key with '-' for '_'), whether it has a
// flag, and the environment variables that set it (the first set one wins).
struct SettingSpec {
  const char* key;
  bool flag;
  std::vector<const char*> env;
  const char* help;
};

const std::vector<SettingSpec>& Specs() {
  static const std::vector<SettingSpec> specs = {
      {"host", true, {"MODEL_EXPRESS_SERVER_HOST"}, "gRPC bind address (default 0.0.0.0)"},
      {"port", true, {"MODEL_EXPRESS_SERVER_PORT"}, "gRPC port (default 8001)"},
      {"metrics_port",
       true,
       {"MODEL_EXPRESS_SERVER_METRICS_PORT"},
       "Prometheus, /healthz and /readyz port, 0 = off (default 9401)"},
      {"mirror_port", true, {"MX_MIRROR_PORT"}, "HF mirror port, 0 = off (default 8002)"},
      {"cache_dir",
       true,
       {"MODEL_EXPRESS_CACHE_DIRECTORY"},
       "Model cache (else HF_HUB_CACHE, else $HF_HOME/hub)"},
      {"metadata_backend", true, {"MX_METADATA_BACKEND"}, "embedded or redis"},
      {"redis_url", true, {"REDIS_URL"}, "redis://[:password@]host:port[/db]"},
      {"redis_host", false, {"MX_REDIS_HOST"}, nullptr},
      {"redis_port", false, {"MX_REDIS_PORT"}, nullptr},
      {"hf_endpoint", true, {"HF_ENDPOINT"}, "Upstream hub"},
      {"tls_cert", true, {}, "PEM certificate chain for TLS"},
      {"tls_key", true, {}, "PEM private key for TLS"},
      {"auth_token_file", true, {}, "File holding the bearer token clients must send"},
      {"gated_repos",
       true,
       {"MX_GATED_REPOS"},
       "any (the server's HF token serves every caller) or authenticated"},
      {"allow_plaintext_mirror",
       true,
       {"MX_ALLOW_PLAINTEXT_MIRROR"},
       "true: serve the mirror over plain HTTP even with TLS and a token configured"},
      {"log_format", true, {"MX_LOG_FORMAT"}, "text or json"},
      {"log_level", true, {"MX_LOG_LEVEL"}, "debug, info, warn, error"},
      {"chunk_size", true, {}, "Default StreamModelFiles chunk (1MiB; 64KiB to 256MiB)"},
      {"max_message_size", true, {}, "gRPC message limit (16MiB; 64KiB to 1GiB)"},
      {"lease_seconds", true, {"MX_LEASE_SECS"}, "Download lease; renewed every third of it (30)"},
      {"reaper_interval_ms", true, {}, "How often stale sources are reaped (5000)"},
      {"download_workers",
       true,
       {},
       "HTTP connections per download (0: adaptive, up to MX_MAX_CONNECTIONS or 128)"},
      {"max_models", true, {}, "Evict least recently used models beyond this count"},
      {"max_bytes", true, {}, "Evict least recently used models beyond this size (e.g. 500GiB)"},
      {"unused_after", true, {}, "Evict models unused for this many seconds"},
      {"heartbeat_timeout", false, {"MX_HEARTBEAT_TIMEOUT_SECS"}, nullptr},
      {"gc_timeout", false, {"MX_GC_TIMEOUT_SECS"}, nullptr},
  };
  return specs;
}

// Older spellings still accepted in YAML files.
const std::map<std::string, std::string>& YamlAliases() {
  static const std::map<std::string, std::string> aliases = {{"backend", "metadata_backend"},
                                                             {"max_message", "max_message_size"}};
  return aliases;
}

std::string FlagName(const std::string& key) {
  std::string flag = "--" + key;
  std::replace(flag.begin(), flag.end(), '_', '-');
  return flag;
}

// One setting's value as text from each layer, and where it came from.
struct Layered {
  std::optional<std::string> yaml, env, flag;
  std::string env_name;
  std::optional<std::string> Value() const { return flag ? flag : env ? env : yaml; }
  std::string Source(const std::string& key, const std::string& file) const {
    if (flag) return "flag " + FlagName(key);
    if (env) return "environment variable " + env_name;
    if (yaml) return "key '" + key + "' in " + file;
    return "the default";
  }
};

// 65536 -> "64 KiB"; sizes that are no whole unit stay in bytes.

class Settings {
 public:
  Settings(std::map<std::string, Layered>* s, std::string file) : s_(*s), file_(std::move(file)) {}

  std::optional<std::string> Value(const std::string& key) const {
    auto it = s_.find(key);
    return it == s_.end() ? std::nullopt : it->second.Value();
  }
  std::string Source(const std::string& key) const {
    auto it = s_.find(key);
    return it == s_.end() ? "the default" : it->second.Source(key, file_);
  }
  // "flag --port ('x')": the source and (a bounded copy of) the value.
  std::string Where(const std::string& key) const {
    return Source(key) + " ('" + Printable(Value(key).value_or(""), 64) + "')";
  }

  Status Int(const std::string& key, int64_t lo, int64_t hi, int64_t* out) const {
    auto v = Value(key);
    if (!v) return Status::OK();
    auto n = ParseInt64(*v);
    if (!n.ok() || *n < lo || *n > hi) {
      return Status::InvalidArgument(Where(key) + ": must be a whole number between " +
                                     std::to_string(lo) + " and " + std::to_string(hi));
    }
    *out = *n;
    return Status::OK();
  }
  template <typename T>
  Status Int(const std::string& key, int64_t lo, int64_t hi, T* out) const {
    int64_t n = static_cast<int64_t>(*out);
    MX_RETURN_IF_ERROR(Int(key, lo, hi, &n));
    *out = static_cast<T>(n);
    return Status::OK();
  }
  // A byte size with or without a unit (16MiB, 1GiB, 1048576), in [lo, hi].
  template <typename T>
  Status Size(const std::string& key, uint64_t lo, uint64_t hi, T* out) const {
    auto v = Value(key);
    if (!v) return Status::OK();
    MX_ASSIGN_OR_RETURN(uint64_t n, ParseByteSizeInRange(Source(key), *v, lo, hi));
    *out = static_cast<T>(n);
    return Status::OK();
  }
  Status OneOf(const std::string& key, const std::vector<std::string>& allowed,
               std::string* out) const {
    auto v = Value(key);
    if (!v) return Status::OK();
    if (std::find(allowed.begin(), allowed.end(), *v) == allowed.end()) {
      std::string list;
      for (size_t i = 0; i < allowed.size(); ++i) {
        list += (i == 0 ? "" : i + 1 == allowed.size() ? " or " : ", ") + allowed[i];
      }
      return Status::InvalidArgument(Where(key) + ": must be " + list);
    }
    *out = *v;
    return Status::OK();
  }

 private:
  std::map<std::string, Layered>& s_;
  std::string file_;
};

// Reads the YAML file into the yaml layer: every key must name a setting.
Status LoadYaml(const std::string& file, std::map<std::string, Layered>* s) {
  YAML::Node root;
  try {
    root = YAML::LoadFile(file);
  } catch (const std::exception& e) {
    return Status::InvalidArgument("config file " + file + ": " + e.what());
  }
  if (root.IsNull()) return Status::OK();  // an empty file
  if (!root.IsMap()) {
    return Status::InvalidArgument("config file " + file + ": must be a mapping of key: value");
  }
  std::vector<std::string> known;
  for (const auto& spec : Specs()) known.push_back(spec.key);
  for (const auto& kv : root) {
    std::string key;
    try {
      key = kv.first.as<std::string>();
    } catch (const std::exception&) {
      return Status::InvalidArgument("config file " + file + ": a key is not a string");
    }
    std::string name = key;
    std::replace(name.begin(), name.end(), '-', '_');
    if (auto alias = YamlAliases().find(name); alias != YamlAliases().end()) name = alias->second;
    if (std::find(known.begin(), known.end(), name) == known.end()) {
      std::string msg = "unknown key '" + Printable(key, 64) + "' in " + file;
      std::string near = NearestWord(name, known);
      if (!near.empty()) msg += "; did you mean '" + near + "'?";
      return Status::InvalidArgument(msg);
    }
    if (!kv.second.IsScalar()) {
      return Status::InvalidArgument("key '" + key + "' in " + file +
                                     ": must be a single value (not a list, map or empty)");
    }
    (*s)[name].yaml = kv.second.Scalar();
  }
  return Status::OK();
}

// Reads a PEM certificate (the first of the chain) and key and checks that the key is the
// certificate's, so a mixed-up pair fails here instead of in every TLS handshake.
Status CheckTlsPair(const std::string& cert_file, const std::string& cert_source,
                    const std::string& key_file, const std::string& key_source) {
  auto cert_pem = ReadFile(cert_file);
  if (!cert_pem.ok()) {
    return Status::InvalidArgument(cert_source + ": cannot read " + cert_file + ": " +
                                   cert_pem.status().message());
  }
  auto key_pem = ReadFile(key_file);
  if (!key_pem.ok()) {
    return Status::InvalidArgument(key_source + ": cannot read " + key_file + ": " +
                                   key_pem.status().message());
  }
  std::unique_ptr<BIO, decltype(&BIO_free)> cb(
      BIO_new_mem_buf(cert_pem->data(), static_cast<int>(cert_pem->size())), BIO_free);
  std::unique_ptr<X509, decltype(&X509_free)> cert(
      cb ? PEM_read_bio_X509(cb.get(), nullptr, nullptr, nullptr) : nullptr, X509_free);
  if (!cert) {
    ERR_clear_error();
    return Status::InvalidArgument(cert_source + ": " + cert_file +
                                   " holds no PEM certificate (BEGIN CERTIFICATE)");
  }
  std::unique_ptr<BIO, decltype(&BIO_free)> kb(
      BIO_new_mem_buf(key_pem->data(), static_cast<int>(key_pem->size())), BIO_free);
  // A passphrase callback that answers nothing: an encrypted key fails instead of prompting.
  auto no_pass = [](char*, int, int, void*) { return 0; };
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(
      kb ? PEM_read_bio_PrivateKey(kb.get(), nullptr, no_pass, nullptr) : nullptr, EVP_PKEY_free);
  if (!key) {
    ERR_clear_error();
    return Status::InvalidArgument(key_source + ": " + key_file +
                                   " holds no unencrypted PEM private key");
  }
  if (X509_check_private_key(cert.get(), key.get()) != 1) {
    ERR_clear_error();
    return Status::InvalidArgument(key_source + " (" + key_file + ") is not the key of the " +
                                   "certificate in " + cert_source + " (" + cert_file + ")");
  }
  return Status::OK();
}

}  // namespace

std::string NearestWord(const std::string& word, const std::vector<std::string>& known) {
  std::string best;
  size_t best_d = 4;  // more than 3 edits is no typo
  for (const auto& k : known) {
    // Levenshtein distance with one row.
    std::vector<size_t> row(k.size() + 1);
    for (size_t j = 0; j <= k.size(); ++j) row[j] = j;
    for (size_t i = 1; i <= word.size(); ++i) {
      size_t diag = row[0];
      row[0] = i;
      for (size_t j = 1; j <= k.size(); ++j) {
        size_t up = row[j];
        row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (word[i - 1] != k[j - 1])});
        diag = up;
      }
    }
    if (row[k.size()] < best_d) {
      best_d = row[k.size()];
      best = k;
    }
  }
  return best;
}

std::string ServerConfig::SourceOf(const std::string& key) const {
  auto it = sources.find(key);
  return it == sources.end() ? "the default" : it->second;
}

Result<ServerConfig> LoadServerConfig(int argc, char** argv, bool* validate_only) {
  ServerConfig c;
  c.hub = hub::HubConfig::FromEnvironment();
  std::map<std::string, Layered> s;  // YAML key -> layers
  CLI::App app{"mx-server: ModelExpress-compatible model cache server"};
  std::string config_file;
  app.add_option("--config", config_file, "YAML configuration file (keys: the flag names with _)");
  app.add_flag("--validate-config", *validate_only,
               "Check the configuration (and that its ports are free) and exit");
  app.set_version_flag("--version", BuildDescription("mx-server"));
  for (const auto& spec : Specs()) {
    if (!spec.flag) continue;
    std::string key = spec.key;
    std::string help = spec.help;
    if (!spec.env.empty()) help += std::string(" [") + spec.env.front() + "]";
    app.add_option_function<std::string>(
        FlagName(key), [&s, key](const std::string& v) { s[key].flag = v; }, help);
  }
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

  if (!config_file.empty()) MX_RETURN_IF_ERROR(LoadYaml(config_file, &s));
  for (const auto& spec : Specs()) {
    for (const char* var : spec.env) {
      if (auto v = GetEnv(var); v && !v->empty() && !s[spec.key].env) {
        s[spec.key].env = *v;
        s[spec.key].env_name = var;
      }
    }
  }
  Settings set(&s, config_file);
  for (const auto& [key, layers] : s) {
    if (layers.Value()) c.sources[key] = set.Source(key);
  }

  auto str = [&](const std::string& key, std::string* out) {
    if (auto v = set.Value(key)) *out = *v;
  };
  str("host", &c.host);
  MX_RETURN_IF_ERROR(set.Int("port", 1, 65535, &c.port));
  MX_RETURN_IF_ERROR(set.Int("metrics_port", 0, 65535, &c.metrics_port));
  MX_RETURN_IF_ERROR(set.Int("mirror_port", 0, 65535, &c.mirror_port));
  str("cache_dir", &c.hub.cache_dir);
  str("hf_endpoint", &c.hub.endpoint);
  while (!c.hub.endpoint.empty() && c.hub.endpoint.back() == '/') c.hub.endpoint.pop_back();
  MX_RETURN_IF_ERROR(set.OneOf("metadata_backend", {"embedded", "redis"}, &c.store.backend));
  str("redis_host", &c.store.redis_host);
  MX_RETURN_IF_ERROR(set.Int("redis_port", 1, 65535, &c.store.redis_port));
  if (auto url = set.Value("redis_url")) {
    if (Status st = registry::ParseRedisUrl(*url, &c.store); !st.ok()) {
      // The URL may hold a password: name the setting, not the value.
      return Status::InvalidArgument(set.Source("redis_url") + ": " + st.message());
    }
  }
  str("tls_cert", &c.tls_cert);
  str("tls_key", &c.tls_key);
  str("auth_token_file", &c.auth_token_file);
  MX_RETURN_IF_ERROR(set.OneOf("log_format", {"text", "json"}, &c.log_format));
  MX_RETURN_IF_ERROR(set.OneOf("log_level", {"debug", "info", "warn", "error"}, &c.log_level));
  MX_RETURN_IF_ERROR(set.OneOf("gated_repos", {"any", "authenticated"}, &c.gated_repos));
  if (auto v = set.Value("allow_plaintext_mirror")) {
    if (*v == "1" || *v == "true" || *v == "yes") {
      c.allow_plaintext_mirror = true;
    } else if (*v != "0" && *v != "false" && *v != "no") {
      return Status::InvalidArgument(set.Where("allow_plaintext_mirror") +
                                     ": must be true or false");
    }
  }
  MX_RETURN_IF_ERROR(set.Size("chunk_size", 64 << 10, 256 << 20, &c.default_chunk_bytes));
  MX_RETURN_IF_ERROR(set.Size("max_message_size", 64 << 10, 1 << 30, &c.max_message_bytes));
  MX_RETURN_IF_ERROR(set.Int("heartbeat_timeout", 1, 1 << 30, &c.heartbeat_timeout_s));
  MX_RETURN_IF_ERROR(set.Int("gc_timeout", 1, 1 << 30, &c.gc_timeout_s));
  MX_RETURN_IF_ERROR(set.Int("max_models", 0, 1 << 30, &c.max_models));
  int64_t lease_s = c.lease_ms / 1000;
  MX_RETURN_IF_ERROR(set.Int("lease_seconds", 1, 3600, &lease_s));
  c.lease_ms = lease_s * 1000;
  c.lease_renew_ms = c.lease_ms / 3;
  MX_RETURN_IF_ERROR(set.Int("reaper_interval_ms", 10, 3600000, &c.reaper_interval_ms));
  MX_RETURN_IF_ERROR(set.Int("download_workers", 0, 256, &c.download_workers));
  MX_RETURN_IF_ERROR(set.Int("unused_after", 0, int64_t(1) << 40, &c.unused_after_s));
  MX_RETURN_IF_ERROR(set.Size("max_bytes", 0, uint64_t(1) << 60, &c.max_bytes));

  // Two listeners on one port: the second would fail to bind (or, worse, share it).
  const std::pair<const char*, int> ports[] = {
      {"port", c.port}, {"mirror_port", c.mirror_port}, {"metrics_port", c.metrics_port}};
  for (size_t i = 0; i < 3; ++i) {
    for (size_t j = i + 1; j < 3; ++j) {
      if (ports[i].second != 0 && ports[i].second == ports[j].second) {
        return Status::InvalidArgument(
            "port " + std::to_string(ports[i].second) + " is set twice: " + ports[i].first + " (" +
            set.Source(ports[i].first) + ") and " + ports[j].first + " (" +
            set.Source(ports[j].first) + "); the gRPC, mirror and metrics ports must differ");
      }
    }
  }
  if (c.tls_cert.empty() != c.tls_key.empty()) {
    return Status::InvalidArgument(
        "--tls-cert and --tls-key go together (" +
        (c.tls_cert.empty() ? set.Source("tls_key") : set.Source("tls_cert")) + " sets only one)");
  }
  if (!c.tls_cert.empty()) {
    MX_RETURN_IF_ERROR(
        CheckTlsPair(c.tls_cert, set.Source("tls_cert"), c.tls_key, set.Source("tls_key")));
  }
  if (!c.auth_token_file.empty()) {
    auto token = ReadFile(c.auth_token_file);
    if (!token.ok()) return token.status().WithContext(set.Source("auth_token_file"));
    c.auth_token = *token;
    while (!c.auth_token.empty() && (c.auth_token.back() == '\n' || c.auth_token.back() == '\r' ||
                                     c.auth_token.back() == ' ')) {
      c.auth_token.pop_back();
    }
    if (c.auth_token.empty()) {
      return Status::InvalidArgument(set.Source("auth_token_file") + ": " + c.auth_token_file +
                                     " is empty");
    }
  }
  if (!c.tls_cert.empty() && !c.auth_token.empty() && c.mirror_port > 0 &&
      !c.allow_plaintext_mirror) {
    return Status::InvalidArgument(
        "the HF mirror speaks plain HTTP, so its clients would send the bearer token in clear "
        "next to a TLS gRPC port: set --mirror-port 0, put the mirror behind a TLS proxy and "
        "pass --allow-plaintext-mirror, or drop the token");
  }
  if (c.default_chunk_bytes > c.max_message_bytes - (64 << 10)) {
    return Status::InvalidArgument(
        "chunk size " + ExactSizeText(c.default_chunk_bytes) + " (" + set.Source("chunk_size") +
        ") must be at most the message " +
        "limit minus 64 KiB: " + ExactSizeText(c.max_message_bytes - (64 << 10)) + " (" +
        set.Source("max_message_size") + ")");
  }
  if (c.hub.cache_dir.empty()) return Status::InvalidArgument("no cache directory");
  // Under .locks/: huggingface_hub skips that folder when it scans the cache.
  c.store.sqlite_path = c.hub.cache_dir + "/.locks/mx/registry.db";
  return c;
}

Status CheckPortsFree(const ServerConfig& c) {
  const std::pair<const char*, int> ports[] = {
      {"port", c.port}, {"mirror_port", c.mirror_port}, {"metrics_port", c.metrics_port}};
  for (const auto& [key, port] : ports) {
    if (port == 0) continue;
    std::string host = c.host;
    if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
      host = host.substr(1, host.size() - 2);
    }
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    addrinfo* found = nullptr;
    if (::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found) != 0) {
      return Status::InvalidArgument("cannot resolve the bind address '" + Printable(c.host) +
                                     "' (" + c.SourceOf("host") + ")");
    }
    std::unique_ptr<addrinfo, decltype(&freeaddrinfo)> list(found, freeaddrinfo);
    for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
      ScopedFd fd(::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol));
      if (fd.get() < 0) continue;
      int one = 1;
      ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
      if (::bind(fd.get(), a->ai_addr, a->ai_addrlen) != 0 && errno == EADDRINUSE) {
        return Status::FailedPrecondition(
            std::string(key == std::string("port")          ? "gRPC"
                        : key == std::string("mirror_port") ? "mirror"
                                                            : "metrics") +
            " port " + std::to_string(port) + " on " + c.host + " is already in use (" + key +
            ", from " + c.SourceOf(key) + "): is another mx-server running?");
      }
    }
  }
  return Status::OK();
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
  if (c.store.backend == "embedded") d += " " + c.store.sqlite_path;
  if (c.store.backend == "redis")
    d += " " + c.store.redis_host + ":" + std::to_string(c.store.redis_port);
  d += "; upstream " + c.hub.endpoint + (c.hub.offline ? " (offline)" : "");
  return d;
}

}  // namespace mx::server
