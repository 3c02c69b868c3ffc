// mx._mx: the pybind11 layer between the `mx` Python package and the C++ library.
//
// Rules of this layer:
// - Every C++ call returns a Status; a failure becomes a Python exception here (MxError, or
//   ValueError for InvalidArgument) carrying the C++ message. No C++ exception crosses
//   into the library, and the library's own code never throws.
// - The GIL is released around every call that does I/O or waits, and the producer
//   threads never touch Python objects.
// - A streamed tensor reaches Python as a TensorBuffer: a read-only buffer-protocol view of
//   the streamer's memory that owns the streamer's `hold`, so the bytes stay valid (and are
//   never copied) for as long as any array or tensor made from it lives.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "client/client.h"
#include "client/fetch.h"
#include "client/loader_chain.h"
#include "common/env.h"
#include "common/log.h"
#include "common/text.h"
#include "common/version.h"
#include "hub/cache.h"
#include "hub/downloader.h"
#include "hub/hub_client.h"
#include "streamer/streamer.h"
#include "tensor_queue.h"
#include "transfer/p2p.h"
#include "transfer/region.h"

namespace py = pybind11;

namespace mx::python {
namespace {

// Thrown only inside this file and turned into mx.MxError by pybind11.
class StatusError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

[[noreturn]] void Raise(const Status& status) {
  if (status.code() == StatusCode::kInvalidArgument) throw py::value_error(status.message());
  throw StatusError(status.message());
}

template <typename T>
T Unwrap(Result<T> result) {
  if (!result.ok()) Raise(result.status());
  return std::move(*result);
}

// --- tensors --------------------------------------------------------------------------------

struct TensorBuffer {
  std::shared_ptr<void> hold;
  const char* data = nullptr;
  uint64_t bytes = 0;
};

// Applies the keyword knobs over RUNAI_STREAMER_* (the environment gives the defaults).
streamer::StreamOptions StreamOptionsFrom(std::optional<int> concurrency,
                                          std::optional<std::string> chunk_bytes,
                                          std::optional<std::string> memory_limit,
                                          std::optional<bool> direct_io) {
  streamer::StreamOptions o = Unwrap(streamer::StreamOptions::FromEnvironment());
  if (concurrency) {
    if (*concurrency < 1 || *concurrency > 1024) {
      Raise(Status::InvalidArgument("concurrency must be 1 to 1024, got " +
                                    std::to_string(*concurrency)));
    }
    o.concurrency = *concurrency;
  }
  if (chunk_bytes) o.chunk_bytes = Unwrap(streamer::ParseChunkSize("chunk_bytes", *chunk_bytes));
  if (memory_limit) {
    o.memory_limit = Unwrap(streamer::ParseMemoryLimit("memory_limit", *memory_limit));
  }
  if (direct_io) o.direct_io = *direct_io;
  return o;
}

struct LoadState {
  std::mutex mu;
  client::LoadReport report;
  bool has_report = false;
  std::vector<std::string> warnings;
};

// The iterator Python sees: (name, TensorBuffer, dtype, shape, file) tuples.
class TensorStream {
 public:
  TensorStream(size_t capacity, Producer::Job job, std::shared_ptr<LoadState> load)
      : producer_(std::make_unique<Producer>(capacity, std::move(job))), load_(std::move(load)) {}
  ~TensorStream() { Close(); }

  py::tuple Next() {
    if (!producer_) throw py::stop_iteration();
    std::shared_ptr<TensorQueue> queue = producer_->queue();
    Item item;
    for (;;) {
      TensorQueue::Next next;
      {
        py::gil_scoped_release release;
        next = queue->Pop(&item, std::chrono::milliseconds(100));
      }
      if (next == TensorQueue::Next::kItem) break;
      if (next == TensorQueue::Next::kEnd) {
        // Closed by another thread first: the stream just ends (its Cancelled is ours).
        bool closed_elsewhere = queue->closed();
        Status st = queue->status();
        Close();
        if (!st.ok() && !closed_elsewhere) Raise(st);
        throw py::stop_iteration();
      }
      if (!producer_) throw py::stop_iteration();  // closed meanwhile by another thread
      // A wait that never ends (say, a memory limit held up by tensors Python keeps) must
      // still answer Ctrl-C.
      if (PyErr_CheckSignals() != 0) throw py::error_already_set();
    }
    py::tuple shape(item.shape.size());
    for (size_t i = 0; i < item.shape.size(); ++i) shape[i] = py::int_(item.shape[i]);
    TensorBuffer buffer{std::move(item.hold), item.data, item.bytes};
    return py::make_tuple(item.name, py::cast(std::move(buffer)), item.dtype, shape, item.file);
  }

