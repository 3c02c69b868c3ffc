#include "transfer/p2p.h"

#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <thread>

#include "common/env.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/text.h"
#include "common/version.h"
#include "safetensors/dtype.h"
#include "transfer/crc32c.h"

namespace mx::transfer {

namespace p2p = model_express::p2p;

namespace {

constexpr int kCallMs = 5000;  // every control-plane call
constexpr size_t kMaxManifestTensors = 1 << 20;
constexpr size_t kMaxNameBytes = 1024;
constexpr uint64_t kMaxModelBytes = 1ull << 42;  // 4 TiB
constexpr size_t kMaxShapeRank = 16;

std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// The dtype as the manifest spells it: torch's name when torch has one.
std::string WireDType(safetensors::DType d) {
  std::string_view torch = safetensors::TorchDTypeName(d);
  return std::string(torch.empty() ? safetensors::DTypeName(d) : torch);
}

std::optional<safetensors::DType> DTypeFromWire(const std::string& text) {
  if (auto d = safetensors::ParseDType(text)) return d;
  for (int i = 0; i <= static_cast<int>(safetensors::DType::kF6_E3M2); ++i) {
    auto d = static_cast<safetensors::DType>(i);
    if (safetensors::TorchDTypeName(d) == text) return d;
  }
  return std::nullopt;
}

std::string RandomHex(int bytes) {
  std::random_device rd;
  std::string out;
  static const char* kHex = "0123456789abcdef";
  for (int i = 0; i < bytes; ++i) {
    unsigned v = rd() & 0xff;
    out += kHex[v >> 4];
    out += kHex[v & 15];
  }
  return out;
}

uint64_t Fnv1a(std::string_view s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  // Final mix so nearby strings spread (rendezvous ordering compares whole values).
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  return h;
}

bool PrintableText(const std::string& s, size_t max) {
  if (s.empty() || s.size() > max || !IsValidUtf8(s)) return false;
  for (unsigned char c : s) {
    if (c < 0x20 || c == 0x7f) return false;
  }
  return true;
}

// A host:port the worker's gRPC endpoint may be: printable, bounded, no scheme.
bool PlausibleHostPort(const std::string& s) {
  if (s.empty() || s.size() > 300) return false;
  for (char c : s) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == ':' ||
          c == '[' || c == ']')) {
      return false;
    }
  }
  return s.find(':') != std::string::npos;
}

}  // namespace

// --- identity ---------------------------------------------------------------------------

p2p::SourceIdentity Identity::ToProto() const {
  p2p::SourceIdentity id;
  id.set_mx_version(Version());
  id.set_mx_source_type(static_cast<p2p::MxSourceType>(source_type));
  id.set_backend_framework_version(engine_version);
  id.set_gpu_arch(gpu_arch);
  id.set_model_name(model);
  id.set_tensor_parallel_size(tp_size);
  id.set_pipeline_parallel_size(pp_size);
  id.set_expert_parallel_size(ep_size);
  id.set_dtype(dtype);
  id.set_quantization(quantization);
  id.set_revision(revision);
  return id;
}

std::string FirstIdentityDifference(const Identity& want, const p2p::SourceIdentity& source,
                                    uint32_t source_rank, const std::string& source_accelerator) {
  auto quote = [](const std::string& s) { return "'" + Printable(s, 64) + "'"; };
  auto text = [&](const char* field, const std::string& have, const std::string& wanted,
                  bool any_when_empty) -> std::string {
    if (any_when_empty && wanted.empty()) return "";
    if (Lower(have) == Lower(wanted)) return "";
    return std::string(field) + " is " + quote(have) + ", wanted " + quote(wanted);
  };
  auto number = [](const char* field, uint64_t have, uint64_t wanted) -> std::string {
    if (have == wanted) return "";
    return std::string(field) + " is " + std::to_string(have) + ", wanted " +
           std::to_string(wanted);
  };
  for (std::string d : {
           text("model", source.model_name(), want.model, false),
           number("source type", source.mx_source_type(), want.source_type),
           text("revision", source.revision(), want.revision, true),
           number("tensor_parallel_size", source.tensor_parallel_size(), want.tp_size),
           number("pipeline_parallel_size", source.pipeline_parallel_size(), want.pp_size),
           number("expert_parallel_size", source.expert_parallel_size(), want.ep_size),
           number("rank", source_rank, want.rank),
           text("dtype", source.dtype(), want.dtype, true),
           text("quantization", source.quantization(), want.quantization, true),
           text("accelerator", source_accelerator, want.accelerator, true),
           text("engine version", source.backend_framework_version(), want.engine_version, true),
           text("gpu_arch", source.gpu_arch(), want.gpu_arch, true),
       }) {
    if (!d.empty()) return d;
  }
  return "";
}

Result<std::string> ChosenTransport() {
  std::string t = Lower(GetEnv("MX_P2P_TRANSPORT").value_or("auto"));
  if (t.empty() || t == "auto") return std::string("auto");
  if (t == "tcp" || t == "cma") return t;
  if (t == "ucx") {
    if (!UcxBuilt()) {
      return Status::InvalidArgument(
          "MX_P2P_TRANSPORT=ucx: this build has no UCX backend (install libucx-dev, rebuild)");
    }
    return t;
  }
  return Status::InvalidArgument("MX_P2P_TRANSPORT must be auto, tcp, cma or ucx, not '" +
                                 Printable(t, 32) + "'");
}

// --- source side ------------------------------------------------------------------------

Result<WorkerOptions> WorkerOptions::FromEnvironment() {
  WorkerOptions o;
  if (auto h = GetEnv("MX_WORKER_HOST"); h && !h->empty()) o.host = *h;
  if (auto p = GetEnv("MX_WORKER_GRPC_PORT")) {
    MX_ASSIGN_OR_RETURN(int64_t port, ParseIntInRange("MX_WORKER_GRPC_PORT", *p, 0, 65535));
    o.grpc_port = static_cast<int>(port);
  }
  if (auto s = GetEnv("MX_HEARTBEAT_INTERVAL_SECS")) {
    MX_ASSIGN_OR_RETURN(int64_t secs, ParseIntInRange("MX_HEARTBEAT_INTERVAL_SECS", *s, 1, 3600));
    o.heartbeat_s = static_cast<int>(secs);
  }
  if (auto r = GetEnv("MX_P2P_SERVE_MAX_RATE")) {
    MX_ASSIGN_OR_RETURN(o.max_rate,
                        ParseByteSizeInRange("MX_P2P_SERVE_MAX_RATE", *r, 0, 1ull << 40));
  }
  MX_ASSIGN_OR_RETURN(o.token, P2pTokenFromEnvironment());
  return o;
}

