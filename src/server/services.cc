#include "server/services.h"

#include <fcntl.h>
#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>
#include <unistd.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "common/fs.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/text.h"
#include "hub/cache.h"
#include "server/http_parse.h"
#include "server/object_models.h"
#include "server/source_id.h"

namespace mx::server {

namespace mm = model_express::model;
namespace p2p = model_express::p2p;

grpc::Status ToGrpc(const Status& st) {
  using grpc::StatusCode;
  StatusCode code = StatusCode::UNKNOWN;
  switch (st.code()) {
    case mx::StatusCode::kOk:
      return grpc::Status::OK;
    case mx::StatusCode::kInvalidArgument:
      code = StatusCode::INVALID_ARGUMENT;
      break;
    case mx::StatusCode::kNotFound:
      code = StatusCode::NOT_FOUND;
      break;
    case mx::StatusCode::kPermissionDenied:
      code = StatusCode::PERMISSION_DENIED;
      break;
    case mx::StatusCode::kUnauthenticated:
      code = StatusCode::UNAUTHENTICATED;
      break;
    case mx::StatusCode::kUnavailable:
      code = StatusCode::UNAVAILABLE;
      break;
    case mx::StatusCode::kDataLoss:
      code = StatusCode::DATA_LOSS;
      break;
    case mx::StatusCode::kResourceExhausted:
      code = StatusCode::RESOURCE_EXHAUSTED;
      break;
    case mx::StatusCode::kFailedPrecondition:
      code = StatusCode::FAILED_PRECONDITION;
      break;
    case mx::StatusCode::kAlreadyExists:
      code = StatusCode::ALREADY_EXISTS;
      break;
    case mx::StatusCode::kUnimplemented:
      code = StatusCode::UNIMPLEMENTED;
      break;
    case mx::StatusCode::kCancelled:
      code = StatusCode::CANCELLED;
      break;
    default:
      code = StatusCode::INTERNAL;
  }
  return grpc::Status(code, st.message());
}

std::string ClientText(std::string_view text) { return Printable(text, kMaxEchoBytes); }

grpc::Status ToGrpc(const Status& st, const std::string& cache_dir) {
  if (st.ok()) return grpc::Status::OK;
  grpc::Status g = ToGrpc(st);
  std::string caller = CallerMessage(st, cache_dir);
  // The caller's text leaves out paths and the operator's advice; the log keeps both.
  if (caller != st.message()) {
    spdlog::info("gRPC error for the caller: {}", Printable(st.message(), 2048));
  }
  return grpc::Status(g.error_code(), caller);
}

std::string PeerHost(const std::string& peer) {
  // "ipv4:1.2.3.4:port", "ipv6:[::1]:port", "unix:/path": drop the port when there is one.
  if (peer.rfind("ipv4:", 0) == 0 || peer.rfind("ipv6:", 0) == 0) {
    size_t colon = peer.rfind(':');
    size_t bracket = peer.rfind(']');
    if (colon != std::string::npos && colon > 4 &&
        (bracket == std::string::npos || colon > bracket)) {
      return peer.substr(0, colon);
    }
  }
  return peer;
}

Status ValidatePublish(const p2p::PublishMetadataRequest& req) {
  auto too_long = [](const std::string& what, size_t limit) {
    return Status::InvalidArgument(what + " is longer than " + std::to_string(limit) + " bytes");
  };
  if (req.worker_id().size() > kMaxIdBytes) return too_long("worker_id", kMaxIdBytes);
  const p2p::SourceIdentity& id = req.identity();
  // Every plain string of the identity (model_name, dtype, versions, ...), present and future.
  const auto* desc = id.GetDescriptor();
  const auto* refl = id.GetReflection();
  for (int i = 0; i < desc->field_count(); ++i) {
    const auto* fd = desc->field(i);
    if (fd->is_repeated() || fd->cpp_type() != google::protobuf::FieldDescriptor::CPPTYPE_STRING)
      continue;
    std::string scratch;
    if (refl->GetStringReference(id, fd, &scratch).size() > kMaxIdBytes)
      return too_long("identity." + fd->name(), kMaxIdBytes);
  }
  if (id.extra_parameters_size() > kMaxExtraParameters) {
    return Status::InvalidArgument("identity.extra_parameters has more than " +
                                   std::to_string(kMaxExtraParameters) + " entries");
  }
  for (const auto& [k, v] : id.extra_parameters()) {
    if (k.size() > kMaxExtraKeyBytes) return too_long("an extra_parameters key", kMaxExtraKeyBytes);
    if (v.size() > kMaxExtraValueBytes)
      return too_long("extra_parameters['" + ClientText(k) + "']", kMaxExtraValueBytes);
  }
  if (req.worker().accelerator().size() > kMaxIdBytes)
    return too_long("worker.accelerator", kMaxIdBytes);
  if (req.worker().ByteSizeLong() > kMaxWorkerBytes)
    return too_long("the serialized worker metadata", kMaxWorkerBytes);
  return Status::OK();
}

namespace {

std::string AuthorizationOf(const grpc::ServerContext* context) {
  const auto& md = context->client_metadata();
  auto it = md.find("authorization");
  return it == md.end() ? std::string() : std::string(it->second.data(), it->second.size());
}

grpc::Status Unauthenticated(Metrics* metrics) {
  ++metrics->grpc_auth_failures;
  return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                      "missing or wrong bearer token (send 'authorization: Bearer <token>')");
}

}  // namespace

