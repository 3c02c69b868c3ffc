#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/progress.h"
#include "common/env.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/text.h"
#include "storage/storage.h"
#include "streamer/cuda_upload.h"
#include "streamer/streamer.h"

namespace mx::cli {
namespace {

struct StreamArgs {
  std::vector<std::string> uris;
  std::string concurrency, chunk_size, memory_limit;
  bool verify = false;
  bool direct = false;
  bool digests = false;
  bool explain_credentials = false;
  std::string device;  // "cuda:N": tensors go on to GPU memory
};

// Peak resident memory of this process image: VmHWM. Not getrusage's ru_maxrss, which
// Linux carries over from the image before exec (a big parent that forked us would show).
uint64_t PeakRssBytes() {
  FILE* f = std::fopen("/proc/self/status", "r");
  if (f != nullptr) {
    char line[256];
    unsigned long long kib = 0;
    while (std::fgets(line, sizeof line, f)) {
      if (std::sscanf(line, "VmHWM: %llu kB", &kib) == 1) break;
    }
    std::fclose(f);
    if (kib > 0) return kib * 1024;
  }
  rusage u;
  ::getrusage(RUSAGE_SELF, &u);
  return static_cast<uint64_t>(u.ru_maxrss) * 1024;
}

// --verify: every tensor again through a separate, sequential, single-connection reader.
class Verifier {
 public:
  Status Open(const std::vector<std::string>& uris) {
    storage::StorageOptions so;
    so.connections = 1;
    for (const auto& named : uris) {
      MX_ASSIGN_OR_RETURN(std::string uri, streamer::ResolveModelUri(named));
      MX_ASSIGN_OR_RETURN(auto store, storage::OpenStorage(uri, so));
      MX_ASSIGN_OR_RETURN(auto objects, store->List(uri));
      for (const auto& o : objects) {
        MX_ASSIGN_OR_RETURN(readers_[o.name], store->Open(o));
      }
      stores_.push_back(std::move(store));
    }
    return Status::OK();
  }
  Status Check(const streamer::Tensor& t) {
    auto it = readers_.find(t.file);
    if (it == readers_.end()) return Status::Internal("verify: no reader for " + t.file);
    std::string plain(t.info.bytes(), '\0');
    MX_RETURN_IF_ERROR(
        it->second->ReadAt(t.data_start + t.info.begin, t.info.bytes(), plain.data()));
    if (std::memcmp(plain.data(), t.data, plain.size()) != 0) {
      return Status::DataLoss("verify: tensor '" + t.info.name + "' of " + t.file +
                              " differs from a plain sequential read");
    }
    return Status::OK();
  }