class WorkerServiceImpl final : public p2p::WorkerService::Service {
 public:
  WorkerServiceImpl(p2p::GetTensorManifestResponse manifest, const ArtifactDir* artifact)
      : manifest_(std::move(manifest)), artifact_(artifact) {}

  // The id arrives with the first publish, after the server is up: until then every call
  // answers NOT_FOUND (nobody can know the source yet anyway).
  void SetSourceId(const std::string& id) {
    std::lock_guard<std::mutex> l(mu_);
    manifest_.set_mx_source_id(id);
  }

  grpc::Status GetTensorManifest(grpc::ServerContext*, const p2p::GetTensorManifestRequest* req,
                                 p2p::GetTensorManifestResponse* resp) override {
    std::lock_guard<std::mutex> l(mu_);
    if (manifest_.mx_source_id().empty() || req->mx_source_id() != manifest_.mx_source_id()) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "this worker serves another source");
    }
    *resp = manifest_;
    return grpc::Status::OK;
  }

  // Artifacts: one chunk per file (chunk_index == file_index); the reader pulls each file
  // from the address PrepareArtifactChunk gives, in pieces, over the transfer engine.
  grpc::Status GetArtifactManifestHeader(grpc::ServerContext*,
                                         const p2p::GetArtifactManifestHeaderRequest* req,
                                         p2p::GetArtifactManifestHeaderResponse* resp) override {
    if (grpc::Status st = Check(req->mx_source_id(), req->artifact_id()); !st.ok()) return st;
    resp->set_mx_source_id(req->mx_source_id());  // == ours: Check passed
    resp->set_artifact_id(artifact_->artifact_id);
    resp->set_manifest_version(1);
    uint64_t total = 0;
    for (size_t i = 0; i < artifact_->files.size(); ++i) {
      const ArtifactFile& f = artifact_->files[i];
      auto* mf = resp->add_files();
      mf->set_file_index(static_cast<uint32_t>(i));
      mf->set_path(f.path);
      mf->set_size(f.size);
      mf->set_checksum(CrcHex(f.crc));
      total += f.size;
    }
    resp->set_total_size(total);
    resp->set_file_count(static_cast<uint32_t>(artifact_->files.size()));
    resp->set_chunk_count(static_cast<uint32_t>(artifact_->files.size()));
    {
      std::lock_guard<std::mutex> l(mu_);
      resp->set_metadata_endpoint(manifest_.metadata_endpoint());
      resp->set_agent_name(manifest_.agent_name());
    }
    return grpc::Status::OK;
  }

  grpc::Status PrepareArtifactChunk(grpc::ServerContext*,
                                    const p2p::PrepareArtifactChunkRequest* req,
                                    p2p::PrepareArtifactChunkResponse* resp) override {
    if (grpc::Status st = Check(req->mx_source_id(), req->artifact_id()); !st.ok()) return st;
    if (req->chunk_index() >= artifact_->files.size()) {
      return grpc::Status(grpc::StatusCode::OUT_OF_RANGE, "no such chunk");
    }
    const ArtifactFile& f = artifact_->files[req->chunk_index()];
    resp->set_mx_source_id(req->mx_source_id());  // == ours: Check passed
    resp->set_artifact_id(artifact_->artifact_id);
    resp->set_lease_id("static");  // the memory lives as long as the worker
    auto* c = resp->mutable_chunk();
    c->set_chunk_index(req->chunk_index());
    c->set_file_index(req->chunk_index());
    c->set_length(f.size);
    c->set_checksum(CrcHex(f.crc));
    resp->mutable_source()->set_addr(reinterpret_cast<uint64_t>(f.data));
    resp->mutable_source()->set_length(f.size);
    return grpc::Status::OK;
  }

  grpc::Status ReleaseArtifactChunk(grpc::ServerContext*,
                                    const p2p::ReleaseArtifactChunkRequest* req,
                                    p2p::ReleaseArtifactChunkResponse* resp) override {
    if (grpc::Status st = Check(req->mx_source_id(), req->artifact_id()); !st.ok()) return st;
    resp->set_mx_source_id(req->mx_source_id());  // == ours: Check passed
    resp->set_artifact_id(artifact_->artifact_id);
    return grpc::Status::OK;
  }

  static std::string CrcHex(uint32_t crc) {
    char buf[9];
    std::snprintf(buf, sizeof(buf), "%08x", crc);
    return buf;
  }

 private:
  grpc::Status Check(const std::string& source, const std::string& artifact) const {
    std::lock_guard<std::mutex> l(mu_);
    if (artifact_ == nullptr || manifest_.mx_source_id().empty() ||
        source != manifest_.mx_source_id() || artifact != artifact_->artifact_id) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "this worker serves another artifact");
    }
    return grpc::Status::OK;
  }

  mutable std::mutex mu_;
  p2p::GetTensorManifestResponse manifest_;  // guarded by mu_ (the id is set once)
  const ArtifactDir* artifact_;
};