grpc::Status CheckAuth(const grpc::ServerContext* context, const ServerConfig& config,
                       Metrics* metrics) {
  if (config.auth_token.empty()) return grpc::Status::OK;
  if (BearerTokenMatches(AuthorizationOf(context), config.auth_token)) return grpc::Status::OK;
  return Unauthenticated(metrics);
}

grpc::Status CheckRepoAccess(const grpc::ServerContext* context, AccessPolicy* access,
                             Metrics* metrics, const std::string& repo_id,
                             const std::string& revision) {
  auto caller = access->Classify(AuthorizationOf(context));
  if (caller == AccessPolicy::Caller::kRejected) return Unauthenticated(metrics);
  if (caller == AccessPolicy::Caller::kAuthenticated || !access->RestrictsAnonymous()) {
    return grpc::Status::OK;
  }
  // Anonymous under the gated policy: checked against upstream, with valid names only.
  Status st = hub::ValidateRepoId(repo_id);
  if (st.ok()) st = hub::ValidateRevision(revision.empty() ? "main" : revision);
  if (st.ok()) st = access->CheckRepo(caller, repo_id, revision.empty() ? "main" : revision);
  return st.ok() ? grpc::Status::OK : ToGrpc(st, "");
}

namespace {

// Access to a model of any provider. S3/GCS models are read with the server's own cloud
// identity and upstream cannot say whether one is public: under the gated policy an
// anonymous caller gets none of them.
grpc::Status CheckModelAccess(const grpc::ServerContext* context, AccessPolicy* access,
                              Metrics* metrics, int provider, const std::string& model,
                              const std::string& revision) {
  if (!IsObjectModel(provider, model)) {
    return CheckRepoAccess(context, access, metrics, model, revision);
  }
  auto caller = access->Classify(AuthorizationOf(context));
  if (caller == AccessPolicy::Caller::kRejected) return Unauthenticated(metrics);
  if (caller == AccessPolicy::Caller::kAnonymous && access->RestrictsAnonymous()) {
    return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                        "S3/GCS models are served to authenticated callers only on this server "
                        "(send 'authorization: Bearer <token>')");
  }
  return grpc::Status::OK;
}

}  // namespace

