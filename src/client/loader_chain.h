// LoaderChain: the ordered ways a worker gets a model's weights into memory, tried in turn
// until one serves them all.
//
// Default order (MakeDefaultChain):
//   p2p    - the memory of workers that already serve the model (a slot: the P2P transfer
//            engine supplies it; without one the step is reported as skipped);
//   server - mx-server (FetchModel: its shared cache, or streamed into the local HF cache),
//            then the streamer reads the local snapshot;
//   uri    - the streamer straight from MX_MODEL_URI (s3://, gs://, az://, http(s)://, a path);
//   cache  - a snapshot already in the local HF cache (offline);
//   hub    - the hub (hub::Download into the local cache), then the streamer.
//
// Contract:
// - A strategy that cannot run here is skipped with a reason (SkipReason), logged and kept in
//   the report; one that fails is reported with its error and the next one runs.
// - Tensors reach the consumer through a TensorSink, which hands each tensor name over at
//   most once. A strategy that delivered part of the model before failing is never re-run;
//   the next strategy is asked for the whole model but only the tensors not yet delivered
//   reach the consumer (and, for file-based strategies, files already complete in the local
//   cache are not fetched again): a partial result is completed, not redone blindly.
// - The load succeeds when one strategy finishes OK; the report names it ("served_by") and,
//   when several contributed, lists each step's tensor and byte counts.
// - Nothing throws; every error is a Status.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "client/fetch.h"
#include "common/status.h"
#include "streamer/streamer.h"

namespace mx::client {

class MxClient;

struct LoadRequest {
  std::string model;     // hub id "org/name" (or s3://, gs:// with the matching provider)
  std::string revision;  // empty = "main"
  int provider = 0;      // ModelProvider
  std::string cache_root;
  bool shared_storage = true;  // false: MODEL_EXPRESS_NO_SHARED_STORAGE
  std::string model_uri;       // MX_MODEL_URI; empty = the uri step is skipped
  uint32_t transfer_chunk_size = kDefaultChunkBytes;
  streamer::StreamOptions stream;  // RUNAI_STREAMER_* for the streamer steps
  // When set, tensors are read straight into caller-owned memory (see streamer::Destination).
  streamer::Destination destination;
  std::function<void(const std::string&)> on_warning;
};

// The consumer side of a load: forwards each tensor to `on_tensor` once, by name.
// Thread-compatible: strategies call Deliver from the thread that runs Load.
class TensorSink {
 public:
  explicit TensorSink(streamer::TensorCallback on_tensor) : on_tensor_(std::move(on_tensor)) {}

  // Hands `tensor` to the consumer unless a tensor of that name was delivered already (then
  // OK without calling it). The consumer's error stops the load.
  Status Deliver(const streamer::Tensor& tensor, const std::shared_ptr<void>& hold);
  bool Delivered(const std::string& name) const { return names_.count(name) > 0; }
  size_t tensors() const { return names_.size(); }
  uint64_t bytes() const { return bytes_; }
  // True once the consumer refused a tensor: no other strategy can help then.
  bool consumer_failed() const { return consumer_failed_; }

 private:
  streamer::TensorCallback on_tensor_;
  std::set<std::string> names_;
  uint64_t bytes_ = 0;
  bool consumer_failed_ = false;
};

// One way of getting the weights.
class LoadStrategy {
 public:
  virtual ~LoadStrategy() = default;
  // "p2p", "server", "uri", "cache", "hub", ...
  virtual std::string name() const = 0;
  // Empty when the strategy can run for `request`; otherwise why it cannot (cheap: no
  // network unless the answer needs it).
  virtual std::string SkipReason(const LoadRequest& request) = 0;
  // Delivers every tensor of the model through `sink`. OK only when all were delivered.
  // `path` may be set to the local snapshot the tensors came from.
  virtual Status Load(const LoadRequest& request, TensorSink& sink, std::string* path) = 0;
};

struct LoadStep {
  std::string strategy;
  std::string outcome;  // "served", "skipped", "failed"
  std::string reason;   // why skipped / the error; empty when served
  double seconds = 0;
  size_t tensors = 0;  // delivered by this step
  uint64_t bytes = 0;
};

struct LoadReport {
  std::string served_by;  // the strategy that finished the load
  std::string path;       // the local snapshot, when the weights came from files
  size_t tensors = 0;
  uint64_t bytes = 0;
  double seconds = 0;
  std::vector<LoadStep> steps;
};

class LoaderChain {
 public:
  LoaderChain() = default;
  void Add(std::unique_ptr<LoadStrategy> strategy) { strategies_.push_back(std::move(strategy)); }
  const std::vector<std::unique_ptr<LoadStrategy>>& strategies() const { return strategies_; }

  // Runs the strategies in order. When none serves the model: the last failure's code with
  // every step's reason in the message. `report` (optional) is filled either way.
  Result<LoadReport> Load(const LoadRequest& request, const streamer::TensorCallback& on_tensor,
                          LoadReport* report = nullptr);

 private:
  std::vector<std::unique_ptr<LoadStrategy>> strategies_;
};

// The strategies of the default order, one by one (for callers that build their own chain).
// `client` may be null: the server step is then skipped ("no server configured").
std::unique_ptr<LoadStrategy> MakeServerStrategy(MxClient* client);
std::unique_ptr<LoadStrategy> MakeUriStrategy();
std::unique_ptr<LoadStrategy> MakeCacheStrategy();
std::unique_ptr<LoadStrategy> MakeHubStrategy();

// p2p (when `p2p` is given; otherwise a step skipped with the reason that this build has
// no P2P source), server, uri, cache, hub.
LoaderChain MakeDefaultChain(MxClient* client, std::unique_ptr<LoadStrategy> p2p = nullptr);

}  // namespace mx::client