Result<std::unique_ptr<Worker>> Worker::Start(client::MxClient* client, const Identity& identity,
                                              std::vector<LocalTensor> tensors,
                                              RegionRegistry* regions, const WorkerOptions& options,
                                              p2p::SourceStatus status,
                                              const ArtifactDir* artifact) {
  if (client == nullptr) return Status::FailedPrecondition("no mx-server configured");
  std::unique_ptr<Worker> w(new Worker());
  w->client_ = client;
  w->identity_ = identity;
  w->options_ = options;
  w->tensors_ = std::move(tensors);
  w->artifact_ = artifact;
  w->status_ = status;
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  w->worker_id_ = Printable(host, 64) + "-" + std::to_string(getpid()) + "-" + RandomHex(4);

  ServerOptions so;
  so.host = options.host;
  so.max_rate = options.max_rate;
  so.token = options.token;
  MX_ASSIGN_OR_RETURN(w->transfer_, StartTcpServer(regions, so));
  // A loaded source checksums each chunk once, in the background on half the cores (a
  // chunk asked before then is checksummed on demand), so peers wait only for the copy; a
  // receiver remembers the CRCs it verified instead. Not before publishing: for a large
  // model on a GPU that pass takes seconds the engine would otherwise wait for.
  if (status == p2p::SOURCE_STATUS_READY) {
    int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency() / 2));
    w->precompute_ = std::thread([regions, threads, cancel = &w->cancel_precompute_] {
      regions->PrecomputeChecksums(kDefaultChunkBytes, threads, cancel);
    });
  }

  // The manifest is fixed once the memory is: build it once.
  p2p::GetTensorManifestResponse manifest;
  for (const LocalTensor& t : w->tensors_) {
    p2p::TensorDescriptor* d = manifest.add_tensors();
    d->set_name(t.name);
    d->set_addr(reinterpret_cast<uint64_t>(t.data));
    d->set_size(t.size);
    d->set_device_id(t.device >= 0 ? static_cast<uint32_t>(t.device) : 0);
    d->set_mx_on_device(t.device >= 0);
    d->set_dtype(WireDType(t.dtype));
    for (uint64_t s : t.shape) d->add_mx_shape(s);
    d->set_mx_file(t.file);
  }
  // mx_source_id is what the server computes; ask it by publishing (below) and patch it in.
  int port = options.grpc_port == 0 ? 0 : options.grpc_port + options.device_id;
  grpc::ServerBuilder builder;
  int selected = 0;
  builder.AddListeningPort(options.host + ":" + std::to_string(port),
                           grpc::InsecureServerCredentials(), &selected);
  builder.SetMaxSendMessageSize(256 << 20);
  manifest.set_metadata_endpoint(w->transfer_->endpoint());
  manifest.set_agent_name(w->worker_id_);
  manifest.set_worker_rank(identity.rank);
  manifest.set_accelerator(identity.accelerator);
  manifest.set_worker_id(w->worker_id_);
  w->service_ = std::make_unique<WorkerServiceImpl>(std::move(manifest), artifact);
  builder.RegisterService(w->service_.get());
  w->grpc_ = builder.BuildAndStart();
  if (w->grpc_ == nullptr || selected == 0) {
    w->transfer_->Stop();
    return Status::Unavailable("cannot listen for WorkerService on " + options.host + ":" +
                               std::to_string(port) + " (MX_WORKER_GRPC_PORT)");
  }
  // Listening first, then published once with the real endpoint: a target never sees an
  // endpoint that does not answer yet.
  w->grpc_endpoint_ = options.host + ":" + std::to_string(selected);
  MX_RETURN_IF_ERROR(w->Publish());
  w->service_->SetSourceId(w->mx_source_id_);
  w->heartbeat_ = std::thread([wp = w.get()] { wp->HeartbeatLoop(); });
  return w;
}

Worker::~Worker() { Stop(); }

Status Worker::Publish() {
  p2p::PublishMetadataRequest req;
  *req.mutable_identity() = identity_.ToProto();
  req.set_worker_id(worker_id_);
  p2p::WorkerMetadata* w = req.mutable_worker();
  w->set_worker_rank(identity_.rank);
  w->set_status(static_cast<p2p::SourceStatus>(status_.load()));
  w->set_metadata_endpoint(transfer_->endpoint());
  w->set_agent_name(worker_id_);
  w->set_worker_grpc_endpoint(grpc_endpoint_);
  w->set_accelerator(identity_.accelerator);
  if (artifact_ != nullptr) {
    auto* a = w->mutable_artifact_source();
    a->set_artifact_id(artifact_->artifact_id);
    uint64_t total = 0;
    for (const ArtifactFile& f : artifact_->files) total += f.size;
    a->set_total_size(total);
    a->set_file_count(static_cast<uint32_t>(artifact_->files.size()));
    a->set_chunk_count(static_cast<uint32_t>(artifact_->files.size()));
  } else {
    w->mutable_tensor_source();  // the tensors come from GetTensorManifest
  }
  MX_ASSIGN_OR_RETURN(auto ctx, client_->NewContext(kCallMs));
  p2p::PublishMetadataResponse resp;
  MX_RETURN_IF_ERROR(
      client::FromGrpc(client_->p2p().PublishMetadata(ctx.get(), req, &resp), "PublishMetadata"));
  if (!resp.success()) {
    return Status::FailedPrecondition("PublishMetadata refused: " + Printable(resp.message(), 200));
  }
  mx_source_id_ = resp.mx_source_id();
  return Status::OK();
}

Status Worker::SetStatus(p2p::SourceStatus status) {
  status_ = status;
  p2p::UpdateStatusRequest req;
  req.set_mx_source_id(mx_source_id_);
  req.set_worker_rank(identity_.rank);
  req.set_status(status);
  req.set_worker_id(worker_id_);
  MX_ASSIGN_OR_RETURN(auto ctx, client_->NewContext(kCallMs));
  p2p::UpdateStatusResponse resp;
  MX_RETURN_IF_ERROR(
      client::FromGrpc(client_->p2p().UpdateStatus(ctx.get(), req, &resp), "UpdateStatus"));
  if (!resp.success()) {
    // The server forgot us (reaped while unreachable): publish again.
    return Publish();
  }
  return Status::OK();
}

void Worker::HeartbeatLoop() {
  std::unique_lock<std::mutex> l(mu_);
  while (!cv_.wait_for(l, std::chrono::seconds(options_.heartbeat_s), [&] { return stopping_; })) {
    l.unlock();
    Status st = SetStatus(static_cast<p2p::SourceStatus>(status_.load()));
    if (!st.ok()) spdlog::warn("p2p heartbeat: {}", st.message());
    l.lock();
  }
}