  // Idempotent, and safe against a concurrent Close() or Next() from another thread: the
  // producer is taken out (under the GIL) before the GIL is released to stop it.
  void Close() {
    std::unique_ptr<Producer> producer = std::move(producer_);
    if (!producer) return;
    py::gil_scoped_release release;
    producer->Stop(std::chrono::milliseconds(2000));
  }

  py::object Report() const {
    if (!load_) return py::none();
    std::lock_guard<std::mutex> l(load_->mu);
    if (!load_->has_report) return py::none();
    const client::LoadReport& r = load_->report;
    py::list steps;
    for (const auto& s : r.steps) {
      py::dict step;
      step["strategy"] = s.strategy;
      step["outcome"] = s.outcome;
      step["reason"] = s.reason;
      step["seconds"] = s.seconds;
      step["tensors"] = s.tensors;
      step["bytes"] = s.bytes;
      steps.append(step);
    }
    py::dict out;
    out["served_by"] = r.served_by;
    out["path"] = r.path;
    out["tensors"] = r.tensors;
    out["bytes"] = r.bytes;
    out["seconds"] = r.seconds;
    out["steps"] = steps;
    out["warnings"] = load_->warnings;
    return out;
  }

 private:
  std::unique_ptr<Producer> producer_;
  std::shared_ptr<LoadState> load_;
};

std::unique_ptr<TensorStream> Stream(std::vector<std::string> uris, std::optional<int> concurrency,
                                     std::optional<std::string> chunk_bytes,
                                     std::optional<std::string> memory_limit,
                                     std::optional<bool> direct_io, size_t queue) {
  if (uris.empty()) Raise(Status::InvalidArgument("stream: no URI given"));
  streamer::StreamOptions options =
      StreamOptionsFrom(concurrency, std::move(chunk_bytes), std::move(memory_limit), direct_io);
  Producer::Job job = [uris = std::move(uris), options](const std::shared_ptr<TensorQueue>& q) {
    auto stats = streamer::StreamModel(
        uris, options, [&q](const streamer::Tensor& t, const std::shared_ptr<void>& hold) {
          return q->Push(MakeItem(t, hold));
        });
    return stats.status();
  };
  return std::make_unique<TensorStream>(queue, std::move(job), nullptr);
}

// --- the worker client ----------------------------------------------------------------------

// A server is asked only when one is named (argument or environment), as `mx load` does.
bool ServerConfigured(const std::string& endpoint) {
  return !endpoint.empty() || GetEnv("MODEL_EXPRESS_URL").has_value() ||
         GetEnv("MODEL_EXPRESS_ENDPOINT").has_value();
}

std::unique_ptr<client::MxClient> NewClient(const std::string& endpoint) {
  client::ClientOptions o;
  o.endpoint = endpoint;
  return Unwrap(client::MxClient::Create(o));
}

bool SharedStorage(std::optional<bool> shared_storage) {
  if (shared_storage) return *shared_storage;
  return !EnvIsTruthy("MODEL_EXPRESS_NO_SHARED_STORAGE");
}

// The chain's first step, as `mx load` builds it: skipped at once without a server or
// READY sources of the model.
std::unique_ptr<client::LoadStrategy> MakeP2pStrategy(client::MxClient* client) {
  return transfer::MakeP2pStrategy(client, transfer::Identity{});
}
bool P2pAvailable() { return true; }

std::unique_ptr<TensorStream> Load(std::string model, std::string revision, std::string provider,
                                   std::optional<std::string> uri, std::string endpoint,
                                   std::string cache_dir, std::optional<bool> shared_storage,
                                   std::optional<int> concurrency,
                                   std::optional<std::string> chunk_bytes,
                                   std::optional<std::string> memory_limit,
                                   std::optional<bool> direct_io, size_t queue, bool p2p_only) {
  if (Status st = hub::ValidateRepoId(model); !st.ok() && model.find("://") == std::string::npos) {
    Raise(st);
  }
  auto load = std::make_shared<LoadState>();
  client::LoadRequest r;
  r.model = model;
  r.revision = revision;
  r.provider = Unwrap(client::ParseProvider(provider));
  r.cache_root = client::ResolveCacheRoot(cache_dir);
  r.shared_storage = SharedStorage(shared_storage);
  r.model_uri = uri ? *uri : GetEnv("MX_MODEL_URI").value_or("");
  r.stream =
      StreamOptionsFrom(concurrency, std::move(chunk_bytes), std::move(memory_limit), direct_io);
  r.on_warning = [load](const std::string& text) {
    spdlog::warn("{}", text);
    std::lock_guard<std::mutex> l(load->mu);
    load->warnings.push_back(text);
  };
  std::shared_ptr<client::MxClient> c;
  if (ServerConfigured(endpoint)) c = NewClient(endpoint);
  Producer::Job job = [r = std::move(r), c, load, p2p_only](const std::shared_ptr<TensorQueue>& q) {
    client::LoaderChain chain;
    if (p2p_only) {
      chain.Add(MakeP2pStrategy(c.get()));  // mx.p2p.receive: the P2P step or nothing
    } else {
      chain = client::MakeDefaultChain(c.get(), MakeP2pStrategy(c.get()));
    }
    client::LoadReport report;
    auto loaded = chain.Load(
        r,
        [&q](const streamer::Tensor& t, const std::shared_ptr<void>& hold) {
          return q->Push(MakeItem(t, hold));
        },
        &report);
    {
      std::lock_guard<std::mutex> l(load->mu);
      load->report = report;
      load->has_report = true;
    }
    return loaded.status();
  };
  return std::make_unique<TensorStream>(queue, std::move(job), load);
}

py::dict FetchModel(std::string model, std::string revision, std::string provider,
                    std::string endpoint, std::string strategy, std::optional<bool> shared_storage,
                    std::string cache_dir, int streams) {
  client::FetchOptions o;
  o.model = model;
  o.revision = revision;
  o.provider = Unwrap(client::ParseProvider(provider));
  o.strategy = Unwrap(client::ParseStrategy(strategy));
  o.shared_storage = SharedStorage(shared_storage);
  o.cache_root = client::ResolveCacheRoot(cache_dir);
  if (streams < 1 || streams > 64) Raise(Status::InvalidArgument("streams must be 1 to 64"));
  o.streams = streams;
  o.on_warning = [](const std::string& text) { spdlog::warn("{}", text); };
  std::unique_ptr<client::MxClient> c;
  if (o.strategy != client::Strategy::kDirect) c = NewClient(endpoint);
  Result<client::FetchReport> report = Status::Internal("not run");
  {
    py::gil_scoped_release release;
    report = client::FetchModel(c.get(), o);
  }
  client::FetchReport r = Unwrap(std::move(report));
  py::dict out;
  out["path"] = r.path;
  out["commit"] = r.commit;
  out["files"] = r.files;
  out["bytes"] = r.bytes;
  out["bytes_streamed"] = r.bytes_streamed;
  out["seconds"] = r.seconds;
  out["strategy"] = r.strategy;
  return out;
}

// --- the P2P source side ----------------------------------------------------------------------

// One tensor of mx.p2p.publish_source: (name, address, bytes, safetensors dtype, shape,
// device: -1 host memory, >= 0 that CUDA device's). The memory belongs to a Python object
// the Python Source keeps alive while this one serves.
using PublishedTensor =
    std::tuple<std::string, uintptr_t, uint64_t, std::string, std::vector<uint64_t>, int>;

constexpr size_t kMaxTensorNameBytes = 1024;

// Names travel to the server and to peers: bounded, valid UTF-8, no control characters.
bool PrintableText(const std::string& s, size_t max) {
  if (s.empty() || s.size() > max || !IsValidUtf8(s)) return false;
  for (unsigned char c : s) {
    if (c < 0x20 || c == 0x7f) return false;
  }
  return true;
}

Result<transfer::LocalTensor> ToLocalTensor(const PublishedTensor& in) {
  const auto& [name, address, bytes, dtype_name, shape, device] = in;
  if (device < -1 || device > 1024) return Status::InvalidArgument(name + ": bad device index");
  if (!PrintableText(name, kMaxTensorNameBytes)) {
    return Status::InvalidArgument("tensor name must be 1 to 1024 printable characters");
  }
  std::optional<safetensors::DType> dtype = safetensors::ParseDType(dtype_name);
  if (!dtype) return Status::InvalidArgument(name + ": unknown safetensors dtype " + dtype_name);
  unsigned __int128 bits = safetensors::DTypeBits(*dtype);
  for (uint64_t d : shape) {
    bits *= d;
    if (bits > (static_cast<unsigned __int128>(1) << 80)) {
      return Status::InvalidArgument(name + ": shape too large");
    }
  }
  if ((bits + 7) / 8 != bytes) {
    return Status::InvalidArgument(name + ": " + std::to_string(bytes) +
                                   " bytes do not match its shape and dtype");
  }
  if (bytes > 0 && address == 0) return Status::InvalidArgument(name + ": no memory");
  transfer::LocalTensor t;
  t.name = name;
  t.dtype = *dtype;
  t.shape = shape;
  t.data = reinterpret_cast<char*>(address);
  t.size = bytes;
  t.device = device;
  return t;
}

// The tensors' memory as readable regions. Tensors may share memory (tied weights, views of
// one storage); regions may not overlap, so overlapping or touching ranges of one device
// are merged. CUDA tensors are read through pinned staging (transfer/device.h), which needs
// this build's CUDA support and a usable GPU: otherwise the error says which is missing.
Status RegisterMemory(const std::vector<transfer::LocalTensor>& tensors,
                      transfer::RegionRegistry* regions) {
  struct Range {
    uint64_t start, end;
    int device;
  };
  std::vector<Range> ranges;
  bool on_device = false;
  for (const auto& t : tensors) {
    if (t.size == 0) continue;
    uint64_t start = reinterpret_cast<uint64_t>(t.data);
    if (start + t.size < start) return Status::InvalidArgument(t.name + ": memory wraps around");
    ranges.push_back({start, start + t.size, t.device});
    on_device = on_device || t.device >= 0;
  }
  if (on_device) {
    Result<transfer::DeviceCopier*> copier = transfer::CudaCopier();
    if (!copier.ok()) return copier.status().WithContext("publishing CUDA tensors");
    regions->EnableDevices(*copier);
  }
  std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) {
    return std::tie(a.start, a.device) < std::tie(b.start, b.device);
  });
  std::vector<Range> merged;
  for (const auto& r : ranges) {
    if (!merged.empty() && r.start <= merged.back().end) {
      if (r.device != merged.back().device) {
        return Status::InvalidArgument("tensors on different devices share addresses");
      }
      merged.back().end = std::max(merged.back().end, r.end);
    } else {
      merged.push_back(r);
    }
  }
  for (size_t i = 0; i < merged.size(); ++i) {
    MX_RETURN_IF_ERROR(regions->Register({"tensors-" + std::to_string(i), merged[i].start,
                                          merged[i].end - merged[i].start, merged[i].device, ""},
                                         /*complete=*/true));
  }
  return Status::OK();
}

