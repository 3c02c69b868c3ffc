// The worker's side of mx-server: one gRPC client for ModelService, HealthService,
// ApiService and P2pService, with the connection rules a worker needs.
//
// Contract:
// - Address: ResolveEndpoint picks --endpoint, else MODEL_EXPRESS_URL (what Dynamo's
//   operator injects), else MODEL_EXPRESS_ENDPOINT (modelexpress-cli's), else
//   http://localhost:8001. "host:port" and "http://host:port" are plaintext,
//   "https://host:port" is TLS (system roots, or the PEM file --tls-ca / MX_TLS_CA).
// - Connect(): waits at most `connect_timeout_ms` (3 s) for the channel; an absent server
//   is Unavailable within that bound, never gRPC's default 20 s.
// - Keepalive pings every few seconds (also with no call in flight), so a peer that
//   vanished without closing the connection fails the call within seconds.
// - Bearer token: read from the file MX_AUTH_TOKEN_PATH (default
//   /var/run/secrets/tokens/modelexpress, a projected ServiceAccount token), re-read when
//   its mtime changes or after MX_AUTH_TOKEN_TTL_SECONDS (60); sent as
//   "authorization: Bearer <token>" only when the file exists, so one client works with
//   servers with and without auth. The token never appears in a log or an error.
// - Thread-safe: one MxClient may serve calls from several threads.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdint>
#include <ctime>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "common/status.h"
#include "modelexpress/api.grpc.pb.h"
#include "modelexpress/health.grpc.pb.h"
#include "modelexpress/model.grpc.pb.h"
#include "modelexpress/p2p.grpc.pb.h"

namespace mx::client {

constexpr char kDefaultEndpoint[] = "http://localhost:8001";
constexpr char kDefaultTokenPath[] = "/var/run/secrets/tokens/modelexpress";

struct Endpoint {
  std::string target;  // what grpc::CreateChannel gets: "host:port"
  bool tls = false;
  std::string source;  // where it came from: "--endpoint", "MODEL_EXPRESS_URL", ...
};

// Parses "host:port", "http://host:port[/]" or "https://host:port[/]" (a bare host gets
// port 80 / 443 by scheme, 8001 without one). InvalidArgument for other schemes, a path,
// whitespace or control characters, an empty host or a bad port.
Result<Endpoint> ParseEndpoint(const std::string& text);
// The precedence above; `flag` empty means not given.
Result<Endpoint> ResolveEndpoint(const std::string& flag);

// The bearer token file, re-read when it changes. Thread-safe.
class TokenFile {
 public:
  // ttl_seconds <= 0 re-reads on every call.
  TokenFile(std::string path, int ttl_seconds);
  // From MX_AUTH_TOKEN_PATH / MX_AUTH_TOKEN_TTL_SECONDS.
  static std::unique_ptr<TokenFile> FromEnvironment();
  // The token (trimmed), or nullopt when the file does not exist or is empty. A file that
  // exists but cannot be read (or is over 64 KiB) is an error: sending nothing would turn
  // a misconfiguration into a confusing UNAUTHENTICATED.
  Result<std::optional<std::string>> Get();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int ttl_seconds_;
  std::mutex mu_;
  bool loaded_ = false;
  std::optional<std::string> token_;
  struct timespec mtime_ {};
  std::chrono::steady_clock::time_point read_at_;
};

struct ClientOptions {
  std::string endpoint;  // --endpoint; empty = environment / default
  std::string tls_ca;    // --tls-ca; empty = MX_TLS_CA, else the system roots
  int connect_timeout_ms = 3000;
  int keepalive_ms = 5000;          // ping interval
  int keepalive_timeout_ms = 3000;  // a ping unanswered this long closes the connection
  int max_message_bytes = 64 << 20;
};

// A gRPC status as an mx Status, with the server's text made printable.
Status FromGrpc(const grpc::Status& status, const std::string& what);

class MxClient {
 public:
  static Result<std::unique_ptr<MxClient>> Create(const ClientOptions& options);

  const Endpoint& endpoint() const { return endpoint_; }
  // Waits (at most the connect timeout) for the channel to be ready.
  Status Connect();
  // A context with the bearer token (when there is one) and a deadline; timeout_ms <= 0
  // sets none (streams that last as long as the model takes).
  Result<std::unique_ptr<grpc::ClientContext>> NewContext(int timeout_ms);

  model_express::model::ModelService::Stub& models() { return *models_; }
  model_express::health::HealthService::Stub& health() { return *health_; }
  model_express::api::ApiService::Stub& api() { return *api_; }
  model_express::p2p::P2pService::Stub& p2p() { return *p2p_; }

  // Convenience calls (unary, deadline `timeout_ms`).
  Result<model_express::health::HealthResponse> GetHealth(int timeout_ms);
  Result<model_express::api::ApiResponse> SendApi(const std::string& action,
                                                  const std::optional<std::string>& payload,
                                                  int timeout_ms);
  Result<model_express::model::ModelFileList> ListFiles(
      const model_express::model::ModelFilesRequest& request, int timeout_ms);
  Result<model_express::model::DeleteModelResponse> Delete(const std::string& model, int provider,
                                                           int timeout_ms);
  // EnsureModelDownloaded: calls on_update for every status update; returns the final one
  // (DOWNLOADED, or an error Status for ERROR / a failed call).
  Result<model_express::model::ModelStatusUpdate> Ensure(
      const model_express::model::ModelDownloadRequest& request,
      const std::function<void(const model_express::model::ModelStatusUpdate&)>& on_update);

 private:
  MxClient() = default;
  Endpoint endpoint_;
  int connect_timeout_ms_ = 3000;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<TokenFile> token_;
  std::unique_ptr<model_express::model::ModelService::Stub> models_;
  std::unique_ptr<model_express::health::HealthService::Stub> health_;
  std::unique_ptr<model_express::api::ApiService::Stub> api_;
  std::unique_ptr<model_express::p2p::P2pService::Stub> p2p_;
};

}  // namespace mx::client