// The edge of every RPC: whatever slips through (bad_alloc, a thread that could not be
// started) becomes a status for this call instead of ending the process.
template <typename Body>
grpc::Status Guard(const char* rpc, Body&& body) {
  try {
    return body();
  } catch (const std::bad_alloc&) {
    spdlog::error("{}: out of memory", rpc);
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "the server is out of memory");
  } catch (const std::system_error& e) {
    spdlog::error("{}: {}", rpc, e.what());
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "the server is out of resources");
  } catch (const std::exception& e) {
    spdlog::error("{}: {}", rpc, e.what());
    return grpc::Status(grpc::StatusCode::INTERNAL, "internal error");
  } catch (...) {
    spdlog::error("{}: unknown exception", rpc);
    return grpc::Status(grpc::StatusCode::INTERNAL, "internal error");
  }
}

#define MX_REQUIRE_AUTH(ctx, config, metrics)                   \
  do {                                                          \
    grpc::Status _auth = CheckAuth((ctx), (config), (metrics)); \
    if (!_auth.ok()) return _auth;                              \
  } while (0)

grpc::Status HealthServiceImpl::GetHealth(grpc::ServerContext*,
                                          const model_express::health::HealthRequest*,
                                          model_express::health::HealthResponse* response) {
  return Guard("GetHealth", [&]() -> grpc::Status {
    response->set_version("0.1.0");
    response->set_status("ok");
    response->set_uptime(static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - start_)
            .count()));
    return grpc::Status::OK;
  });
}

grpc::Status ApiServiceImpl::SendRequest(grpc::ServerContext* ctx,
                                         const model_express::api::ApiRequest* req,
                                         model_express::api::ApiResponse* resp) {
  return Guard("SendRequest", [&]() -> grpc::Status {
    MX_REQUIRE_AUTH(ctx, config_, metrics_);
    if (req->action() == "ping") {
      resp->set_success(true);
      resp->set_data(R"({"message":"pong"})");
    } else {
      resp->set_success(false);
      resp->set_error("unknown action '" + ClientText(req->action()) + "' (supported: ping)");
    }
    return grpc::Status::OK;
  });
}

// --- ModelService -----------------------------------------------------------------------

grpc::Status ModelServiceImpl::EnsureModelDownloaded(
    grpc::ServerContext* ctx, const mm::ModelDownloadRequest* req,
    grpc::ServerWriter<mm::ModelStatusUpdate>* writer) {
  return Guard("EnsureModelDownloaded", [&]() -> grpc::Status {
    if (grpc::Status a =
            CheckModelAccess(ctx, &access_, metrics_, req->provider(), req->model_name(),
                             req->has_revision() ? req->revision() : "");
        !a.ok()) {
      return a;
    }
    const std::string& cache_dir = manager_->config().hub.cache_dir;
    registry::ModelKey key{static_cast<int>(req->provider()), req->model_name(),
                           req->has_revision() ? req->revision() : "", req->ignore_weights()};
    // Before any claim or path: the revision names a ref file (and is sent upstream).
    if (!key.revision.empty()) {
      if (Status v = hub::ValidateRevision(key.revision); !v.ok()) return ToGrpc(v, cache_dir);
    }
    // A waiter leaves when its call is cancelled or its deadline passes (gRPC reports both
    // through IsCancelled; the deadline is checked too, in case the report comes late).
    auto cancelled = [ctx] {
      return ctx->IsCancelled() || ctx->deadline() <= std::chrono::system_clock::now();
    };
    Status st = manager_->Ensure(
        key,
        [&](const StatusUpdate& u) {
          mm::ModelStatusUpdate out;
          out.set_model_name(req->model_name());
          out.set_provider(req->provider());
          out.set_status(static_cast<mm::ModelStatus>(u.state));
          if (!u.message.empty()) {
            // The registry keeps an outcome's text, not its code: a 404 is told as one.
            StatusCode code = u.message.find("HTTP 404") != std::string::npos
                                  ? StatusCode::kNotFound
                                  : StatusCode::kInternal;
            out.set_message(u.state == registry::ModelState::kError
                                ? CallerMessage(code, u.message, cache_dir)
                                : SafeMessage(u.message, cache_dir));
          }
          if (!u.resolved_revision.empty()) out.set_resolved_revision(u.resolved_revision);
          writer->Write(out);  // a client that left still gets its download finished
        },
        cancelled);
    return ToGrpc(st, cache_dir);
  });
}