void Worker::Stop() {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  cv_.notify_all();
  cancel_precompute_ = true;
  if (precompute_.joinable()) precompute_.join();
  if (heartbeat_.joinable()) heartbeat_.join();
  if (!mx_source_id_.empty()) {
    Status st = SetStatus(p2p::SOURCE_STATUS_STALE);
    if (!st.ok()) spdlog::warn("p2p: could not mark the source STALE: {}", st.message());
  }
  if (grpc_) grpc_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  if (transfer_) transfer_->Stop();
}

// --- target side ------------------------------------------------------------------------

namespace {

struct Candidate {
  std::string mx_source_id, worker_id, grpc_endpoint;
  std::string artifact_id;
  bool partial = false;
  int slot = -1;
  std::vector<LocalTensor> manifest;  // data = the source's address
  std::string transfer_endpoint;
};

// Validates a manifest from the network into tensors (data = remote address).
Result<std::vector<LocalTensor>> ParseManifest(const p2p::GetTensorManifestResponse& m) {
  if (static_cast<size_t>(m.tensors_size()) > kMaxManifestTensors) {
    return Status::InvalidArgument("manifest lists too many tensors");
  }
  std::vector<LocalTensor> out;
  std::set<std::string> names;
  uint64_t total = 0;
  for (const auto& d : m.tensors()) {
    LocalTensor t;
    if (!PrintableText(d.name(), kMaxNameBytes)) {
      return Status::InvalidArgument("manifest has a tensor without a printable name");
    }
    t.name = d.name();
    if (!names.insert(t.name).second) {
      return Status::InvalidArgument("manifest lists tensor " + t.name + " twice");
    }
    auto dtype = DTypeFromWire(d.dtype());
    if (!dtype) return Status::InvalidArgument("tensor " + t.name + ": unknown dtype");
    t.dtype = *dtype;
    if (static_cast<size_t>(d.mx_shape_size()) > kMaxShapeRank) {
      return Status::InvalidArgument("tensor " + t.name + ": shape has too many dimensions");
    }
    // Elements times bits, with overflow checks: the size must be what the shape says.
    unsigned __int128 bits = safetensors::DTypeBits(t.dtype);
    for (uint64_t s : d.mx_shape()) {
      bits *= s;
      if (bits > (static_cast<unsigned __int128>(kMaxModelBytes) << 3)) {
        return Status::InvalidArgument("tensor " + t.name + ": shape too large");
      }
      t.shape.push_back(s);
    }
    if (d.mx_shape_size() > 0 || d.size() > 0) {
      if ((bits + 7) / 8 != d.size()) {
        return Status::InvalidArgument("tensor " + t.name + ": size " + std::to_string(d.size()) +
                                       " does not match its shape and dtype");
      }
    }
    t.size = d.size();
    total += t.size;
    if (total > kMaxModelBytes) return Status::InvalidArgument("manifest larger than 4 TiB");
    if (d.mx_file().size() > kMaxNameBytes) {
      return Status::InvalidArgument("tensor " + t.name + ": file name too long");
    }
    t.file = d.mx_file();
    if (d.mx_on_device()) {
      if (d.device_id() > 1024) return Status::InvalidArgument("tensor " + t.name + ": bad device");
      t.device = static_cast<int>(d.device_id());
    }
    t.data = reinterpret_cast<char*>(d.addr());
    if (t.size > 0 && d.addr() == 0) return Status::InvalidArgument("tensor " + t.name + " at 0");
    out.push_back(std::move(t));
  }
  std::sort(out.begin(), out.end(),
            [](const LocalTensor& a, const LocalTensor& b) { return a.name < b.name; });
  return out;
}

std::string ShapeText(const std::vector<uint64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// Empty when `b` lists the same tensors as `a` (both sorted by name); else the first
// difference.
std::string FirstTensorDifference(const std::vector<LocalTensor>& a,
                                  const std::vector<LocalTensor>& b) {
  for (size_t i = 0; i < std::max(a.size(), b.size()); ++i) {
    if (i >= a.size()) return "extra tensor " + b[i].name;
    if (i >= b.size()) return "missing tensor " + a[i].name;
    if (a[i].name != b[i].name) {
      return "tensor " + std::min(a[i].name, b[i].name) + " is only on one side";
    }
    if (a[i].dtype != b[i].dtype) {
      return "tensor " + a[i].name + ": dtype " + std::string(safetensors::DTypeName(b[i].dtype)) +
             ", wanted " + std::string(safetensors::DTypeName(a[i].dtype));
    }
    if (a[i].shape != b[i].shape) {
      return "tensor " + a[i].name + ": shape " + ShapeText(b[i].shape) + ", wanted " +
             ShapeText(a[i].shape);
    }
    if (a[i].size != b[i].size) return "tensor " + a[i].name + ": size differs";
  }
  return "";
}

Result<p2p::GetTensorManifestResponse> FetchManifest(client::MxClient& client, const Candidate& c) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(256 << 20);
  auto channel =
      grpc::CreateCustomChannel(c.grpc_endpoint, grpc::InsecureChannelCredentials(), args);
  auto stub = p2p::WorkerService::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(kCallMs));
  p2p::GetTensorManifestRequest req;
  req.set_mx_source_id(c.mx_source_id);
  req.set_worker_id(c.worker_id);
  p2p::GetTensorManifestResponse resp;
  MX_RETURN_IF_ERROR(client::FromGrpc(stub->GetTensorManifest(&ctx, req, &resp),
                                      "GetTensorManifest from " + c.grpc_endpoint));
  return resp;
}

