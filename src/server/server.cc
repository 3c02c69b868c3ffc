#include "server/server.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <malloc.h>
#include <signal.h>
#include <sys/resource.h>

#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <thread>
#include <vector>

#include "common/fs.h"
#include "common/log.h"
#include "common/text.h"
#include "server/config.h"
#include "server/health.h"
#include "server/http_server.h"
#include "server/mirror.h"
#include "server/services.h"

namespace mx::server {
namespace {

std::shared_ptr<grpc::ServerCredentials> Credentials(const ServerConfig& c) {
  if (c.tls_cert.empty()) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions opts;
  opts.pem_key_cert_pairs.push_back({*ReadFile(c.tls_key), *ReadFile(c.tls_cert)});
  return grpc::SslServerCredentials(opts);
}

// Stale sources and eviction, every reaper_interval_ms until stopped.
class Reaper {
 public:
  Reaper(const ServerConfig& c, registry::MetadataStore* store, ModelManager* manager)
      : thread_([this, &c, store, manager] {
          std::unique_lock<std::mutex> l(mu_);
          while (!cv_.wait_for(l, std::chrono::milliseconds(c.reaper_interval_ms),
                               [this] { return stop_; })) {
            try {  // a failed round is retried next time; the thread must not end
              auto r = store->ReapSources(c.heartbeat_timeout_s * 1000, c.gc_timeout_s * 1000,
                                          model_express::p2p::SOURCE_STATUS_STALE);
              if (r.ok() && (r->first || r->second)) {
                spdlog::info("sources: {} marked stale, {} removed", r->first, r->second);
              }
              manager->EvictIfNeeded();
            } catch (const std::exception& e) {
              spdlog::error("reaper: {}", e.what());
            }
          }
        }) {}
  ~Reaper() {
    {
      std::lock_guard<std::mutex> l(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

// One line per mirror request: what was asked, the answer, how much and how long. The
// path is as sent without its query (signed URLs and cursors stay out of the log), escaped
// and bounded; the Authorization header is never looked at here.
void LogAccess(const AccessRecord& a) {
  std::string path = EscapeControl(a.path.substr(0, 512));
  if (a.path.size() > 512) path += "...";
  // Probes come every few seconds from every kubelet: logged at debug unless they fail.
  bool probe = a.path == "/healthz" || a.path == "/readyz";
  auto level = a.status >= 500 ? spdlog::level::warn
               : probe         ? spdlog::level::debug
                               : spdlog::level::info;
  std::vector<LogField> fields = {
      {"method", a.method},      {"path", path},
      {"status", a.status},      {"bytes", a.body_bytes},
      {"duration_s", a.seconds}, {"complete", a.complete ? "yes" : "no"},
      {"peer", a.peer}};
  if (!a.note.empty()) fields.emplace_back("error", a.note);
  LogEvent(level, "http", fields);
}

bool ListensEverywhere(const std::string& host) {
  return host.empty() || host == "0.0.0.0" || host == "::" || host == "[::]";
}

}  // namespace

int ServerMain(int argc, char** argv) {
  // Streaming allocates and frees megabyte-sized buffers per message (gRPC serialization):
  // keep them in the heap instead of fresh mmaps, which cost a page fault per 4 KiB.
  mallopt(M_MMAP_THRESHOLD, 64 << 20);
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
  // Every client connection is a descriptor: take the hard limit, not the soft 1024.
  if (rlimit nofile{};
      ::getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
    nofile.rlim_cur = nofile.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &nofile);
  }
  bool validate_only = false;
  auto loaded = LoadServerConfig(argc, argv, &validate_only);
  if (!loaded.ok()) {
    std::fprintf(stderr, "error: %s\n", loaded.status().message().c_str());
    return 2;
  }
  ServerConfig config = std::move(*loaded);
  InitLogging(config.log_level, config.log_format == "json" ? LogFormat::kJson : LogFormat::kText,
              /*env_overrides=*/false);
  if (validate_only) {
    if (Status st = CheckPortsFree(config); !st.ok()) {
      std::fprintf(stderr, "error: %s\n", st.message().c_str());
      return 2;
    }
    std::printf("configuration OK: %s\n", DescribeConfig(config).c_str());
    return 0;
  }
  if (ListensEverywhere(config.host) && config.auth_token.empty() && config.tls_cert.empty()) {
    spdlog::warn(
        "listening on every interface ({}) with no auth token and no TLS: anyone who can reach "
        "these ports can use this server (and the repos its HF token reads) and sees traffic in "
        "clear; set --auth-token-file and --tls-cert/--tls-key, or --host 127.0.0.1",
        config.host.empty() ? "0.0.0.0" : config.host);
  }
  if (Status st = MakeDirs(config.hub.cache_dir); !st.ok()) {
    spdlog::error("{}", st.message());
    return 1;
  }
  auto store = registry::OpenStore(config.store);
  if (!store.ok()) {
    spdlog::error("metadata store: {}", store.status().message());
    return 1;
  }
  // Block the stop signals in every thread; the main thread waits for them below.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  Metrics metrics;
  ModelManager manager(config, store->get(), &metrics);
  manager.RefreshCacheGauges();
  HealthServiceImpl health;
  ApiServiceImpl api(config, &metrics);
  ModelServiceImpl models(&manager, &metrics);
  P2pServiceImpl p2p(config, store->get(), &metrics);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  // gRPC sets SO_REUSEPORT by default, so a second server on the same port would start
  // and share (steal) connections: a port in use must be an error instead.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  // Workers ping every few seconds (client keepalive) so a dead connection is noticed
  // quickly, also while they wait on a long EnsureModelDownloaded: accept those pings.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 4000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  int grpc_port = 0;
  builder.AddListeningPort(config.host + ":" + std::to_string(config.port), Credentials(config),
                           &grpc_port);
  builder.SetMaxSendMessageSize(static_cast<int>(config.max_message_bytes));
  builder.SetMaxReceiveMessageSize(static_cast<int>(config.max_message_bytes));
  builder.RegisterService(&health);
  builder.RegisterService(&api);
  builder.RegisterService(&models);
  builder.RegisterService(&p2p);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || grpc_port == 0) {
    Status why = CheckPortsFree(config);
    spdlog::error("cannot listen for gRPC on {}:{}: {}", config.host, config.port,
                  why.ok() ? "the address cannot be bound" : why.message());
    return 1;
  }
  server->GetHealthCheckService()->SetServingStatus(true);

  Mirror mirror(&manager, &metrics);
  Readiness readiness(config.hub.cache_dir, config.store.backend, store->get());
  std::unique_ptr<HttpServer> mirror_http, metrics_http;
  if (config.mirror_port > 0) {
    HttpServerOptions options;
    options.access_log = LogAccess;
    mirror_http = std::make_unique<HttpServer>(
        config.host, config.mirror_port,
        [&](const HttpRequest& r) {
          if (auto health = HealthEndpoint(r, &readiness)) return *health;
          return mirror.Handle(r);
        },
        options);
    if (Status st = mirror_http->Start(); !st.ok()) {
      spdlog::error("HF mirror: {}", st.message());
      return 1;
    }
  }
  if (config.metrics_port > 0) {
    metrics_http =
        std::make_unique<HttpServer>(config.host, config.metrics_port, [&](const HttpRequest& r) {
          if (auto health = HealthEndpoint(r, &readiness)) return *health;
          if (r.path != "/metrics")
            return HttpResponse::Text(404, "try /metrics, /healthz, /readyz\n");
          return HttpResponse::Text(200, metrics.Render(), "text/plain; version=0.0.4");
        });
    if (Status st = metrics_http->Start(); !st.ok()) {
      spdlog::error("metrics: {}", st.message());
      return 1;
    }
  }
  Reaper reaper(config, store->get(), &manager);
  spdlog::info("mx-server listening: {}", DescribeConfig(config));

  int sig = 0;
  sigwait(&stop_signals, &sig);
  spdlog::info("signal {}: shutting down", sig);
  // Downloads can take hours: cancel them (temp files stay for the next run to resume,
  // claims are handed back to other replicas) so the handlers below return within about
  // a second; calls still running after the deadline are cancelled by gRPC.
  manager.CancelDownloads();
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(3));
  if (mirror_http) mirror_http->Stop();
  if (metrics_http) metrics_http->Stop();
  return 0;
}

}  // namespace mx::server