Result<std::vector<LocalFile>> ModelServiceImpl::SelectFiles(const mm::ModelFilesRequest& req,
                                                             std::string* commit) {
  std::optional<std::string> revision;
  if (req.has_revision() && !req.revision().empty()) {
    // Up front: an unchecked revision would name a path (and answer NOT_FOUND vs
    // DATA_LOSS for files outside the cache).
    MX_RETURN_IF_ERROR(hub::ValidateRevision(req.revision()));
    revision = req.revision();
  }
  MX_ASSIGN_OR_RETURN(LocalSnapshot snap, manager_->Snapshot(req.provider(), req.model_name(),
                                                             revision, req.ignore_weights()));
  *commit = snap.commit;
  if (req.file_selector().paths().empty()) return snap.files;
  std::vector<LocalFile> out;
  for (const auto& path : req.file_selector().paths()) {
    if (!IsSafeRelativePath(path)) {
      return Status::InvalidArgument("refusing path '" + ClientText(path) +
                                     "': must be relative, without '..'");
    }
    auto it = std::find_if(snap.files.begin(), snap.files.end(),
                           [&](const LocalFile& f) { return f.relative_path == path; });
    if (it == snap.files.end()) {
      return Status::NotFound("'" + ClientText(path) + "' is not in the snapshot of " +
                              ClientText(req.model_name()) + " (or points outside the cache)");
    }
    out.push_back(*it);
  }
  return out;
}

grpc::Status ModelServiceImpl::StreamModelFiles(grpc::ServerContext* ctx,
                                                const mm::ModelFilesRequest* req,
                                                grpc::ServerWriter<mm::FileChunk>* writer) {
  return Guard("StreamModelFiles", [&]() -> grpc::Status {
    if (grpc::Status a =
            CheckModelAccess(ctx, &access_, metrics_, req->provider(), req->model_name(),
                             req->has_revision() ? req->revision() : "");
        !a.ok()) {
      return a;
    }
    const ServerConfig& config = manager_->config();
    // Pinned before the files are chosen, so no DeleteModel can land in between.
    manager_->Pin(req->model_name());
    ++metrics_->active_streams;
    ++metrics_->streams_total;
    struct Leave {
      ModelServiceImpl* self;
      const std::string& model;
      ~Leave() {
        --self->metrics_->active_streams;
        self->manager_->Unpin(model);
      }
    } leave{this, req->model_name()};
    std::string commit;
    auto files = SelectFiles(*req, &commit);
    if (!files.ok()) return ToGrpc(files.status(), config.hub.cache_dir);
    uint64_t limit = config.max_message_bytes - (64 << 10);  // room for the message's other fields
    uint64_t chunk = req->chunk_size() ? req->chunk_size() : config.default_chunk_bytes;
    // Adjustments are announced in the stream's initial metadata rather than failing the call.
    if (chunk > limit) {
      ctx->AddInitialMetadata("x-mx-chunk-size-clamped-from", std::to_string(chunk));
      chunk = limit;
    }
    if (chunk < kMinChunkBytes) {
      // One message per few bytes would cost the server a syscall and a write per byte.
      ctx->AddInitialMetadata("x-mx-chunk-size-raised-from", std::to_string(chunk));
      chunk = kMinChunkBytes;
    }
    ctx->AddInitialMetadata("x-mx-chunk-size", std::to_string(chunk));

    // One completion line per stream, with its fields (for --log-format json).
    auto started = std::chrono::steady_clock::now();
    uint64_t sent = 0;
    size_t files_done = 0;
    auto log_end = [&](const char* what) {
      LogEvent(spdlog::level::info, what,
               {{"model", ClientText(req->model_name())},
                {"commit", commit},
                {"files", files_done},
                {"bytes", sent},
                {"duration_s",
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count()},
                {"peer", ctx->peer()}});
    };
    // One message reused for every chunk: its data buffer keeps its capacity, so streaming
    // a model costs no allocation (and no page faults) per chunk.
    mm::FileChunk out;
    bool first = true;
    for (size_t i = 0; i < files->size(); ++i) {
      const LocalFile& f = (*files)[i];
      int fd = ::open(f.absolute_path.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) {
        return ToGrpc(Status::FromErrno(errno, "open " + f.relative_path), config.hub.cache_dir);
      }
      ::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
      out.set_relative_path(f.relative_path);
      out.set_total_size(f.size);
      uint64_t offset = 0;
      // A resuming client names the bytes it already has (an mx extension field).
      if (auto it = req->start_offsets().find(f.relative_path);
          it != req->start_offsets().end() && it->second <= f.size) {
        offset = it->second;
      }
      do {
        size_t want = static_cast<size_t>(std::min<uint64_t>(chunk, f.size - offset));
        std::string* data = out.mutable_data();
        data->resize(want);
        size_t got = 0;
        while (got < want) {
          ssize_t n = ::pread(fd, data->data() + got, want - got, static_cast<off_t>(offset + got));
          if (n < 0 && errno == EINTR) continue;
          if (n <= 0) {
            ::close(fd);
            return grpc::Status(grpc::StatusCode::DATA_LOSS,
                                f.relative_path + " shrank while streaming");
          }
          got += static_cast<size_t>(n);
        }
        out.set_offset(offset);
        offset += want;
        out.set_is_last_chunk(offset == f.size);
        out.set_is_last_file(i + 1 == files->size() && offset == f.size);
        if (first) {
          out.set_commit_hash(commit);
        } else {
          out.clear_commit_hash();
        }
        first = false;
        // Write blocks while the client's flow-control window is full: a slow client slows
        // us down instead of making us buffer the model.
        if (!writer->Write(out)) {
          ::close(fd);
          log_end("stream cancelled: the client went away");
          return grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
        }
        metrics_->bytes_streamed += want;
        sent += want;
      } while (offset < f.size);
      ::close(fd);
      ++files_done;
    }
    log_end("stream done");
    return grpc::Status::OK;
  });
}

