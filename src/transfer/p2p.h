// Peer-to-peer weights over mx-server's P2pService: the source (worker) side and the
// target side, on top of the transfer engine.
//
// Source: a Worker owns the memory of a loaded model (tensors registered in a
// RegionRegistry), answers WorkerService.GetTensorManifest on its gRPC port, serves reads on
// a transfer endpoint, both bound to and advertised at `host` (MX_WORKER_HOST), publishes
// itself with its identity, heartbeats (UpdateStatus) every `heartbeat_s`, and marks itself
// STALE on Stop(). A Worker may start INITIALIZING over memory still being filled (a swarm
// receiver): peers can then read only the chunks it has verified.
//
// Target: PullModel lists READY sources of the model (ListSources), keeps those whose
// identity and rank match (GetMetadata; when none match, the error names the first
// difference), orders them (MX_P2P_SOURCE_SELECTOR=random|rendezvous), fetches their
// manifests (GetTensorManifest), checks that every tensor agrees by name, shape, dtype and
// size, and pulls all tensors from all usable sources at once: a source that dies or stalls
// leaves its chunks to the others. In a swarm (PullRequest::before_pull), this receiver
// publishes itself before pulling and the receivers still receiving (INITIALIZING sources
// of the same identity) share the work (see PullOptions::swarm_slots).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "client/client.h"
#include "client/loader_chain.h"
#include "common/status.h"
#include "safetensors/safetensors.h"
#include "transfer/pull.h"
#include "transfer/region.h"
#include "transfer/transport.h"

namespace grpc {
class Server;
}

namespace mx::transfer {

// What a worker serves: the fields of SourceIdentity a user sets, and the rank.
struct Identity {
  std::string model;
  std::string revision;
  uint32_t tp_size = 1, pp_size = 1, ep_size = 1;
  uint32_t rank = 0;
  std::string dtype;         // "bfloat16"; on a target, empty matches any
  std::string quantization;  // on a target, empty matches any
  std::string accelerator = "cpu";
  // Artifacts (mx p2p serve-dir): the MxSourceType, engine version and GPU architecture.
  int source_type = 0;         // MX_SOURCE_TYPE_WEIGHTS
  std::string engine_version;  // backend_framework_version; on a target, empty matches any
  std::string gpu_arch;        // on a target, empty matches any

  model_express::p2p::SourceIdentity ToProto() const;
};

// Empty when `source` (with its rank and accelerator) is what `want` asks for; otherwise the
// first difference: "dtype is 'float16', wanted 'bfloat16'".
std::string FirstIdentityDifference(const Identity& want,
                                    const model_express::p2p::SourceIdentity& source,
                                    uint32_t source_rank, const std::string& source_accelerator);

// One tensor in this process's memory.
struct LocalTensor {
  std::string name;
  std::string file;
  safetensors::DType dtype = safetensors::DType::kU8;
  std::vector<uint64_t> shape;
  char* data = nullptr;  // a device address when `device` >= 0
  uint64_t size = 0;
  int device = -1;  // >= 0: the tensor is in that GPU's memory
};

struct WorkerOptions {
  std::string host = "127.0.0.1";  // MX_WORKER_HOST / --host
  int grpc_port = 6555;            // MX_WORKER_GRPC_PORT (+ device id); 0 = any free port
  int device_id = 0;
  int heartbeat_s = 30;   // MX_HEARTBEAT_INTERVAL_SECS
  uint64_t max_rate = 0;  // bytes/s the transfer server may send (0 = unlimited)
  std::string token;      // peers must prove it before reading (ServerOptions::token)
  // Defaults from MX_WORKER_HOST, MX_WORKER_GRPC_PORT, MX_HEARTBEAT_INTERVAL_SECS,
  // MX_P2P_SERVE_MAX_RATE (a size per second: 100MiB), MX_P2P_TOKEN.
  static Result<WorkerOptions> FromEnvironment();
};

// A directory served as an artifact source: its files, each in this process's memory.
struct ArtifactFile {
  std::string path;  // relative, '/'-separated
  char* data = nullptr;
  uint64_t size = 0;
  uint32_t crc = 0;  // CRC-32C of the whole file
};
struct ArtifactDir {
  std::string artifact_id;
  std::vector<ArtifactFile> files;
};

class Worker {
 public:
  // Starts serving `tensors` (whose memory the caller keeps alive until Stop) and publishes
  // with `status` (READY for a loaded source, INITIALIZING for a receiver). `regions` says
  // what may be read; the caller registers the tensors' memory there.
  static Result<std::unique_ptr<Worker>> Start(client::MxClient* client, const Identity& identity,
                                               std::vector<LocalTensor> tensors,
                                               RegionRegistry* regions,
                                               const WorkerOptions& options,
                                               model_express::p2p::SourceStatus status,
                                               const ArtifactDir* artifact = nullptr);
  ~Worker();