 private:
  std::vector<std::unique_ptr<storage::Storage>> stores_;
  std::map<std::string, std::unique_ptr<storage::RangeReader>> readers_;
};

// --explain-credentials: for each URI, which identity its backend reads with and which link
// of the cloud's credential chain supplied it. No secret is printed (the providers' Source()
// contract); nothing is read.
int ExplainCredentials(const StreamArgs& a) {
  InitLogging("warn");
  for (const auto& named : a.uris) {
    Result<std::string> uri = streamer::ResolveModelUri(named);
    if (!uri.ok()) return ReportError(uri.status());
    auto store = storage::OpenStorage(*uri, storage::StorageOptions{});
    if (!store.ok()) return ReportError(store.status());
    Result<std::string> who = (*store)->DescribeCredentials();
    if (!who.ok()) return ReportError(who.status().WithContext(named));
    std::printf("%s: %s\n", EscapeControl(named).c_str(), EscapeControl(*who).c_str());
  }
  return 0;
}

int RunStream(const StreamArgs& a, const GlobalFlags& flags) {
  if (a.explain_credentials) return ExplainCredentials(a);
  InitLogging(flags.json ? "warn" : "info");
  auto options = streamer::StreamOptions::FromEnvironment();
  if (!options.ok()) return ReportError(options.status());
  if (!a.concurrency.empty()) {
    auto c = ParseIntInRange("--concurrency", a.concurrency, 1, 1024);
    if (!c.ok()) return ReportError(c.status());
    options->concurrency = static_cast<int>(*c);
  }
  if (!a.chunk_size.empty()) {
    auto v = streamer::ParseChunkSize("--chunk-size", a.chunk_size);
    if (!v.ok()) return ReportError(v.status());
    options->chunk_bytes = *v;
  }
  if (!a.memory_limit.empty()) {
    auto v = streamer::ParseMemoryLimit("--memory-limit", a.memory_limit);
    if (!v.ok()) return ReportError(v.status());
    options->memory_limit = *v;
  }
  options->direct_io = a.direct;
  if (options->concurrency < 1)
    return ReportError(Status::InvalidArgument("--concurrency must be at least 1"));
  Verifier verifier;
  if (a.verify) {
    if (Status st = verifier.Open(a.uris); !st.ok()) return ReportError(st);
  }
  auto started = std::chrono::steady_clock::now();
  // --device cuda:N: every tensor goes on to GPU memory through the CUDA destination,
  // which owns that memory until this function returns (on every path).
  std::unique_ptr<streamer::CudaDestination> gpu;
  if (!a.device.empty()) {
    auto index = a.device.rfind("cuda:", 0) == 0
                     ? ParseIntInRange("--device", std::string_view(a.device).substr(5), 0, 1023)
                     : Result<int64_t>(Status::InvalidArgument(""));
    if (!index.ok()) {
      return ReportError(
          Status::InvalidArgument("--device must be cuda:N, not '" + a.device.substr(0, 64) + "'"));
    }
    auto dest = streamer::CudaDestination::Create(static_cast<int>(*index));
    if (!dest.ok()) return ReportError(dest.status());
    gpu = std::move(*dest);
  }
  std::map<std::string, std::string> digests;
  // Off a terminal (pod logs), a line every few seconds: what has been handed over so far.
  std::atomic<uint64_t> bytes_done{0}, tensors_done{0};
  options->bytes_read = &bytes_done;
  std::unique_ptr<PeriodicProgressLine> progress;
  if (!::isatty(STDERR_FILENO) && !flags.quiet) {
    Result<int> interval = ProgressIntervalSeconds();
    if (!interval.ok()) return ReportError(interval.status());
    progress = std::make_unique<PeriodicProgressLine>(*interval, [&](double elapsed) {
      uint64_t bytes = bytes_done.load();
      return FormatBytes(bytes) + " read, " + FormatBytes(elapsed > 0 ? bytes / elapsed : 0) +
             "/s, " + std::to_string(tensors_done.load()) + " tensors handed over, " +
             std::to_string(static_cast<long>(elapsed)) + "s elapsed";
    });
  }
  auto stats = streamer::StreamModel(
      a.uris, *options, [&](const streamer::Tensor& t, const std::shared_ptr<void>&) {
        ++tensors_done;
        if (a.digests && !gpu)
          digests[t.file + "/" + t.info.name] = Sha256Hex(std::string_view(t.data, t.info.bytes()));
        if (a.verify) MX_RETURN_IF_ERROR(verifier.Check(t));
        if (gpu) return gpu->Add(t);
        return Status::OK();
      });
  progress.reset();
  uint64_t device_bytes = 0;
  if (gpu && stats.ok()) {
    // The time includes the last copies landing on the device.
    Status synced = gpu->Finish();
    if (!synced.ok()) stats = synced;
    if (stats.ok()) {
      stats->seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
      device_bytes = gpu->uploader().bytes_uploaded();
    }
    // With --device, digests are of the bytes read back from GPU memory: they prove what
    // is on the device, not what passed through host buffers.
    for (const auto& [key, placed] : gpu->tensors()) {
      if (!stats.ok() || !a.digests) break;
      auto back = gpu->ReadBack(key);
      if (!back.ok()) {
        stats = back.status();
        break;
      }
      digests[key] = Sha256Hex(*back);
    }
  }
  if (!stats.ok()) return ReportError(stats.status());
  uint64_t rss = PeakRssBytes();
  double gbps = stats->seconds > 0 ? stats->bytes / stats->seconds / 1e9 : 0;
  if (!flags.json) {
    std::fprintf(stderr,
                 "%zu files, %zu tensors, %s in %.2fs (%.2f GB/s), first tensor after %.3fs, peak "
                 "RSS %s%s\n",
                 stats->files, stats->tensors, FormatBytes(stats->bytes).c_str(), stats->seconds,
                 gbps, stats->first_tensor_seconds, FormatBytes(rss).c_str(),
                 a.verify ? ", verified" : "");
  }
  nlohmann::json j{{"files", stats->files},
                   {"tensors", stats->tensors},
                   {"bytes", stats->bytes},
                   {"seconds", stats->seconds},
                   {"first_tensor_seconds", stats->first_tensor_seconds},
                   {"gb_per_second", gbps},
                   {"peak_rss_bytes", rss},
                   {"verified", a.verify},
                   {"device", a.device.empty() ? "cpu" : a.device},
                   {"device_bytes", device_bytes}};
  if (a.digests) j["tensor_sha256"] = digests;
  std::printf("%s\n", JsonText(j).c_str());
  return 0;
}

}  // namespace

void RegisterStream(CLI::App& app, GlobalFlags& flags, int& exit_code) {
  auto args = std::make_shared<StreamArgs>();
  CLI::App* cmd =
      app.add_subcommand("stream", "Stream every tensor of a safetensors model into memory");
  cmd->add_option(
      "uri", args->uris,
      "Model location: path, s3://, gs://, az://, http(s)://, or org/name in the HF cache "
      "(default: $MX_MODEL_URI)");
  cmd->add_option("--concurrency", args->concurrency,
                  "Parallel reads (RUNAI_STREAMER_CONCURRENCY, 16)");
  cmd->add_option("--chunk-size", args->chunk_size,
                  "Bytes per read (RUNAI_STREAMER_CHUNK_BYTESIZE, 8MiB)");
  cmd->add_option(
      "--memory-limit", args->memory_limit,
      "Buffer budget: -1 unlimited, 0 largest tensor, or bytes (RUNAI_STREAMER_MEMORY_LIMIT)");
  cmd->add_flag("--verify", args->verify, "Compare every tensor with a plain sequential read");
  cmd->add_flag("--direct", args->direct,
                "Local files: O_DIRECT (cold reads, bypass the page cache)");
  cmd->add_option(
      "--device", args->device,
      "cuda:N: copy every tensor on to that GPU (pinned staging, overlapped with reads)");
  cmd->add_flag("--tensor-digests", args->digests,
                "Add each tensor's sha256 to the JSON summary (with --device: of the bytes read "
                "back from GPU memory)");
  cmd->add_flag("--explain-credentials", args->explain_credentials,
                "Say which identity (and which link of the cloud's credential chain) each URI "
                "is read with, then exit; prints no secret");
  cmd->add_flag("--json", flags.json, "Only the JSON summary");
  cmd->callback([args, &flags, &exit_code] {
    if (args->uris.empty()) {
      if (auto env = GetEnv("MX_MODEL_URI"); env && !env->empty()) args->uris.push_back(*env);
    }
    if (args->uris.empty()) {
      exit_code = ReportError(Status::InvalidArgument("give a model URI or set MX_MODEL_URI"));
      return;
    }
    exit_code = RunStream(*args, flags);
  });
}

}  // namespace mx::cli