grpc::Status ModelServiceImpl::ListModelFiles(grpc::ServerContext* ctx,
                                              const mm::ModelFilesRequest* req,
                                              mm::ModelFileList* resp) {
  return Guard("ListModelFiles", [&]() -> grpc::Status {
    if (grpc::Status a =
            CheckModelAccess(ctx, &access_, metrics_, req->provider(), req->model_name(),
                             req->has_revision() ? req->revision() : "");
        !a.ok()) {
      return a;
    }
    std::string commit;
    auto files = SelectFiles(*req, &commit);
    if (!files.ok()) return ToGrpc(files.status(), manager_->config().hub.cache_dir);
    resp->set_model_name(req->model_name());
    uint64_t total = 0;
    for (const auto& f : *files) {
      auto* info = resp->add_files();
      info->set_relative_path(f.relative_path);
      info->set_size(f.size);
      // The snapshot entry resolves into blobs/<hash>: tell the client what to check.
      std::string blob = std::filesystem::path(f.absolute_path).filename().string();
      if (IsLowerHex(blob, 40) || IsLowerHex(blob, 64)) info->set_blob_hash(blob);
      total += f.size;
    }
    resp->set_total_size(total);
    return grpc::Status::OK;
  });
}

grpc::Status ModelServiceImpl::DeleteModel(grpc::ServerContext* ctx,
                                           const mm::DeleteModelRequest* req,
                                           mm::DeleteModelResponse* resp) {
  return Guard("DeleteModel", [&]() -> grpc::Status {
    MX_REQUIRE_AUTH(ctx, manager_->config(), metrics_);
    Status st = manager_->Delete(req->provider(), req->model_name());
    resp->set_success(st.ok());
    resp->set_message(st.ok() ? "deleted " + ClientText(req->model_name())
                              : CallerMessage(st, manager_->config().hub.cache_dir));
    return grpc::Status::OK;
  });
}

// --- P2pService -------------------------------------------------------------------------

