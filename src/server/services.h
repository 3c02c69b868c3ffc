// The gRPC services of mx-server, one class per proto service; handlers are thin and call
// ModelManager / MetadataStore. Every RPC except health checks requires the bearer token
// when one is configured.
//
// Hostile input (any pod can reach the server, auth is off by default):
// - Every revision is checked (hub::ValidateRevision) before anything else: INVALID_ARGUMENT.
// - Error messages are bounded (kMaxErrorBytes), carry no control characters, echo client
//   strings only truncated (ClientText), and never hold the cache's absolute path.
// - StreamModelFiles chunks are at least kMinChunkBytes and below the message limit; a
//   request outside is adjusted and the adjustment announced in initial metadata.
// - EnsureModelDownloaded callers waiting for another's download leave when their call is
//   cancelled or its deadline passes; the download itself goes on for the others.
// - PublishMetadata limits (INVALID_ARGUMENT when exceeded): worker_id, the identity's
//   model_name and every other identity string <= kMaxIdBytes; extra_parameters <=
//   kMaxExtraParameters entries, keys <= kMaxExtraKeyBytes, values <= kMaxExtraValueBytes;
//   the serialized WorkerMetadata <= kMaxWorkerBytes (room for the tensor manifest of a
//   large model). At most kMaxSourcesPerId worker_ids per mx_source_id and kMaxSources in
//   all (RESOURCE_EXHAUSTED beyond; sources expire by heartbeat as before).
// - Ownership: a worker_id names one process incarnation (a restart publishes a new one),
//   so a record belongs to the peer host that first published it: re-publishing (the
//   heartbeat) from that host replaces it, a publish of the same (mx_source_id, worker_id)
//   from another host is refused with PERMISSION_DENIED. The bearer token, when set, is
//   one shared secret and so proves nothing about which worker calls; clients behind one
//   NAT or proxy share a host and are not told apart.
// - ListSources pages at the store: it asks for at most min(limit, kMaxListSources)
//   records (kMaxListScan when min_training_step filters after the store) and never loads
//   worker blobs.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <string_view>

#include "modelexpress/api.grpc.pb.h"
#include "modelexpress/health.grpc.pb.h"
#include "modelexpress/model.grpc.pb.h"
#include "modelexpress/p2p.grpc.pb.h"
#include "registry/registry.h"
#include "server/access.h"
#include "server/model_manager.h"

namespace mx::server {

inline constexpr size_t kMaxEchoBytes = 128;
inline constexpr uint64_t kMinChunkBytes = 64 << 10;
inline constexpr size_t kMaxIdBytes = 256;
inline constexpr int kMaxExtraParameters = 64;
inline constexpr size_t kMaxExtraKeyBytes = 128;
inline constexpr size_t kMaxExtraValueBytes = 1024;
inline constexpr size_t kMaxWorkerBytes = 4 << 20;
inline constexpr uint32_t kMaxSourcesPerId = 4096;
inline constexpr uint32_t kMaxSources = 65536;
inline constexpr uint32_t kMaxListSources = 4096;
inline constexpr uint32_t kMaxListScan = 8192;

// A client-supplied string fit for an error message: at most kMaxEchoBytes (then "..."),
// control characters replaced by '?'.
std::string ClientText(std::string_view text);

// OK when the request is within the PublishMetadata limits above.
Status ValidatePublish(const model_express::p2p::PublishMetadataRequest& request);

// The host part of a gRPC peer URI ("ipv4:10.0.0.5:41234" -> "ipv4:10.0.0.5"): the owner
// of the sources that peer publishes.
std::string PeerHost(const std::string& peer);

// OK when no token is configured or the call carries "authorization: Bearer <token>"
// (compared in constant time, server/http_parse.h).
grpc::Status CheckAuth(const grpc::ServerContext* context, const ServerConfig& config,
                       Metrics* metrics);

// For calls that read a repo: the access policy of server/access.h, the same as the
// mirror's (anonymous callers get public repos only under --gated-repos authenticated).
grpc::Status CheckRepoAccess(const grpc::ServerContext* context, AccessPolicy* access,
                             Metrics* metrics, const std::string& repo_id,
                             const std::string& revision);

class HealthServiceImpl final : public model_express::health::HealthService::Service {
 public:
  grpc::Status GetHealth(grpc::ServerContext*, const model_express::health::HealthRequest*,
                         model_express::health::HealthResponse* response) override;

 private:
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

class ApiServiceImpl final : public model_express::api::ApiService::Service {
 public:
  ApiServiceImpl(const ServerConfig& config, Metrics* metrics)
      : config_(config), metrics_(metrics) {}
  grpc::Status SendRequest(grpc::ServerContext*, const model_express::api::ApiRequest*,
                           model_express::api::ApiResponse*) override;

 private:
  const ServerConfig& config_;
  Metrics* metrics_;
};

class ModelServiceImpl final : public model_express::model::ModelService::Service {
 public:
  ModelServiceImpl(ModelManager* manager, Metrics* metrics)
      : manager_(manager), metrics_(metrics), access_(manager->config()) {}
  grpc::Status EnsureModelDownloaded(
      grpc::ServerContext*, const model_express::model::ModelDownloadRequest*,
      grpc::ServerWriter<model_express::model::ModelStatusUpdate>*) override;
  grpc::Status StreamModelFiles(grpc::ServerContext*,
                                const model_express::model::ModelFilesRequest*,
                                grpc::ServerWriter<model_express::model::FileChunk>*) override;
  grpc::Status ListModelFiles(grpc::ServerContext*, const model_express::model::ModelFilesRequest*,
                              model_express::model::ModelFileList*) override;
  grpc::Status DeleteModel(grpc::ServerContext*, const model_express::model::DeleteModelRequest*,
                           model_express::model::DeleteModelResponse*) override;

 private:
  Result<std::vector<LocalFile>> SelectFiles(const model_express::model::ModelFilesRequest& request,
                                             std::string* commit);
  ModelManager* manager_;
  Metrics* metrics_;
  AccessPolicy access_;
};

class P2pServiceImpl final : public model_express::p2p::P2pService::Service {
 public:
  P2pServiceImpl(const ServerConfig& config, registry::MetadataStore* store, Metrics* metrics)
      : config_(config), store_(store), metrics_(metrics) {}
  grpc::Status PublishMetadata(grpc::ServerContext*,
                               const model_express::p2p::PublishMetadataRequest*,
                               model_express::p2p::PublishMetadataResponse*) override;
  grpc::Status ListSources(grpc::ServerContext*, const model_express::p2p::ListSourcesRequest*,
                           model_express::p2p::ListSourcesResponse*) override;
  grpc::Status GetMetadata(grpc::ServerContext*, const model_express::p2p::GetMetadataRequest*,
                           model_express::p2p::GetMetadataResponse*) override;
  grpc::Status UpdateStatus(grpc::ServerContext*, const model_express::p2p::UpdateStatusRequest*,
                            model_express::p2p::UpdateStatusResponse*) override;

 private:
  const ServerConfig& config_;
  registry::MetadataStore* store_;
  Metrics* metrics_;
};

// Maps an mx Status to the gRPC status a client should see.
grpc::Status ToGrpc(const Status& status);
// The same, with the message made safe to send: `cache_dir` (as configured and resolved)
// replaced by "<cache>", control characters replaced, at most kMaxErrorBytes.
grpc::Status ToGrpc(const Status& status, const std::string& cache_dir);

}  // namespace mx::server