// Lists the sources of `want` with `status`, and how the rejected ones differ.
Status ListCandidates(client::MxClient& client, const PullRequest& request,
                      p2p::SourceStatus status, std::vector<Candidate>* out,
                      std::string* first_difference, size_t* listed) {
  p2p::ListSourcesRequest req;
  req.set_status_filter(status);
  req.set_model_name_filter(request.identity.model);
  req.set_limit(64);
  MX_ASSIGN_OR_RETURN(auto ctx, client.NewContext(kCallMs));
  p2p::ListSourcesResponse resp;
  MX_RETURN_IF_ERROR(
      client::FromGrpc(client.p2p().ListSources(ctx.get(), req, &resp), "ListSources"));
  for (const auto& ref : resp.instances()) {
    if (ref.worker_id() == request.self_id) continue;
    ++*listed;
    p2p::GetMetadataRequest mreq;
    mreq.set_mx_source_id(ref.mx_source_id());
    mreq.set_worker_id(ref.worker_id());
    MX_ASSIGN_OR_RETURN(auto mctx, client.NewContext(kCallMs));
    p2p::GetMetadataResponse meta;
    Status st = client::FromGrpc(client.p2p().GetMetadata(mctx.get(), mreq, &meta), "GetMetadata");
    if (!st.ok() || !meta.found()) continue;  // gone meanwhile
    std::string diff =
        FirstIdentityDifference(request.identity, meta.identity(), meta.worker().worker_rank(),
                                meta.worker().accelerator());
    if (!diff.empty()) {
      if (first_difference->empty()) {
        *first_difference = "source " + Printable(ref.worker_id(), 80) + ": " + diff;
      }
      continue;
    }
    if (!PlausibleHostPort(meta.worker().worker_grpc_endpoint())) continue;
    Candidate c;
    c.mx_source_id = ref.mx_source_id();
    c.worker_id = ref.worker_id();
    c.grpc_endpoint = meta.worker().worker_grpc_endpoint();
    c.artifact_id = meta.worker().artifact_source().artifact_id();
    c.partial = status != p2p::SOURCE_STATUS_READY;
    out->push_back(std::move(c));
  }
  return Status::OK();
}

void OrderCandidates(const PullRequest& request, std::vector<Candidate>* c) {
  std::string selector = request.selector;
  if (selector.empty()) selector = Lower(GetEnv("MX_P2P_SOURCE_SELECTOR").value_or("random"));
  if (selector == "rendezvous") {
    // Highest random weight: each target prefers a stable, different-per-target order, so
    // many targets spread over the sources and the same target keeps its choice.
    std::stable_sort(c->begin(), c->end(), [&](const Candidate& a, const Candidate& b) {
      return Fnv1a(request.self_id + "/" + a.worker_id) >
             Fnv1a(request.self_id + "/" + b.worker_id);
    });
  } else {
    std::shuffle(c->begin(), c->end(), std::mt19937_64(std::random_device{}()));
  }
  // Full sources before partial ones.
  std::stable_partition(c->begin(), c->end(), [](const Candidate& x) { return !x.partial; });
}

// Fetches the manifests of `candidates` (in order) until `max_sources` are usable: the first
// valid full one becomes the reference (when `reference` is empty); others must agree with it.
void AddUsable(client::MxClient& client, size_t max_sources, std::vector<Candidate>* candidates,
               std::vector<LocalTensor>* reference, std::vector<Candidate>* usable,
               std::string* problem) {
  for (Candidate& c : *candidates) {
    if (usable->size() >= max_sources) break;
    auto m = FetchManifest(client, c);
    Result<std::vector<LocalTensor>> parsed =
        m.ok() ? ParseManifest(*m) : Result<std::vector<LocalTensor>>(m.status());
    if (parsed.ok() && m->metadata_endpoint().rfind("tcp://", 0) != 0) {
      parsed = Status::InvalidArgument("its transfer endpoint is not tcp://");
    }
    std::string why = parsed.ok() ? "" : parsed.status().message();
    if (parsed.ok() && !reference->empty()) why = FirstTensorDifference(*reference, *parsed);
    if (parsed.ok() && reference->empty() && c.partial) continue;  // never the reference
    if (!why.empty()) {
      spdlog::warn("p2p: skipping source {}: {}", Printable(c.worker_id, 80), why);
      if (problem->empty()) *problem = "source " + Printable(c.worker_id, 80) + ": " + why;
      continue;
    }
    if (reference->empty()) *reference = *parsed;
    c.manifest = std::move(*parsed);
    c.transfer_endpoint = m->metadata_endpoint();
    usable->push_back(std::move(c));
  }
}

}  // namespace

std::shared_ptr<void> MapHostMemory(size_t bytes) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return nullptr;
  madvise(p, bytes, MADV_HUGEPAGE);
  return std::shared_ptr<void>(p, [bytes](void* q) { munmap(q, bytes); });
}