// A running P2P source: the client, the readable memory and the worker, stopped in that
// dependency order (the worker first). Stop is idempotent; the destructor stops.
class P2pSource {
 public:
  static std::unique_ptr<P2pSource> Start(std::string model, std::vector<PublishedTensor> in,
                                          std::string endpoint, std::string revision, uint32_t rank,
                                          uint32_t tp_size, uint32_t pp_size, uint32_t ep_size,
                                          std::string dtype, std::string quantization) {
    if (!PrintableText(model, kMaxTensorNameBytes)) {
      Raise(Status::InvalidArgument("model must be 1 to 1024 printable characters"));
    }
    if (tp_size < 1 || pp_size < 1 || ep_size < 1) {
      Raise(Status::InvalidArgument("tp_size, pp_size and ep_size must be at least 1"));
    }
    std::vector<transfer::LocalTensor> tensors;
    std::set<std::string> names;
    for (const auto& t : in) {
      transfer::LocalTensor local = Unwrap(ToLocalTensor(t));
      if (!names.insert(local.name).second) {
        Raise(Status::InvalidArgument("tensor " + local.name + " given twice"));
      }
      tensors.push_back(std::move(local));
    }
    if (tensors.empty()) Raise(Status::InvalidArgument("no tensors to publish"));
    transfer::WorkerOptions options = Unwrap(transfer::WorkerOptions::FromEnvironment());
    transfer::Identity identity;
    identity.model = std::move(model);
    identity.revision = std::move(revision);
    identity.rank = rank;
    identity.tp_size = tp_size;
    identity.pp_size = pp_size;
    identity.ep_size = ep_size;
    identity.dtype = std::move(dtype);
    identity.quantization = std::move(quantization);

    auto source = std::unique_ptr<P2pSource>(new P2pSource());
    source->client_ = NewClient(endpoint);
    Status st = RegisterMemory(tensors, &source->regions_);
    if (!st.ok()) Raise(st);
    Result<std::unique_ptr<transfer::Worker>> worker = Status::Internal("not run");
    {
      py::gil_scoped_release release;
      st = source->client_->Connect();
      if (st.ok()) {
        worker = transfer::Worker::Start(source->client_.get(), identity, std::move(tensors),
                                         &source->regions_, options,
                                         model_express::p2p::SOURCE_STATUS_READY);
      }
    }
    if (!st.ok()) Raise(st);
    source->worker_ = Unwrap(std::move(worker));
    return source;
  }