namespace {

std::optional<uint64_t> ExtraNumber(const p2p::SourceIdentity& id, const char* key) {
  auto it = id.extra_parameters().find(key);
  if (it == id.extra_parameters().end()) return std::nullopt;
  try {
    return std::stoull(it->second);
  } catch (...) {
    return std::nullopt;
  }
}

}  // namespace

grpc::Status P2pServiceImpl::PublishMetadata(grpc::ServerContext* ctx,
                                             const p2p::PublishMetadataRequest* req,
                                             p2p::PublishMetadataResponse* resp) {
  return Guard("PublishMetadata", [&]() -> grpc::Status {
    MX_REQUIRE_AUTH(ctx, config_, metrics_);
    auto reject = [&](const char* why) {
      resp->set_success(false);
      resp->set_message(why);
      return grpc::Status::OK;
    };
    if (!req->has_identity()) return reject("identity is required");
    if (req->worker_id().empty()) return reject("worker_id is required");
    if (!req->has_worker()) return reject("worker is required");
    if (Status v = ValidatePublish(*req); !v.ok()) return ToGrpc(v);
    std::string id = ComputeSourceId(req->identity());
    registry::SourceRecord rec;
    rec.mx_source_id = id;
    rec.worker_id = req->worker_id();
    rec.model_name = req->identity().model_name();
    rec.worker_rank = req->worker().worker_rank();
    rec.status = req->worker().status() == p2p::SOURCE_STATUS_UNKNOWN
                     ? p2p::SOURCE_STATUS_INITIALIZING
                     : req->worker().status();
    rec.updated_at_ms = registry::NowMs();
    rec.accelerator = req->worker().accelerator();
    p2p::WorkerMetadata worker = req->worker();
    worker.set_status(static_cast<p2p::SourceStatus>(rec.status));
    worker.set_updated_at(rec.updated_at_ms);
    worker.SerializeToString(&rec.worker);
    req->identity().SerializeToString(&rec.identity);
    rec.owner = PeerHost(ctx->peer());
    Status st = store_->PutSource(rec, registry::SourceLimits{kMaxSourcesPerId, kMaxSources});
    if (!st.ok()) return ToGrpc(st, config_.hub.cache_dir);
    resp->set_success(true);
    resp->set_message("published");
    resp->set_mx_source_id(id);
    resp->set_worker_id(req->worker_id());
    return grpc::Status::OK;
  });
}

grpc::Status P2pServiceImpl::ListSources(grpc::ServerContext* ctx,
                                         const p2p::ListSourcesRequest* req,
                                         p2p::ListSourcesResponse* resp) {
  return Guard("ListSources", [&]() -> grpc::Status {
    MX_REQUIRE_AUTH(ctx, config_, metrics_);
    registry::SourceFilter f;
    if (req->has_identity()) f.mx_source_id = ComputeSourceId(req->identity());
    if (req->has_status_filter()) f.status = req->status_filter();
    if (req->has_model_name_filter()) f.model_name = req->model_name_filter();
    if (req->has_worker_rank_filter()) f.worker_rank = req->worker_rank_filter();
    if (req->has_min_updated_at()) f.min_updated_at_ms = req->min_updated_at();
    // Page at the store: min_training_step is filtered here, so then scan a bounded window.
    uint32_t want =
        req->has_limit() ? std::min<uint32_t>(req->limit(), kMaxListSources) : kMaxListSources;
    f.limit = req->has_min_training_step() ? kMaxListScan : want;
    if (req->has_status_filter() && req->status_filter() == p2p::SOURCE_STATUS_READY) {
      // Never hand out a source that missed its heartbeats, even before the reaper ran.
      int64_t fresh = registry::NowMs() - config_.heartbeat_timeout_s * 1000;
      f.min_updated_at_ms = std::max(f.min_updated_at_ms.value_or(0), fresh);
    }
    auto sources = store_->ListSources(f);
    if (!sources.ok()) return ToGrpc(sources.status(), config_.hub.cache_dir);
    for (const auto& s : *sources) {
      if (resp->instances_size() >= static_cast<int>(want)) break;
      p2p::SourceIdentity identity;
      identity.ParseFromString(s.identity);
      auto step = ExtraNumber(identity, "training_step");
      if (req->has_min_training_step() && (!step || *step < req->min_training_step())) continue;
      if (req->has_limit() && resp->instances_size() >= static_cast<int>(req->limit())) break;
      auto* ref = resp->add_instances();
      ref->set_mx_source_id(s.mx_source_id);
      ref->set_worker_id(s.worker_id);
      ref->set_model_name(s.model_name);
      ref->set_worker_rank(s.worker_rank);
      ref->set_accelerator(s.accelerator);
      ref->set_updated_at(s.updated_at_ms);
      if (step) ref->set_training_step(*step);
      auto layout = identity.extra_parameters().find("layout_signature");
      if (layout != identity.extra_parameters().end()) ref->set_layout_signature(layout->second);
    }
    return grpc::Status::OK;
  });
}

