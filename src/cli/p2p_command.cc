// `mx p2p serve|pull|sources`: thin wrappers around mx::transfer's Worker and PullModel.
#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/p2p_commands.h"
#include "client/client.h"
#include "common/env.h"
#include "common/log.h"
#include "common/text.h"
#include "streamer/streamer.h"
#include "transfer/p2p.h"

namespace mx::cli {
namespace {

using nlohmann::json;
namespace p2p = model_express::p2p;

struct P2pFlags {
  std::string endpoint;
  std::string tls_ca;
  bool json = false;
  bool quiet = false;
  transfer::Identity identity;
  std::string host;      // MX_WORKER_HOST
  int worker_port = -1;  // MX_WORKER_GRPC_PORT
  std::string max_rate;
};

void AddServerFlags(CLI::App* cmd, P2pFlags* f) {
  cmd->add_option("-e,--endpoint", f->endpoint,
                  "mx-server address (default: $MODEL_EXPRESS_URL, $MODEL_EXPRESS_ENDPOINT, "
                  "localhost:8001)");
  cmd->add_option("--tls-ca", f->tls_ca, "PEM CA bundle for https:// endpoints (or MX_TLS_CA)");
  cmd->add_flag("--json", f->json, "One JSON object (or list) on stdout");
  cmd->add_flag("-q,--quiet", f->quiet, "Only results and errors");
}

void AddIdentityFlags(CLI::App* cmd, P2pFlags* f, bool target) {
  transfer::Identity& id = f->identity;
  cmd->add_option("--model", id.model, "Model name, e.g. org/name")->required();
  cmd->add_option("--revision", id.revision,
                  target ? "Only sources of this revision (default: any)" : "Revision served");
  cmd->add_option("--tp-size", id.tp_size, "Tensor-parallel size (default 1)");
  cmd->add_option("--pp-size", id.pp_size, "Pipeline-parallel size (default 1)");
  cmd->add_option("--ep-size", id.ep_size, "Expert-parallel size (default 1)");
  cmd->add_option("--rank", id.rank, "Worker rank (default 0)");
  cmd->add_option("--dtype", id.dtype,
                  target ? "Only sources of this dtype (default: any)" : "dtype, e.g. bfloat16");
  cmd->add_option("--quantization", id.quantization,
                  target ? "Only sources with this quantization (default: any)" : "e.g. fp8");
}

void AddWorkerFlags(CLI::App* cmd, P2pFlags* f) {
  cmd->add_option("--host", f->host,
                  "Address to bind and advertise for peers (default: $MX_WORKER_HOST, "
                  "127.0.0.1); pick the data network on a multi-NIC node");
  cmd->add_option("--worker-port", f->worker_port,
                  "WorkerService port (default: $MX_WORKER_GRPC_PORT, 6555; 0 = any free)")
      ->check(CLI::Range(0, 65535));
  cmd->add_option("--max-rate", f->max_rate,
                  "Cap on what this worker sends to peers per second, e.g. 100MiB "
                  "(default: $MX_P2P_SERVE_MAX_RATE, unlimited)");
}

void Init(const P2pFlags& f) {
  InitLogging(GetEnv("MX_LOG_LEVEL").value_or(f.quiet ? "error" : "warn"));
}

Result<std::unique_ptr<client::MxClient>> Connect(const P2pFlags& f) {
  client::ClientOptions o;
  o.endpoint = f.endpoint;
  o.tls_ca = f.tls_ca;
  MX_ASSIGN_OR_RETURN(auto c, client::MxClient::Create(o));
  MX_RETURN_IF_ERROR(c->Connect());
  return c;
}

Result<transfer::WorkerOptions> WorkerOptionsFrom(const P2pFlags& f) {
  MX_ASSIGN_OR_RETURN(transfer::WorkerOptions o, transfer::WorkerOptions::FromEnvironment());
  if (!f.host.empty()) o.host = f.host;
  if (f.worker_port >= 0) o.grpc_port = f.worker_port;
  if (!f.max_rate.empty()) {
    MX_ASSIGN_OR_RETURN(o.max_rate, ParseByteSizeInRange("--max-rate", f.max_rate, 0, 1ull << 40));
  }
  return o;
}

// SIGTERM/SIGINT are blocked in every thread (call before starting any) and taken here.
void BlockStopSignals() {
  sigset_t s;
  sigemptyset(&s);
  sigaddset(&s, SIGTERM);
  sigaddset(&s, SIGINT);
  pthread_sigmask(SIG_BLOCK, &s, nullptr);
}

int WaitStopSignal() {
  sigset_t s;
  sigemptyset(&s);
  sigaddset(&s, SIGTERM);
  sigaddset(&s, SIGINT);
  int sig = 0;
  sigwait(&s, &sig);
  return sig;
}

int Fail(const P2pFlags& f, const Status& st) {
  if (f.json)
    std::printf("%s\n", JsonText(json{{"success", false}, {"error", st.message()}}).c_str());
  return ReportError(st);
}

// Memory for a loaded model: one aligned block per tensor, freed at exit.
struct OwnedTensors {
  std::vector<std::shared_ptr<void>> blocks;
  std::vector<transfer::LocalTensor> tensors;
};

// `n` bytes, 64-byte aligned. A tensor of 2 MiB or more gets a mapping of its own on huge
// pages (transfer::MapHostMemory; bench/p2p.sh: pinning 4 KiB pages one by one was a quarter
// of a same-host pull's time).
std::shared_ptr<void> AllocateTensor(size_t n) {
  if (n >= (2u << 20)) return transfer::MapHostMemory(n);
  void* p = std::aligned_alloc(64, (std::max<size_t>(n, 1) + 63) / 64 * 64);
  if (p == nullptr) return nullptr;
  return std::shared_ptr<void>(p, &std::free);
}

// --- mx p2p serve -----------------------------------------------------------------------

int RunServe(const P2pFlags& f, const std::string& uri) {
  Init(f);
  BlockStopSignals();
  auto wo = WorkerOptionsFrom(f);
  if (!wo.ok()) return Fail(f, wo.status());
  auto c = Connect(f);
  if (!c.ok()) return Fail(f, c.status());
  auto stream = streamer::StreamOptions::FromEnvironment();
  if (!stream.ok()) return Fail(f, stream.status());
  OwnedTensors owned;
  uint64_t bytes = 0;
  auto destination = [&](const std::string& file, const safetensors::TensorInfo& info) -> char* {
    std::shared_ptr<void> block = AllocateTensor(info.bytes());
    if (block == nullptr) return nullptr;
    char* p = static_cast<char*>(block.get());
    owned.blocks.push_back(std::move(block));
    owned.tensors.push_back({info.name, file, info.dtype, info.shape, p, info.bytes()});
    bytes += info.bytes();
    return p;
  };
  auto loaded = streamer::StreamModel(
      {uri}, *stream,
      [](const streamer::Tensor&, const std::shared_ptr<void>&) { return Status::OK(); },
      destination);
  if (!loaded.ok()) return Fail(f, loaded.status().WithContext("loading " + uri));
  transfer::RegionRegistry regions;
  for (const auto& t : owned.tensors) {
    if (t.size == 0) continue;
    Status st =
        regions.Register({t.name, reinterpret_cast<uint64_t>(t.data), t.size, -1, ""}, true);
    if (!st.ok()) return Fail(f, st);
  }
  auto worker = transfer::Worker::Start(c->get(), f.identity, owned.tensors, &regions, *wo,
                                        p2p::SOURCE_STATUS_READY);
  if (!worker.ok()) return Fail(f, worker.status());
  json out{{"success", true},
           {"mx_source_id", (*worker)->mx_source_id()},
           {"worker_id", (*worker)->worker_id()},
           {"endpoint", (*worker)->grpc_endpoint()},
           {"transfer_endpoint", (*worker)->transfer_endpoint()},
           {"tensors", owned.tensors.size()},
           {"bytes", bytes}};
  if (f.json) {
    std::printf("%s\n", JsonText(out).c_str());
  } else {
    std::printf("serving %s (%zu tensors, %s) as source %s at %s; SIGTERM stops\n",
                EscapeControl(f.identity.model).c_str(), owned.tensors.size(),
                FormatBytes(static_cast<double>(bytes)).c_str(), (*worker)->mx_source_id().c_str(),
                (*worker)->grpc_endpoint().c_str());
  }
  std::fflush(stdout);
  WaitStopSignal();
  (*worker)->Stop();  // STALE, then the servers stop
  return 0;
}

// --- mx p2p pull ------------------------------------------------------------------------

struct PullArgs {
  std::string verify_against;
  std::string selector;
  bool serve = false;
  int connections = 4;
  std::string chunk_size = "4MiB";
  double deadline_s = 600;
  double stall_s = 10;
};

// Compares the pulled tensors with the safetensors files at `path`: the first difference
// (a missing or extra tensor, dtype, shape or bytes) is the error.
Status VerifyAgainst(const std::string& path, const std::vector<transfer::LocalTensor>& pulled) {
  std::map<std::string, const transfer::LocalTensor*> by_name;
  for (const auto& t : pulled) by_name[t.name] = &t;
  size_t seen = 0;
  auto opts = streamer::StreamOptions::FromEnvironment();
  if (!opts.ok()) return opts.status();
  auto st = streamer::StreamModel(
      {path}, *opts, [&](const streamer::Tensor& t, const std::shared_ptr<void>&) -> Status {
        auto it = by_name.find(t.info.name);
        if (it == by_name.end())
          return Status::DataLoss("tensor " + t.info.name + " was not pulled");
        const transfer::LocalTensor& p = *it->second;
        if (p.dtype != t.info.dtype || p.shape != t.info.shape || p.size != t.info.bytes()) {
          return Status::DataLoss("tensor " + t.info.name + ": dtype or shape differs");
        }
        if (p.size > 0 && std::memcmp(p.data, t.data, p.size) != 0) {
          return Status::DataLoss("tensor " + t.info.name + ": bytes differ");
        }
        ++seen;
        return Status::OK();
      });
  if (!st.ok()) return st.status().WithContext("verify against " + path);
  if (seen != pulled.size()) return Status::DataLoss("pulled tensors absent from " + path);
  return Status::OK();
}

int RunPull(const P2pFlags& f, const PullArgs& a) {
  Init(f);
  BlockStopSignals();
  auto c = Connect(f);
  if (!c.ok()) return Fail(f, c.status());
  auto chunk = ParseByteSizeInRange("--chunk-size", a.chunk_size, 4096, transfer::kMaxReadBytes);
  if (!chunk.ok()) return Fail(f, chunk.status());
  transfer::PullRequest r;
  r.identity = f.identity;
  r.selector = a.selector;
  r.transfer.chunk_bytes = *chunk;
  r.transfer.connections_per_peer = a.connections;
  r.transfer.connect.stall_ms = static_cast<int>(a.stall_s * 1000);
  r.transfer.deadline = std::chrono::steady_clock::now() +
                        std::chrono::milliseconds(static_cast<int64_t>(a.deadline_s * 1000));
  auto wo = WorkerOptionsFrom(f);
  if (!wo.ok()) return Fail(f, wo.status());
  r.transfer.connect.bind_host = wo->host;
  // --serve: this receiver publishes itself before pulling and serves every chunk it has
  // verified (a swarm peer), then READY once complete, until SIGTERM.
  transfer::RegionRegistry regions;
  std::unique_ptr<transfer::Worker> worker;
  if (a.serve) {
    r.transfer.verified = &regions;
    r.before_pull = [&](const std::vector<transfer::LocalTensor>& local) -> Result<std::string> {
      for (const auto& t : local) {
        if (t.size == 0) continue;
        MX_RETURN_IF_ERROR(
            regions.Register({t.name, reinterpret_cast<uint64_t>(t.data), t.size, -1, ""}, false));
      }
      MX_ASSIGN_OR_RETURN(worker, transfer::Worker::Start(c->get(), f.identity, local, &regions,
                                                          *wo, p2p::SOURCE_STATUS_INITIALIZING));
      return worker->worker_id();
    };
  }
  auto pulled = transfer::PullModel(**c, r);
  if (!pulled.ok()) {
    if (worker) worker->Stop();
    return Fail(f, pulled.status());
  }
  bool verified = false;
  if (!a.verify_against.empty()) {
    Status st = VerifyAgainst(a.verify_against, pulled->tensors);
    if (!st.ok()) {
      if (worker) worker->Stop();
      return Fail(f, st);
    }
    verified = true;
  }
  if (worker) {
    Status st = worker->SetStatus(p2p::SOURCE_STATUS_READY);
    if (!st.ok()) spdlog::warn("p2p: could not mark this receiver READY: {}", st.message());
  }
  json out{{"success", true},
           {"model", f.identity.model},
           {"tensors", pulled->tensors.size()},
           {"bytes", pulled->bytes},
           {"seconds", pulled->seconds},
           {"sources", pulled->sources},
           {"failed_sources", pulled->failed},
           {"transport", pulled->transport},
           {"verified", verified}};
  if (worker) out["worker_id"] = worker->worker_id();
  if (f.json) {
    std::printf("%s\n", JsonText(out).c_str());
  } else {
    double s = std::max(pulled->seconds, 1e-9);
    std::printf("%s: %zu tensors, %s in %.2fs (%s/s) from %zu source(s) over %s%s\n",
                EscapeControl(f.identity.model).c_str(), pulled->tensors.size(),
                FormatBytes(static_cast<double>(pulled->bytes)).c_str(), pulled->seconds,
                FormatBytes(pulled->bytes / s).c_str(), pulled->sources.size(),
                pulled->transport.c_str(), verified ? ", verified" : "");
  }
  std::fflush(stdout);
  if (worker) {
    WaitStopSignal();
    worker->Stop();
  }
  return 0;
}

// --- mx p2p serve-dir / pull-dir ----------------------------------------------------------

struct DirArgs {
  std::string dir;
  std::string kind;
};

void AddArtifactFlags(CLI::App* cmd, P2pFlags* f, DirArgs* a, bool target) {
  cmd->add_option("--model", f->identity.model, "Model the artifacts belong to")->required();
  cmd->add_option("--kind", a->kind,
                  "torch-compile, triton, cuda-graph, deep-gemm, tilelang, cute-dsl, flashinfer, "
                  "tvm-ffi or lora")
      ->required();
  cmd->add_option("--engine-version", f->identity.engine_version,
                  target ? "Only sources built by this engine version (default: any)"
                         : "Engine version that produced them, e.g. vllm-0.11.0");
  cmd->add_option("--gpu-arch", f->identity.gpu_arch,
                  target ? "Only sources for this GPU architecture (default: any)"
                         : "GPU architecture, e.g. sm_90");
  cmd->add_option("--tp-size", f->identity.tp_size, "Tensor-parallel size (default 1)");
  cmd->add_option("--rank", f->identity.rank, "Worker rank (default 0)");
}

int RunServeDir(const P2pFlags& flags, const DirArgs& a) {
  P2pFlags f = flags;
  Init(f);
  BlockStopSignals();
  auto kind = transfer::ArtifactKind(a.kind);
  if (!kind.ok()) return Fail(f, kind.status());
  f.identity.source_type = *kind;
  auto wo = WorkerOptionsFrom(f);
  if (!wo.ok()) return Fail(f, wo.status());
  auto c = Connect(f);
  if (!c.ok()) return Fail(f, c.status());
  std::vector<std::unique_ptr<char[]>> owned;
  auto dir = transfer::LoadArtifactDir(a.dir, &owned);
  if (!dir.ok()) return Fail(f, dir.status());
  transfer::RegionRegistry regions;
  uint64_t bytes = 0;
  for (const auto& file : dir->files) {
    bytes += file.size;
    if (file.size == 0) continue;
    Status st = regions.Register(
        {file.path, reinterpret_cast<uint64_t>(file.data), file.size, -1, ""}, true);
    if (!st.ok()) return Fail(f, st);
  }
  auto worker = transfer::Worker::Start(c->get(), f.identity, {}, &regions, *wo,
                                        p2p::SOURCE_STATUS_READY, &*dir);
  if (!worker.ok()) return Fail(f, worker.status());
  json out{{"success", true},
           {"mx_source_id", (*worker)->mx_source_id()},
           {"worker_id", (*worker)->worker_id()},
           {"endpoint", (*worker)->grpc_endpoint()},
           {"artifact_id", dir->artifact_id},
           {"files", dir->files.size()},
           {"bytes", bytes}};
  if (f.json) {
    std::printf("%s\n", JsonText(out).c_str());
  } else {
    std::printf("serving %s (%zu files, %s) as source %s at %s; SIGTERM stops\n",
                EscapeControl(a.dir).c_str(), dir->files.size(),
                FormatBytes(static_cast<double>(bytes)).c_str(), (*worker)->mx_source_id().c_str(),
                (*worker)->grpc_endpoint().c_str());
  }
  std::fflush(stdout);
  WaitStopSignal();
  (*worker)->Stop();
  return 0;
}

int RunPullDir(const P2pFlags& flags, const DirArgs& a) {
  P2pFlags f = flags;
  Init(f);
  auto kind = transfer::ArtifactKind(a.kind);
  if (!kind.ok()) return Fail(f, kind.status());
  f.identity.source_type = *kind;
  auto c = Connect(f);
  if (!c.ok()) return Fail(f, c.status());
  auto wo = WorkerOptionsFrom(f);
  if (!wo.ok()) return Fail(f, wo.status());
  transfer::PullOptions o;
  o.connect.bind_host = wo->host;
  o.deadline = std::chrono::steady_clock::now() + std::chrono::minutes(30);
  auto pulled = transfer::PullArtifactDir(**c, f.identity, a.dir, o);
  if (!pulled.ok()) return Fail(f, pulled.status());
  json out{{"success", true},
           {"path", a.dir},
           {"files", pulled->files},
           {"bytes", pulled->bytes},
           {"seconds", pulled->seconds},
           {"sources", pulled->sources},
           {"verified", true}};
  if (f.json) {
    std::printf("%s\n", JsonText(out).c_str());
  } else {
    std::printf("%s: %zu files, %s in %.2fs, each verified\n", EscapeControl(a.dir).c_str(),
                pulled->files, FormatBytes(static_cast<double>(pulled->bytes)).c_str(),
                pulled->seconds);
  }
  return 0;
}

// --- mx p2p sources ---------------------------------------------------------------------

const char* StatusName(int s) {
  switch (s) {
    case p2p::SOURCE_STATUS_INITIALIZING:
      return "INITIALIZING";
    case p2p::SOURCE_STATUS_READY:
      return "READY";
    case p2p::SOURCE_STATUS_STALE:
      return "STALE";
    default:
      return "UNKNOWN";
  }
}

int RunSources(const P2pFlags& f, const std::string& model, bool ready_only) {
  Init(f);
  auto c = Connect(f);
  if (!c.ok()) return Fail(f, c.status());
  p2p::ListSourcesRequest req;
  if (!model.empty()) req.set_model_name_filter(model);
  if (ready_only) req.set_status_filter(p2p::SOURCE_STATUS_READY);
  auto ctx = (*c)->NewContext(10000);
  if (!ctx.ok()) return Fail(f, ctx.status());
  p2p::ListSourcesResponse resp;
  Status st = client::FromGrpc((*c)->p2p().ListSources(ctx->get(), req, &resp), "ListSources");
  if (!st.ok()) return Fail(f, st);
  json list = json::array();
  for (const auto& ref : resp.instances()) {
    p2p::GetMetadataRequest mreq;
    mreq.set_mx_source_id(ref.mx_source_id());
    mreq.set_worker_id(ref.worker_id());
    auto mctx = (*c)->NewContext(10000);
    if (!mctx.ok()) return Fail(f, mctx.status());
    p2p::GetMetadataResponse meta;
    Status ms = client::FromGrpc((*c)->p2p().GetMetadata(mctx->get(), mreq, &meta), "GetMetadata");
    if (!ms.ok() || !meta.found()) continue;
    list.push_back({{"mx_source_id", ref.mx_source_id()},
                    {"worker_id", ref.worker_id()},
                    {"model_name", ref.model_name()},
                    {"rank", ref.worker_rank()},
                    {"status", StatusName(meta.worker().status())},
                    {"endpoint", meta.worker().worker_grpc_endpoint()},
                    {"transfer_endpoint", meta.worker().metadata_endpoint()},
                    {"accelerator", ref.accelerator()},
                    {"updated_at", ref.updated_at()}});
  }
  if (f.json) {
    std::printf("%s\n", JsonText(list).c_str());
    return 0;
  }
  for (const auto& s : list) {
    std::printf("%-16s %-12s rank %-3d %-28s %s\n", s["mx_source_id"].get<std::string>().c_str(),
                s["status"].get<std::string>().c_str(), s["rank"].get<int>(),
                EscapeControl(s["endpoint"].get<std::string>()).c_str(),
                EscapeControl(s["worker_id"].get<std::string>()).c_str());
  }
  return 0;
}

}  // namespace

void RegisterP2p(CLI::App& app, int& exit_code) {
  CLI::App* group = app.add_subcommand(
      "p2p", "Peer-to-peer weights: serve a model from memory, pull it from workers that serve it");
  group->require_subcommand(1);

  auto sf = std::make_shared<P2pFlags>();
  auto uri = std::make_shared<std::string>();
  CLI::App* serve = group->add_subcommand(
      "serve", "Load a model into memory with the streamer and serve it to peers until SIGTERM");
  serve->add_option("uri", *uri, "A path, s3://, gs://, az://, http(s):// URI or hub id")
      ->required();
  AddServerFlags(serve, sf.get());
  AddIdentityFlags(serve, sf.get(), false);
  AddWorkerFlags(serve, sf.get());
  serve->callback([sf, uri, &exit_code] { exit_code = RunServe(*sf, *uri); });

  auto pf = std::make_shared<P2pFlags>();
  auto pa = std::make_shared<PullArgs>();
  CLI::App* pull = group->add_subcommand(
      "pull", "Pull a model's weights into memory from the workers that serve it");
  AddServerFlags(pull, pf.get());
  AddIdentityFlags(pull, pf.get(), true);
  AddWorkerFlags(pull, pf.get());
  pull->add_option("--verify-against", pa->verify_against,
                   "Compare every pulled tensor with these safetensors files (a path or URI)");
  pull->add_option("--selector", pa->selector,
                   "Source order: random or rendezvous (default: $MX_P2P_SOURCE_SELECTOR, random)")
      ->check(CLI::IsMember({"random", "rendezvous"}));
  pull->add_flag("--serve", pa->serve,
                 "Publish this receiver at once, serve every verified chunk to other receivers "
                 "(swarm), stay READY until SIGTERM");
  pull->add_option("--connections", pa->connections, "Connections per source (default 4)")
      ->check(CLI::Range(1, 64));
  pull->add_option("--chunk-size", pa->chunk_size, "Bytes per request (default 4MiB)");
  pull->add_option("--deadline", pa->deadline_s, "Seconds the whole pull may take (default 600)")
      ->check(CLI::Range(0.1, 86400.0));
  pull->add_option("--stall", pa->stall_s,
                   "Seconds without progress before a source is dropped (default 10)")
      ->check(CLI::Range(0.1, 3600.0));
  pull->callback([pf, pa, &exit_code] { exit_code = RunPull(*pf, *pa); });

  auto df = std::make_shared<P2pFlags>();
  auto da = std::make_shared<DirArgs>();
  CLI::App* serve_dir = group->add_subcommand(
      "serve-dir",
      "Serve a directory of compiled artifacts (torch.compile, Triton, CUDA-graph caches) to "
      "peers until SIGTERM");
  serve_dir->add_option("dir", da->dir, "The directory, e.g. ~/.cache/vllm")->required();
  AddServerFlags(serve_dir, df.get());
  AddArtifactFlags(serve_dir, df.get(), da.get(), false);
  AddWorkerFlags(serve_dir, df.get());
  serve_dir->callback([df, da, &exit_code] { exit_code = RunServeDir(*df, *da); });

  auto gf = std::make_shared<P2pFlags>();
  auto ga = std::make_shared<DirArgs>();
  CLI::App* pull_dir = group->add_subcommand(
      "pull-dir",
      "Fetch an artifact directory from a peer into DEST atomically, every file verified");
  pull_dir->add_option("dest", ga->dir, "Where the directory goes (replaced when it exists)")
      ->required();
  AddServerFlags(pull_dir, gf.get());
  AddArtifactFlags(pull_dir, gf.get(), ga.get(), true);
  pull_dir->add_option("--host", gf->host, "Local address for the data connections");
  pull_dir->callback([gf, ga, &exit_code] { exit_code = RunPullDir(*gf, *ga); });

  auto lf = std::make_shared<P2pFlags>();
  auto model = std::make_shared<std::string>();
  auto ready = std::make_shared<bool>(false);
  CLI::App* sources = group->add_subcommand("sources", "List the published sources");
  AddServerFlags(sources, lf.get());
  sources->add_option("--model", *model, "Only this model");
  sources->add_flag("--ready", *ready, "Only READY sources (what a pull would use)");
  sources->callback(
      [lf, model, ready, &exit_code] { exit_code = RunSources(*lf, *model, *ready); });
}

}  // namespace mx::cli