Result<PulledModel> PullModel(client::MxClient& client, const PullRequest& request) {
  auto t0 = std::chrono::steady_clock::now();
  MX_ASSIGN_OR_RETURN(std::string transport, ChosenTransport());
  std::vector<Candidate> candidates;
  std::string difference;
  size_t listed = 0;
  MX_RETURN_IF_ERROR(
      ListCandidates(client, request, p2p::SOURCE_STATUS_READY, &candidates, &difference, &listed));
  if (listed == 0) {
    return Status::NotFound("no READY p2p source of " + Printable(request.identity.model, 200));
  }
  if (candidates.empty()) {
    return Status::FailedPrecondition("no p2p source matches: " + difference);
  }
  OrderCandidates(request, &candidates);

  std::vector<LocalTensor> reference;
  std::vector<Candidate> usable;
  std::string manifest_problem;
  AddUsable(client, request.max_sources, &candidates, &reference, &usable, &manifest_problem);
  if (usable.empty() || reference.empty()) {
    return Status::Unavailable("no usable p2p source" +
                               (manifest_problem.empty() ? "" : ": " + manifest_problem));
  }

  // Local memory: the caller's destination, or one mapping for all tensors.
  PulledModel out;
  out.transport = transport;
  std::vector<LocalTensor> local = reference;
  for (LocalTensor& t : local) t.device = request.destination ? request.destination_device : -1;
  if (request.destination) {
    for (LocalTensor& t : local) {
      safetensors::TensorInfo info{t.name, t.dtype, t.shape, 0, t.size};
      t.data = request.destination(t.file, info);
      if (t.data == nullptr && t.size > 0) {
        return Status::Internal("the destination has no memory for tensor " + t.name);
      }
    }
  } else {
    uint64_t total = 0;
    for (const LocalTensor& t : local) total += (t.size + 63) & ~63ull;
    size_t map_bytes = std::max<uint64_t>(total, 64);
    out.memory = MapHostMemory(map_bytes);
    if (out.memory == nullptr) return Status::FromErrno(errno, "allocating the model's memory");
    char* base = static_cast<char*>(out.memory.get());
    uint64_t off = 0;
    for (LocalTensor& t : local) {
      t.data = base + off;
      off += (t.size + 63) & ~63ull;
    }
  }
  PullOptions options = request.transfer;
  options.connect.transport = transport;
  if (options.connect.token.empty()) {
    MX_ASSIGN_OR_RETURN(options.connect.token, P2pTokenFromEnvironment());
  }
  if (request.before_pull) {
    MX_ASSIGN_OR_RETURN(std::string self_id, request.before_pull(local));
    // The receivers of this rollout: those that published (INITIALIZING) by now.
    std::this_thread::sleep_for(std::chrono::milliseconds(request.settle_ms));
    PullRequest peers_request = request;
    peers_request.self_id = self_id;
    std::vector<Candidate> receivers;
    std::string ignored;
    size_t count = 0;
    MX_RETURN_IF_ERROR(ListCandidates(client, peers_request, p2p::SOURCE_STATUS_INITIALIZING,
                                      &receivers, &ignored, &count));
    std::vector<LocalTensor> ref = reference;
    AddUsable(client, usable.size() + 256, &receivers, &ref, &usable, &ignored);
    // Slots in worker-id order, which every receiver computes alike.
    std::vector<std::string> ids{self_id};
    for (const Candidate& c : usable) {
      if (c.partial) ids.push_back(c.worker_id);
    }
    std::sort(ids.begin(), ids.end());
    options.swarm_slots = static_cast<int>(ids.size());
    options.self_slot = static_cast<int>(std::find(ids.begin(), ids.end(), self_id) - ids.begin());
    for (Candidate& c : usable) {
      if (c.partial) {
        c.slot = static_cast<int>(std::find(ids.begin(), ids.end(), c.worker_id) - ids.begin());
      }
    }
  }

  std::vector<PullItem> items;
  for (const LocalTensor& t : local) items.push_back({t.data, t.size, t.device});
  std::vector<PullPeer> peers;
  for (const Candidate& c : usable) {
    PullPeer p{c.worker_id, c.transfer_endpoint, {}, c.partial, c.slot};
    for (const LocalTensor& t : c.manifest) {
      p.remote_addr.push_back(reinterpret_cast<uint64_t>(t.data));
      p.device_memory = p.device_memory || t.device >= 0;
    }
    peers.push_back(std::move(p));
  }
  PullStats stats;
  Status st = Pull(items, peers, options, &stats);
  std::set<std::string> transports;
  for (const PeerStats& p : stats.peers) {
    if (p.bytes > 0) transports.insert(p.transport);
    if (p.bytes > 0) out.sources.push_back(p.name);
    if (p.failed) out.failed.push_back(p.name + ": " + p.error);
  }
  if (!st.ok()) return st;
  out.transport.clear();
  for (const std::string& t : transports) out.transport += (out.transport.empty() ? "" : "+") + t;
  out.tensors = std::move(local);
  out.bytes = stats.bytes;
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return out;
}

// --- loader chain step ------------------------------------------------------------------

namespace {

class P2pStrategy : public client::LoadStrategy {
 public:
  P2pStrategy(client::MxClient* client, Identity identity)
      : client_(client), identity_(std::move(identity)) {}

  std::string name() const override { return "p2p"; }

  std::string SkipReason(const client::LoadRequest& request) override {
    if (client_ == nullptr) return "no server configured";
    if (auto t = ChosenTransport(); !t.ok()) return t.status().message();
    // One cheap call: are there READY sources of this model at all?
    p2p::ListSourcesRequest req;
    req.set_status_filter(p2p::SOURCE_STATUS_READY);
    req.set_model_name_filter(request.model);
    req.set_limit(1);
    auto ctx = client_->NewContext(2000);
    if (!ctx.ok()) return ctx.status().message();
    p2p::ListSourcesResponse resp;
    Status st = client::FromGrpc(client_->p2p().ListSources(ctx->get(), req, &resp), "ListSources");
    if (!st.ok()) return "server unreachable for p2p: " + st.message();
    if (resp.instances_size() == 0) return "no READY p2p source of this model";
    return "";
  }

  Status Load(const client::LoadRequest& request, client::TensorSink& sink,
              std::string* path) override {
    PullRequest pr;
    pr.identity = identity_;
    pr.identity.model = request.model;
    if (!request.revision.empty() && request.revision != "main")
      pr.identity.revision = request.revision;
    pr.destination = request.destination;
    pr.transfer.deadline = std::chrono::steady_clock::now() + std::chrono::minutes(30);
    MX_ASSIGN_OR_RETURN(PulledModel m, PullModel(*client_, pr));
    auto hold = m.memory;
    for (const LocalTensor& t : m.tensors) {
      safetensors::TensorInfo info{t.name, t.dtype, t.shape, 0, t.size};
      streamer::Tensor tensor{t.file, info, 0, t.data};
      MX_RETURN_IF_ERROR(sink.Deliver(tensor, hold));
    }
    return Status::OK();
  }

 private:
  client::MxClient* client_;
  Identity identity_;
};

}  // namespace

std::unique_ptr<client::LoadStrategy> MakeP2pStrategy(client::MxClient* client, Identity identity) {
  return std::make_unique<P2pStrategy>(client, std::move(identity));
}

// --- artifacts --------------------------------------------------------------------------

namespace {

constexpr size_t kMaxArtifactFiles = 200000;
constexpr uint64_t kMaxArtifactBytes = 256ull << 30;
constexpr size_t kMaxPathBytes = 4096;

// A relative path that stays inside the directory: no absolute path, no empty, "." or ".."
// component, no control characters, valid UTF-8.
bool SafeRelativePath(const std::string& path) {
  if (!PrintableText(path, kMaxPathBytes) || path[0] == '/' ||
      path.find('\\') != std::string::npos) {
    return false;
  }
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string::npos) end = path.size();
    std::string part = path.substr(start, end - start);
    if (part.empty() || part == "." || part == "..") return false;
    start = end + 1;
  }
  return true;
}