grpc::Status P2pServiceImpl::GetMetadata(grpc::ServerContext* ctx,
                                         const p2p::GetMetadataRequest* req,
                                         p2p::GetMetadataResponse* resp) {
  return Guard("GetMetadata", [&]() -> grpc::Status {
    MX_REQUIRE_AUTH(ctx, config_, metrics_);
    if (req->mx_source_id().size() > kMaxIdBytes || req->worker_id().size() > kMaxIdBytes) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "mx_source_id and worker_id are at most 256 bytes");
    }
    auto s = store_->GetSource(req->mx_source_id(), req->worker_id());
    if (!s.ok()) return ToGrpc(s.status(), config_.hub.cache_dir);
    resp->set_mx_source_id(req->mx_source_id());
    resp->set_worker_id(req->worker_id());
    if (!*s) {
      resp->set_found(false);
      return grpc::Status::OK;
    }
    resp->set_found(true);
    p2p::WorkerMetadata worker;
    worker.ParseFromString((*s)->worker);
    worker.set_status(static_cast<p2p::SourceStatus>((*s)->status));
    worker.set_updated_at((*s)->updated_at_ms);
    *resp->mutable_worker() = worker;
    resp->mutable_identity()->ParseFromString((*s)->identity);
    return grpc::Status::OK;
  });
}

grpc::Status P2pServiceImpl::UpdateStatus(grpc::ServerContext* ctx,
                                          const p2p::UpdateStatusRequest* req,
                                          p2p::UpdateStatusResponse* resp) {
  return Guard("UpdateStatus", [&]() -> grpc::Status {
    MX_REQUIRE_AUTH(ctx, config_, metrics_);
    if (req->mx_source_id().size() > kMaxIdBytes || req->worker_id().size() > kMaxIdBytes) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "mx_source_id and worker_id are at most 256 bytes");
    }
    std::vector<std::string> workers;
    if (!req->worker_id().empty()) {
      workers.push_back(req->worker_id());
    } else {
      // Older clients name the worker by rank only.
      registry::SourceFilter f;
      f.mx_source_id = req->mx_source_id();
      f.worker_rank = req->worker_rank();
      f.limit = kMaxSourcesPerId;
      auto found = store_->ListSources(f);
      if (!found.ok()) return ToGrpc(found.status(), config_.hub.cache_dir);
      for (const auto& s : *found) workers.push_back(s.worker_id);
    }
    if (workers.empty()) {
      resp->set_success(false);
      resp->set_message("no source " + ClientText(req->mx_source_id()) + " with worker rank " +
                        std::to_string(req->worker_rank()));
      return grpc::Status::OK;
    }
    for (const auto& w : workers) {
      Status st = store_->UpdateSourceStatus(req->mx_source_id(), w, req->status());
      if (!st.ok()) {
        resp->set_success(false);
        resp->set_message(SafeMessage(st.message(), config_.hub.cache_dir));
        return grpc::Status::OK;
      }
    }
    resp->set_success(true);
    resp->set_message("updated");
    return grpc::Status::OK;
  });
}

}  // namespace mx::server
