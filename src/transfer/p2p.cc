#include "transfer/p2p.h"

#include <grpcpp/grpcpp.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <map>
#include <random>
#include <set>
#include <thread>

#include "common/env.h"
#include "common/log.h"
#include "common/text.h"
#include "common/version.h"
#include "safetensors/dtype.h"

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
  id.set_mx_source_type(p2p::MX_SOURCE_TYPE_WEIGHTS);
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
           source.mx_source_type() != p2p::MX_SOURCE_TYPE_WEIGHTS
               ? std::string("source type is ") + std::to_string(source.mx_source_type()) +
                     ", wanted weights (0)"
               : std::string(),
           text("revision", source.revision(), want.revision, true),
           number("tensor_parallel_size", source.tensor_parallel_size(), want.tp_size),
           number("pipeline_parallel_size", source.pipeline_parallel_size(), want.pp_size),
           number("expert_parallel_size", source.expert_parallel_size(), want.ep_size),
           number("rank", source_rank, want.rank),
           text("dtype", source.dtype(), want.dtype, true),
           text("quantization", source.quantization(), want.quantization, true),
           text("accelerator", source_accelerator, want.accelerator, true),
       }) {
    if (!d.empty()) return d;
  }
  return "";
}

Result<std::string> ChosenTransport() {
  std::string t = Lower(GetEnv("MX_P2P_TRANSPORT").value_or("auto"));
  if (t.empty() || t == "auto") return std::string("auto");
  if (t == "tcp") return t;
  if (t == "ucx") {
    if (!UcxBuilt()) {
      return Status::InvalidArgument(
          "MX_P2P_TRANSPORT=ucx: this build has no UCX backend (install libucx-dev, rebuild)");
    }
    return t;
  }
  return Status::InvalidArgument("MX_P2P_TRANSPORT must be auto, tcp or ucx, not '" +
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
  return o;
}

class WorkerServiceImpl final : public p2p::WorkerService::Service {
 public:
  explicit WorkerServiceImpl(p2p::GetTensorManifestResponse manifest)
      : manifest_(std::move(manifest)) {}

  grpc::Status GetTensorManifest(grpc::ServerContext*, const p2p::GetTensorManifestRequest* req,
                                 p2p::GetTensorManifestResponse* resp) override {
    if (req->mx_source_id() != manifest_.mx_source_id()) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "this worker serves another source");
    }
    *resp = manifest_;
    return grpc::Status::OK;
  }

 private:
  const p2p::GetTensorManifestResponse manifest_;
};

Result<std::unique_ptr<Worker>> Worker::Start(client::MxClient* client, const Identity& identity,
                                              std::vector<LocalTensor> tensors,
                                              RegionRegistry* regions, const WorkerOptions& options,
                                              p2p::SourceStatus status) {
  if (client == nullptr) return Status::FailedPrecondition("no mx-server configured");
  std::unique_ptr<Worker> w(new Worker());
  w->client_ = client;
  w->identity_ = identity;
  w->options_ = options;
  w->tensors_ = std::move(tensors);
  w->status_ = status;
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  w->worker_id_ = Printable(host, 64) + "-" + std::to_string(getpid()) + "-" + RandomHex(4);

  ServerOptions so;
  so.host = options.host;
  so.max_rate = options.max_rate;
  MX_ASSIGN_OR_RETURN(w->transfer_, StartTcpServer(regions, so));

  // The manifest is fixed once the memory is: build it once.
  p2p::GetTensorManifestResponse manifest;
  for (const LocalTensor& t : w->tensors_) {
    p2p::TensorDescriptor* d = manifest.add_tensors();
    d->set_name(t.name);
    d->set_addr(reinterpret_cast<uint64_t>(t.data));
    d->set_size(t.size);
    d->set_device_id(0);
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
  // The source id does not depend on the manifest: compute it with a first publish.
  w->grpc_endpoint_ = options.host + ":" + std::to_string(port);
  MX_RETURN_IF_ERROR(w->Publish());  // INITIALIZING-or-given status; endpoint fixed below
  manifest.set_mx_source_id(w->mx_source_id_);
  w->service_ = std::make_unique<WorkerServiceImpl>(std::move(manifest));
  builder.RegisterService(w->service_.get());
  w->grpc_ = builder.BuildAndStart();
  if (w->grpc_ == nullptr || selected == 0) {
    w->transfer_->Stop();
    return Status::Unavailable("cannot listen for WorkerService on " + options.host + ":" +
                               std::to_string(port) + " (MX_WORKER_GRPC_PORT)");
  }
  w->grpc_endpoint_ = options.host + ":" + std::to_string(selected);
  MX_RETURN_IF_ERROR(w->Publish());  // now with the real gRPC endpoint
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
  w->mutable_tensor_source();  // the tensors come from GetTensorManifest
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
    void* base =
        mmap(nullptr, map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) return Status::FromErrno(errno, "allocating the model's memory");
    out.memory = std::shared_ptr<void>(base, [map_bytes](void* p) { munmap(p, map_bytes); });
    uint64_t off = 0;
    for (LocalTensor& t : local) {
      t.data = static_cast<char*>(base) + off;
      off += (t.size + 63) & ~63ull;
    }
  }
  PullOptions options = request.transfer;
  options.connect.transport = transport;
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
  for (const LocalTensor& t : local) items.push_back({t.data, t.size});
  std::vector<PullPeer> peers;
  for (const Candidate& c : usable) {
    PullPeer p{c.worker_id, c.transfer_endpoint, {}, c.partial, c.slot};
    for (const LocalTensor& t : c.manifest)
      p.remote_addr.push_back(reinterpret_cast<uint64_t>(t.data));
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

}  // namespace mx::transfer