  ~P2pSource() {
    if (worker_ && !stopped_) {
      py::gil_scoped_release release;
      Stop();
    }
  }

  // Marks the source STALE and stops serving; afterwards the memory is no longer read.
  void StopReleasingGil() {
    py::gil_scoped_release release;
    Stop();
  }

  const transfer::Worker& worker() const { return *worker_; }
  bool stopped() const { return stopped_; }

 private:
  P2pSource() = default;
  // Serialized: a second caller returns only once the servers are down, so that Python may
  // release the tensors after any stop() returned.
  void Stop() {
    std::lock_guard<std::mutex> l(stop_mu_);
    if (worker_) worker_->Stop();
    stopped_ = true;
  }

  std::unique_ptr<client::MxClient> client_;
  transfer::RegionRegistry regions_;
  std::unique_ptr<transfer::Worker> worker_;
  std::mutex stop_mu_;
  std::atomic<bool> stopped_{false};
};

// --- the hub and the local cache --------------------------------------------------------------

py::dict Download(std::string repo_id, std::string revision, std::vector<std::string> files,
                  std::vector<std::string> include, std::vector<std::string> exclude,
                  std::string cache_dir, std::optional<std::string> local_dir, int max_workers,
                  bool force, std::optional<std::string> token) {
  if (Status st = hub::ValidateRevision(revision); !st.ok()) Raise(st);
  if (max_workers < 1 || max_workers > 256) {
    Raise(Status::InvalidArgument("max_workers must be 1 to 256"));
  }
  hub::HubConfig config = hub::HubConfig::FromEnvironment();
  config.cache_dir = client::ResolveCacheRoot(cache_dir);
  if (token) config.token = *token;
  hub::DownloadOptions o;
  o.repo_id = repo_id;
  o.revision = revision;
  o.files = std::move(files);
  o.include = std::move(include);
  o.exclude = std::move(exclude);
  o.local_dir = std::move(local_dir);
  o.max_workers = max_workers;
  o.force = force;
  o.use_cache_when_unreachable = true;  // as huggingface_hub does
  Result<hub::DownloadReport> report = Status::Internal("not run");
  {
    py::gil_scoped_release release;
    hub::HubClient client(config, hub::RepoType::kModel);
    report = hub::Download(client, o);
  }
  hub::DownloadReport r = Unwrap(std::move(report));
  py::dict out;
  out["path"] = r.path;
  out["commit"] = r.commit;
  out["files"] = r.files;
  out["bytes"] = r.bytes;
  out["bytes_fetched"] = r.bytes_fetched;
  out["seconds"] = r.seconds;
  out["from_cache"] = r.from_cache;
  return out;
}

