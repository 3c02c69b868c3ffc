#include "client/loader_chain.h"

#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <chrono>

#include "client/client.h"
#include "common/env.h"
#include "common/text.h"
#include "hub/cache.h"

namespace mx::client {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// Streams the safetensors under `path` (a snapshot directory or a URI) into the sink.
Status StreamInto(const std::string& path, const LoadRequest& r, TensorSink& sink) {
  auto stats = streamer::StreamModel(
      {path}, r.stream,
      [&sink](const streamer::Tensor& t, const std::shared_ptr<void>& hold) {
        return sink.Deliver(t, hold);
      },
      r.destination);
  return stats.status();
}

FetchOptions FetchFor(const LoadRequest& r, Strategy strategy) {
  FetchOptions o;
  o.model = r.model;
  o.provider = r.provider;
  o.revision = r.revision;
  o.strategy = strategy;
  o.shared_storage = r.shared_storage;
  o.cache_root = r.cache_root;
  o.chunk_size = r.transfer_chunk_size;
  o.on_warning = r.on_warning;
  return o;
}

class ServerStrategy : public LoadStrategy {
 public:
  explicit ServerStrategy(MxClient* client) : client_(client) {}
  std::string name() const override { return "server"; }
  std::string SkipReason(const LoadRequest&) override {
    return client_ ? "" : "no server configured (--endpoint, MODEL_EXPRESS_URL)";
  }
  Status Load(const LoadRequest& r, TensorSink& sink, std::string* path) override {
    MX_ASSIGN_OR_RETURN(FetchReport got, FetchModel(client_, FetchFor(r, Strategy::kServerOnly)));
    *path = got.path;
    return StreamInto(got.path, r, sink);
  }

