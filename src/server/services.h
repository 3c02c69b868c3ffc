// The gRPC services of mx-server, one class per proto service; handlers are thin and call
// ModelManager / MetadataStore. Every RPC except health checks requires the bearer token
// when one is configured.
#pragma once

#include <chrono>
#include <memory>

#include "modelexpress/api.grpc.pb.h"
#include "modelexpress/health.grpc.pb.h"
#include "modelexpress/model.grpc.pb.h"
#include "modelexpress/p2p.grpc.pb.h"
#include "registry/registry.h"
#include "server/model_manager.h"

namespace mx::server {

// OK when no token is configured or the call carries "authorization: Bearer <token>".
grpc::Status CheckAuth(const grpc::ServerContext* context, const ServerConfig& config,
                       Metrics* metrics);

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
      : manager_(manager), metrics_(metrics) {}
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

}  // namespace mx::server