Status WriteFile(const std::filesystem::path& path, const char* data, uint64_t size) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return Status::FromErrno(errno, "create " + path.string());
  uint64_t done = 0;
  while (done < size) {
    ssize_t n = ::write(fd, data + done, std::min<uint64_t>(size - done, 1 << 30));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int e = errno;
      ::close(fd);
      return Status::FromErrno(e, "write " + path.string());
    }
    done += static_cast<uint64_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0)
    return Status::FromErrno(errno, "sync " + path.string());
  return Status::OK();
}

}  // namespace

Result<int> ArtifactKind(const std::string& kind) {
  static const std::map<std::string, int> kinds = {
      {"lora", p2p::MX_SOURCE_TYPE_LORA},
      {"cuda-graph", p2p::MX_SOURCE_TYPE_CUDA_GRAPH},
      {"torch-compile", p2p::MX_SOURCE_TYPE_TORCH_COMPILE_CACHE},
      {"triton", p2p::MX_SOURCE_TYPE_TRITON_CACHE},
      {"deep-gemm", p2p::MX_SOURCE_TYPE_DEEP_GEMM_CACHE},
      {"tilelang", p2p::MX_SOURCE_TYPE_TILELANG_CACHE},
      {"cute-dsl", p2p::MX_SOURCE_TYPE_CUTE_DSL_CACHE},
      {"flashinfer", p2p::MX_SOURCE_TYPE_FLASHINFER_CACHE},
      {"tvm-ffi", p2p::MX_SOURCE_TYPE_TVM_FFI_CACHE},
  };
  auto it = kinds.find(Lower(kind));
  if (it == kinds.end()) {
    return Status::InvalidArgument(
        "--kind must be one of torch-compile, triton, cuda-graph, "
        "deep-gemm, tilelang, cute-dsl, flashinfer, tvm-ffi, lora");
  }
  return it->second;
}

Result<ArtifactDir> LoadArtifactDir(const std::string& dir,
                                    std::vector<std::unique_ptr<char[]>>* owned) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return Status::NotFound(dir + " is not a directory");
  ArtifactDir out;
  uint64_t total = 0;
  fs::recursive_directory_iterator it(dir, fs::directory_options::none, ec), end;
  if (ec) return Status::IoError("cannot list " + dir + ": " + ec.message());
  for (; it != end; it.increment(ec)) {
    if (ec) return Status::IoError("cannot list " + dir + ": " + ec.message());
    const fs::directory_entry& e = *it;
    if (e.is_symlink(ec)) {
      return Status::InvalidArgument(e.path().string() + " is a symbolic link (not served)");
    }
    if (e.is_directory(ec)) continue;
    if (!e.is_regular_file(ec)) {
      return Status::InvalidArgument(e.path().string() + " is not a regular file");
    }
    std::string rel = fs::relative(e.path(), dir, ec).generic_string();
    if (ec || !SafeRelativePath(rel)) return Status::InvalidArgument("unusable path " + rel);
    uint64_t size = e.file_size(ec);
    if (ec) return Status::IoError("cannot stat " + rel);
    total += size;
    if (out.files.size() >= kMaxArtifactFiles || total > kMaxArtifactBytes) {
      return Status::ResourceExhausted(dir + " is too large to serve");
    }
    ArtifactFile f;
    f.path = rel;
    f.size = size;
    if (size > 0) {
      owned->push_back(std::make_unique<char[]>(size));
      f.data = owned->back().get();
      std::ifstream in(e.path(), std::ios::binary);
      if (!in.read(f.data, static_cast<std::streamsize>(size))) {
        return Status::IoError("cannot read " + e.path().string());
      }
    }
    f.crc = Crc32c(0, f.data, size);
    out.files.push_back(std::move(f));
  }
  std::sort(out.files.begin(), out.files.end(),
            [](const ArtifactFile& a, const ArtifactFile& b) { return a.path < b.path; });
  std::string listing;
  for (const ArtifactFile& f : out.files) {
    listing += f.path + "\n" + std::to_string(f.size) + "\n" + std::to_string(f.crc) + "\n";
  }
  out.artifact_id = Sha256Hex(listing).substr(0, 16);
  return out;
}

namespace {

struct RemoteArtifact {
  Candidate source;
  std::vector<p2p::ArtifactManifestFile> files;
  std::vector<uint64_t> addrs;
};

Result<RemoteArtifact> FetchArtifact(const Candidate& c) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(256 << 20);
  auto stub = p2p::WorkerService::NewStub(
      grpc::CreateCustomChannel(c.grpc_endpoint, grpc::InsecureChannelCredentials(), args));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(kCallMs));
  p2p::GetArtifactManifestHeaderRequest req;
  req.set_mx_source_id(c.mx_source_id);
  req.set_artifact_id(c.artifact_id);
  p2p::GetArtifactManifestHeaderResponse head;
  MX_RETURN_IF_ERROR(client::FromGrpc(stub->GetArtifactManifestHeader(&ctx, req, &head),
                                      "GetArtifactManifestHeader from " + c.grpc_endpoint));
  if (static_cast<size_t>(head.files_size()) > kMaxArtifactFiles) {
    return Status::InvalidArgument("artifact lists too many files");
  }
  RemoteArtifact out;
  out.source = c;
  out.source.transfer_endpoint = head.metadata_endpoint();
  if (head.metadata_endpoint().rfind("tcp://", 0) != 0) {
    return Status::InvalidArgument("its transfer endpoint is not tcp://");
  }
  uint64_t total = 0;
  std::set<std::string> paths;
  for (int i = 0; i < head.files_size(); ++i) {
    const auto& f = head.files(i);
    if (f.file_index() != static_cast<uint32_t>(i) || !SafeRelativePath(f.path()) ||
        f.checksum().size() != 8 || !paths.insert(f.path()).second) {
      return Status::InvalidArgument("artifact manifest entry " + std::to_string(i) +
                                     " is unusable");
    }
    total += f.size();
    if (total > kMaxArtifactBytes) return Status::InvalidArgument("artifact too large");
    out.files.push_back(f);
  }
  for (const auto& f : out.files) {
    if (f.size() == 0) {
      out.addrs.push_back(0);
      continue;
    }
    grpc::ClientContext pctx;
    pctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(kCallMs));
    p2p::PrepareArtifactChunkRequest preq;
    preq.set_mx_source_id(c.mx_source_id);
    preq.set_artifact_id(c.artifact_id);
    preq.set_chunk_index(f.file_index());
    p2p::PrepareArtifactChunkResponse presp;
    MX_RETURN_IF_ERROR(
        client::FromGrpc(stub->PrepareArtifactChunk(&pctx, preq, &presp), "PrepareArtifactChunk"));
    if (presp.source().length() != f.size() || presp.source().addr() == 0) {
      return Status::InvalidArgument("chunk " + std::to_string(f.file_index()) +
                                     " has the wrong size");
    }
    out.addrs.push_back(presp.source().addr());
  }
  return out;
}