py::object CachePath(std::string repo_id, std::string revision, std::string cache_dir) {
  if (Status st = hub::ValidateRepoId(repo_id); !st.ok()) Raise(st);
  if (Status st = hub::ValidateRevision(revision); !st.ok()) Raise(st);
  hub::RepoCache cache(client::ResolveCacheRoot(cache_dir), hub::RepoType::kModel, repo_id);
  auto commit = cache.ResolveLocal(revision);
  if (!commit.ok()) return py::none();
  std::string dir = cache.snapshot_dir(*commit);
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) return py::none();
  return py::str(dir);
}

}  // namespace
}  // namespace mx::python

PYBIND11_MODULE(_mx, m) {
  using namespace mx::python;
  m.doc() = "mx's C++ library (see the mx package for the documented API)";
  mx::InitLogging("warn");  // MX_LOG_LEVEL overrides
  py::register_exception<StatusError>(m, "MxError", PyExc_RuntimeError);

  py::class_<TensorBuffer>(m, "TensorBuffer", py::buffer_protocol())
      .def_buffer([](TensorBuffer& b) {
        // A zero-size tensor still needs a valid pointer for the buffer protocol.
        static char empty = 0;
        void* data = b.bytes ? const_cast<char*>(b.data) : &empty;
        return py::buffer_info(data, 1, py::format_descriptor<uint8_t>::format(), 1,
                               {static_cast<py::ssize_t>(b.bytes)}, {1}, /*readonly=*/true);
      })
      .def_property_readonly("nbytes", [](const TensorBuffer& b) { return b.bytes; })
      .def_property_readonly(
          "address", [](const TensorBuffer& b) { return reinterpret_cast<uintptr_t>(b.data); });

  py::class_<TensorStream>(m, "TensorStream")
      .def("__iter__", [](py::object self) { return self; })
      .def("__next__", &TensorStream::Next)
      .def("close", &TensorStream::Close)
      .def_property_readonly("report", &TensorStream::Report);

  m.def("stream", &Stream, py::arg("uris"), py::arg("concurrency") = py::none(),
        py::arg("chunk_bytes") = py::none(), py::arg("memory_limit") = py::none(),
        py::arg("direct_io") = py::none(), py::arg("queue") = 4);
  m.def("load", &Load, py::arg("model"), py::arg("revision") = "",
        py::arg("provider") = "hugging-face", py::arg("uri") = py::none(), py::arg("endpoint") = "",
        py::arg("cache_dir") = "", py::arg("shared_storage") = py::none(),
        py::arg("concurrency") = py::none(), py::arg("chunk_bytes") = py::none(),
        py::arg("memory_limit") = py::none(), py::arg("direct_io") = py::none(),
        py::arg("queue") = 4, py::arg("p2p_only") = false);
  m.def("fetch_model", &FetchModel, py::arg("model"), py::arg("revision") = "",
        py::arg("provider") = "hugging-face", py::arg("endpoint") = "",
        py::arg("strategy") = "smart-fallback", py::arg("shared_storage") = py::none(),
        py::arg("cache_dir") = "", py::arg("streams") = 4);
  m.def("download", &Download, py::arg("repo_id"), py::arg("revision") = "main",
        py::arg("files") = std::vector<std::string>(),
        py::arg("include") = std::vector<std::string>(),
        py::arg("exclude") = std::vector<std::string>(), py::arg("cache_dir") = "",
        py::arg("local_dir") = py::none(), py::arg("max_workers") = 16, py::arg("force") = false,
        py::arg("token") = py::none());
  m.def("cache_path", &CachePath, py::arg("repo_id"), py::arg("revision") = "main",
        py::arg("cache_dir") = "");
  m.def(
      "cache_root", [](std::string flag) { return mx::client::ResolveCacheRoot(flag); },
      py::arg("cache_dir") = "");
  m.def("p2p_available", &P2pAvailable);
  m.def("server_configured", &ServerConfigured, py::arg("endpoint") = "");
  py::class_<P2pSource>(m, "P2pSource")
      .def("stop", &P2pSource::StopReleasingGil)
      .def_property_readonly("stopped", &P2pSource::stopped)
      .def_property_readonly("mx_source_id",
                             [](const P2pSource& s) { return s.worker().mx_source_id(); })
      .def_property_readonly("worker_id", [](const P2pSource& s) { return s.worker().worker_id(); })
      .def_property_readonly("endpoint",
                             [](const P2pSource& s) { return s.worker().grpc_endpoint(); })
      .def_property_readonly("transfer_endpoint",
                             [](const P2pSource& s) { return s.worker().transfer_endpoint(); })
      .def_property_readonly("bytes_served",
                             [](const P2pSource& s) { return s.worker().bytes_served(); });
  m.def("publish_source", &P2pSource::Start, py::arg("model"), py::arg("tensors"),
        py::arg("endpoint") = "", py::arg("revision") = "", py::arg("rank") = 0,
        py::arg("tp_size") = 1, py::arg("pp_size") = 1, py::arg("ep_size") = 1,
        py::arg("dtype") = "", py::arg("quantization") = "");
  m.def("version", [] { return std::string(mx::Version()); });
}