 private:
  MxClient* client_;
};

class UriStrategy : public LoadStrategy {
 public:
  std::string name() const override { return "uri"; }
  std::string SkipReason(const LoadRequest& r) override {
    return r.model_uri.empty() ? "MX_MODEL_URI is not set" : "";
  }
  Status Load(const LoadRequest& r, TensorSink& sink, std::string*) override {
    return StreamInto(r.model_uri, r, sink);
  }
};

class CacheStrategy : public LoadStrategy {
 public:
  std::string name() const override { return "cache"; }
  std::string SkipReason(const LoadRequest& r) override {
    if (r.provider != 0) return "the local HF cache holds hub models only";
    hub::RepoCache cache(r.cache_root, hub::RepoType::kModel, r.model);
    auto commit = cache.ResolveLocal(r.revision.empty() ? "main" : r.revision);
    if (!commit.ok()) return "not in the local cache " + r.cache_root;
    struct stat st {};
    if (::stat(cache.snapshot_dir(*commit).c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
      return "no snapshot of commit " + *commit + " in the local cache";
    }
    return "";
  }
  Status Load(const LoadRequest& r, TensorSink& sink, std::string* path) override {
    hub::RepoCache cache(r.cache_root, hub::RepoType::kModel, r.model);
    MX_ASSIGN_OR_RETURN(std::string commit,
                        cache.ResolveLocal(r.revision.empty() ? "main" : r.revision));
    *path = cache.snapshot_dir(commit);
    return StreamInto(*path, r, sink);
  }
};

class HubStrategy : public LoadStrategy {
 public:
  std::string name() const override { return "hub"; }
  std::string SkipReason(const LoadRequest& r) override {
    if (r.provider != 0) return "only hub models come from the hub";
    if (EnvIsTruthy("HF_HUB_OFFLINE")) return "HF_HUB_OFFLINE is set";
    return "";
  }
  Status Load(const LoadRequest& r, TensorSink& sink, std::string* path) override {
    MX_ASSIGN_OR_RETURN(FetchReport got, FetchModel(nullptr, FetchFor(r, Strategy::kDirect)));
    *path = got.path;
    return StreamInto(got.path, r, sink);
  }
};

// Stands in the p2p slot when no P2P engine is given, so the report says why it was not
// used instead of leaving the step out.
class NoP2pStrategy : public LoadStrategy {
 public:
  std::string name() const override { return "p2p"; }
  std::string SkipReason(const LoadRequest&) override {
    return "this build has no P2P transfer engine";
  }
  Status Load(const LoadRequest&, TensorSink&, std::string*) override {
    return Status::Unimplemented("no P2P transfer engine");
  }
};

std::string StepSummary(const std::vector<LoadStep>& steps) {
  std::string out;
  for (const auto& s : steps) {
    if (!out.empty()) out += "; ";
    out += s.strategy + " " + s.outcome + (s.reason.empty() ? "" : ": " + s.reason);
  }
  return out;
}

}  // namespace

Status TensorSink::Deliver(const streamer::Tensor& tensor, const std::shared_ptr<void>& hold) {
  if (!names_.insert(tensor.info.name).second) return Status::OK();
  bytes_ += tensor.info.bytes();
  Status st = on_tensor_(tensor, hold);
  if (!st.ok()) {
    names_.erase(tensor.info.name);
    bytes_ -= tensor.info.bytes();
    consumer_failed_ = true;
  }
  return st;
}

Result<LoadReport> LoaderChain::Load(const LoadRequest& request,
                                     const streamer::TensorCallback& on_tensor, LoadReport* out) {
  LoadReport report;
  TensorSink sink(on_tensor);
  auto started = Clock::now();
  Status last = Status::NotFound("no strategy to load " + Printable(request.model) + " with");
  for (const auto& strategy : strategies_) {
    LoadStep step;
    step.strategy = strategy->name();
    auto step_started = Clock::now();
    step.reason = strategy->SkipReason(request);
    if (!step.reason.empty()) {
      step.outcome = "skipped";
      spdlog::info("load {}: {} skipped: {}", Printable(request.model), step.strategy, step.reason);
      report.steps.push_back(step);
      continue;
    }
    size_t tensors_before = sink.tensors();
    uint64_t bytes_before = sink.bytes();
    std::string path;
    Status st = strategy->Load(request, sink, &path);
    step.seconds = SecondsSince(step_started);
    step.tensors = sink.tensors() - tensors_before;
    step.bytes = sink.bytes() - bytes_before;
    if (st.ok()) {
      step.outcome = "served";
      report.steps.push_back(step);
      report.served_by = step.strategy;
      report.path = path;
      break;
    }
    step.outcome = "failed";
    step.reason = st.message();
    spdlog::warn("load {}: {} failed after {} tensors: {}", Printable(request.model), step.strategy,
                 step.tensors, st.message());
    report.steps.push_back(step);
    last = st;
    if (sink.consumer_failed()) break;
  }
  report.tensors = sink.tensors();
  report.bytes = sink.bytes();
  report.seconds = SecondsSince(started);
  if (out) *out = report;
  if (report.served_by.empty()) {
    return Status(last.code(), "could not load " + Printable(request.model) + " (" +
                                   StepSummary(report.steps) + ")");
  }
  return report;
}

std::unique_ptr<LoadStrategy> MakeServerStrategy(MxClient* client) {
  return std::make_unique<ServerStrategy>(client);
}
std::unique_ptr<LoadStrategy> MakeUriStrategy() { return std::make_unique<UriStrategy>(); }
std::unique_ptr<LoadStrategy> MakeCacheStrategy() { return std::make_unique<CacheStrategy>(); }
std::unique_ptr<LoadStrategy> MakeHubStrategy() { return std::make_unique<HubStrategy>(); }

LoaderChain MakeDefaultChain(MxClient* client, std::unique_ptr<LoadStrategy> p2p) {
  LoaderChain chain;
  chain.Add(p2p ? std::move(p2p) : std::make_unique<NoP2pStrategy>());
  chain.Add(MakeServerStrategy(client));
  chain.Add(MakeUriStrategy());
  chain.Add(MakeCacheStrategy());
  chain.Add(MakeHubStrategy());
  return chain;
}

}  // namespace mx::client