bool SameFiles(const RemoteArtifact& a, const RemoteArtifact& b) {
  if (a.files.size() != b.files.size()) return false;
  for (size_t i = 0; i < a.files.size(); ++i) {
    if (a.files[i].path() != b.files[i].path() || a.files[i].size() != b.files[i].size() ||
        a.files[i].checksum() != b.files[i].checksum()) {
      return false;
    }
  }
  return true;
}

}  // namespace

Result<PulledDir> PullArtifactDir(client::MxClient& client, const Identity& identity,
                                  const std::string& dest, const PullOptions& transfer) {
  namespace fs = std::filesystem;
  auto t0 = std::chrono::steady_clock::now();
  PullRequest request;
  request.identity = identity;
  std::vector<Candidate> candidates;
  std::string difference;
  size_t listed = 0;
  MX_RETURN_IF_ERROR(
      ListCandidates(client, request, p2p::SOURCE_STATUS_READY, &candidates, &difference, &listed));
  if (listed == 0) {
    return Status::NotFound("no READY artifact source of " + Printable(identity.model, 200));
  }
  if (candidates.empty())
    return Status::FailedPrecondition("no artifact source matches: " + difference);
  OrderCandidates(request, &candidates);
  std::vector<RemoteArtifact> remotes;
  std::string problem;
  for (const Candidate& c : candidates) {
    if (remotes.size() >= 8) break;
    auto r = FetchArtifact(c);
    if (r.ok() && !remotes.empty() && !SameFiles(remotes[0], *r)) {
      r = Status::FailedPrecondition("lists other files than the first source");
    }
    if (!r.ok()) {
      if (problem.empty())
        problem = "source " + Printable(c.worker_id, 80) + ": " + r.status().message();
      continue;
    }
    remotes.push_back(std::move(*r));
  }
  if (remotes.empty()) return Status::Unavailable("no usable artifact source: " + problem);

  const auto& files = remotes[0].files;
  uint64_t total = 0;
  for (const auto& f : files) total += f.size();
  std::vector<char> memory(std::max<uint64_t>(total, 1));
  std::vector<PullItem> items;
  uint64_t off = 0;
  for (const auto& f : files) {
    items.push_back({memory.data() + off, f.size()});
    off += f.size();
  }
  std::vector<PullPeer> peers;
  for (const RemoteArtifact& r : remotes) {
    peers.push_back({r.source.worker_id, r.source.transfer_endpoint, r.addrs, false, -1});
  }
  PullOptions options = transfer;
  MX_ASSIGN_OR_RETURN(options.connect.transport, ChosenTransport());
  if (options.connect.token.empty()) {
    MX_ASSIGN_OR_RETURN(options.connect.token, P2pTokenFromEnvironment());
  }
  PullStats stats;
  MX_RETURN_IF_ERROR(Pull(items, peers, options, &stats));
  for (size_t i = 0; i < files.size(); ++i) {
    if (WorkerServiceImpl::CrcHex(Crc32c(0, items[i].dest, items[i].size)) != files[i].checksum()) {
      return Status::DataLoss("file " + files[i].path() + " does not match its checksum");
    }
  }

  // Into place atomically: a temporary sibling, then one rename.
  fs::path target = fs::absolute(dest).lexically_normal();
  if (target.filename().empty()) target = target.parent_path();
  std::error_code ec;
  fs::create_directories(target.parent_path(), ec);
  fs::path tmp =
      target.parent_path() / ("." + target.filename().string() + ".mx-tmp-" + RandomHex(4));
  fs::create_directory(tmp, ec);
  if (ec) return Status::IoError("cannot create " + tmp.string() + ": " + ec.message());
  auto cleanup = [&] { fs::remove_all(tmp, ec); };
  for (size_t i = 0; i < files.size(); ++i) {
    fs::path p = tmp / files[i].path();
    fs::create_directories(p.parent_path(), ec);
    Status st = WriteFile(p, items[i].dest, items[i].size);
    if (!st.ok()) {
      cleanup();
      return st;
    }
  }
  fs::path old;
  if (fs::exists(target, ec)) {
    old = target.parent_path() / ("." + target.filename().string() + ".mx-old-" + RandomHex(4));
    fs::rename(target, old, ec);
    if (ec) {
      cleanup();
      return Status::IoError("cannot move the old " + target.string() + " aside: " + ec.message());
    }
  }
  fs::rename(tmp, target, ec);
  if (ec) {
    std::error_code ignored;
    if (!old.empty()) fs::rename(old, target, ignored);
    cleanup();
    return Status::IoError("cannot rename into " + target.string() + ": " + ec.message());
  }
  if (!old.empty()) fs::remove_all(old, ec);
  PulledDir out;
  out.files = files.size();
  out.bytes = stats.bytes;
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  for (const PeerStats& p : stats.peers) {
    if (p.bytes > 0) out.sources.push_back(p.name);
  }
  return out;
}

}  // namespace mx::transfer