  // Changes the advertised status (sent at once and with every heartbeat).
  Status SetStatus(model_express::p2p::SourceStatus status);
  // Stops heartbeats, marks the source STALE (best effort, bounded), stops the servers.
  void Stop();

  const std::string& mx_source_id() const { return mx_source_id_; }
  const std::string& worker_id() const { return worker_id_; }
  std::string grpc_endpoint() const { return grpc_endpoint_; }
  std::string transfer_endpoint() const { return transfer_->endpoint(); }
  uint64_t bytes_served() const { return transfer_->bytes_served(); }

 private:
  Worker() = default;
  Status Publish();
  void HeartbeatLoop();

  client::MxClient* client_ = nullptr;
  Identity identity_;
  WorkerOptions options_;
  std::vector<LocalTensor> tensors_;
  const ArtifactDir* artifact_ = nullptr;
  std::string mx_source_id_, worker_id_, grpc_endpoint_;
  std::unique_ptr<Server> transfer_;
  std::unique_ptr<grpc::Server> grpc_;
  std::unique_ptr<class WorkerServiceImpl> service_;
  std::atomic<int> status_{0};
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread heartbeat_;
  std::atomic<bool> cancel_precompute_{false};
  std::thread precompute_;  // the source's chunk checksums (RegionRegistry)
};

struct PullRequest {
  Identity identity;
  std::string selector;  // "random" | "rendezvous"; empty = MX_P2P_SOURCE_SELECTOR, else random
  std::string self_id;   // this process's worker id (rendezvous order; never pull from self)
  size_t max_sources = 8;
  PullOptions transfer;  // chunking, connections, deadline, stall
  // When set, tensor `name` of `file` lands at the address it returns; else PullModel
  // allocates the memory.
  streamer::Destination destination;
  // >= 0: the destination's addresses are on this GPU (transfer.staging must be set).
  int destination_device = -1;
  // Swarm: called with the local tensors once their memory is known and before pulling;
  // it registers that memory (incomplete) and publishes this receiver INITIALIZING,
  // returning its worker id. PullModel then waits `settle_ms` so receivers started together
  // see each other, lists them, and deals the chunks among them (PullOptions::swarm_slots).
  std::function<Result<std::string>(const std::vector<LocalTensor>&)> before_pull;
  int settle_ms = 500;
};

struct PulledModel {
  std::vector<LocalTensor> tensors;
  std::shared_ptr<void> memory;  // owns the tensors' memory when PullModel allocated it
  uint64_t bytes = 0;
  double seconds = 0;
  std::vector<std::string> sources;  // worker ids that sent bytes
  std::vector<std::string> failed;   // "worker: error" for sources dropped mid-way
  std::string transport;             // what carried the bytes: "tcp", "ucx", or "tcp+ucx"
};

// NotFound when no READY source of the model exists; FailedPrecondition naming the first
// identity or tensor difference when sources exist but none matches; Unavailable when every
// source failed mid-transfer.
Result<PulledModel> PullModel(client::MxClient& client, const PullRequest& request);

// The loader chain's "p2p" step: PullModel for the request's model with `identity`'s other
// fields, delivering each tensor through the sink. Skipped (fast, one ListSources call with
// a short deadline) when no client is configured or no READY source exists.
std::unique_ptr<client::LoadStrategy> MakeP2pStrategy(client::MxClient* client, Identity identity);

// mx p2p serve-dir --kind: torch-compile, triton, cuda-graph, deep-gemm, tilelang, cute-dsl,
// flashinfer, tvm-ffi, lora -> MxSourceType. InvalidArgument for another name.
Result<int> ArtifactKind(const std::string& kind);

// Reads every regular file under `dir` (symlinks and special files are refused) into memory.
// `owned` keeps the memory.
Result<ArtifactDir> LoadArtifactDir(const std::string& dir,
                                    std::vector<std::unique_ptr<char[]>>* owned);

struct PulledDir {
  size_t files = 0;
  uint64_t bytes = 0;
  double seconds = 0;
  std::vector<std::string> sources;
};
// Fetches the artifact directory `identity` names from a READY source into `dest`
// atomically: into a temporary sibling directory, every file checked against its CRC-32C,
// then renamed into place (an existing `dest` is replaced only after that succeeded).
Result<PulledDir> PullArtifactDir(client::MxClient& client, const Identity& identity,
                                  const std::string& dest, const PullOptions& transfer);

// `bytes` of zeroed host memory in a mapping of its own, on huge pages where the kernel
// allows: a same-host peer's process_vm_readv pins a 2 MiB page in one step instead of 512,
// and landing bytes in it faults a 512th as often. Null when mmap fails (errno says why).
std::shared_ptr<void> MapHostMemory(size_t bytes);

// MX_P2P_TRANSPORT: "auto" (unset: cma for a source on this host, else tcp), "tcp", "cma"
// or "ucx"; InvalidArgument for a backend this build lacks.
Result<std::string> ChosenTransport();

}  // namespace mx::transfer
