// FetchModel: gets one model onto this worker through mx-server, the way ModelExpress's
// workers do, without its known failure modes.
//
// Contract:
// - Strategy kSmartFallback (default): ask the server; when it is unreachable or failing
//   (Unavailable, Internal, DataLoss, ...) download from the hub with hub::Download, with
//   one warning saying why. kServerOnly: the server's error, within the connect timeout
//   (~3 s) when it is absent. kDirect: the hub only; the server is never contacted.
// - The server first ensures the model (EnsureModelDownloaded; its updates drive
//   on_progress). Then, with shared storage (default), the snapshot at the commit the
//   server resolved must be complete under this process's cache root (every file
//   ListModelFiles names, with its size). When it is not, ONE warning says so and the
//   files are streamed instead: never a silent switch to the hub.
// - Without shared storage the files are streamed (StreamModelFiles) into the local HF
//   cache: temp file in blobs/, size and hash checked (the server's blob name from
//   ListModelFiles when it gives one: sha256 for LFS files, git blob sha1 otherwise),
//   fsync, rename to blobs/<hash>, snapshot symlink, and refs/<revision> last, after
//   every file is in place. `streams` calls run in parallel over one channel, each for a
//   share of the files. Every call is pinned to the commit the server resolved: a chunk
//   that carries another commit, or a second phase that resolves another one, is
//   FailedPrecondition and nothing of the other commit is written.
// - Two phases, callable separately (Phase): metadata (ignore_weights: config,
//   tokenizer, index) and then the rest; kAll runs both. A file already complete in the
//   cache is never fetched again, so no file crosses the network twice in one run,
//   whatever falls back to what.
// - Object-store models (provider s3 / gcs, names s3://BUCKET/PREFIX, gs://...) live in
//   ModelExpress's layout, <cache_root>/s3|gcs/<bucket>/<prefix>/, files at their relative
//   paths (temp files in .mx-incoming/ until verified), the marker .mx-model last.
// - A dropped stream is retried (for up to resume_seconds without progress): files that
//   completed stay, and a file cut off mid-way resumes from the bytes already written and
//   hashed (ModelFilesRequest.start_offsets, an mx extension; a server without it starts
//   the file again at 0, and so does the client). A file whose hash does not match is
//   fetched again from 0, at most twice.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "client/client.h"
#include "common/status.h"

namespace mx::client {

enum class Strategy { kSmartFallback, kServerOnly, kDirect };
Result<Strategy> ParseStrategy(const std::string& text);
const char* StrategyName(Strategy s);

// hugging-face | s3 | gcs | ngc -> ModelProvider number.
Result<int> ParseProvider(const std::string& text);

enum class Phase { kAll, kMetadata, kWeights };

// True for files EnsureModelDownloaded's ignore_weights leaves out.
bool IsWeightFile(const std::string& path);

struct FetchProgress {
  std::string stage;  // "server", "stream", "hub"
  std::string message;
  uint64_t bytes_done = 0;
  uint64_t bytes_total = 0;
  size_t files_done = 0;
  size_t files_total = 0;
};

// Default transfer chunk size: measured fastest of 256 KiB / 1 / 4 / 16 MiB for a
// 256 MiB no-shared-storage install over loopback (README, "Worker side").
constexpr uint32_t kDefaultChunkBytes = 1u << 20;

struct FetchOptions {
  std::string model;
  int provider = 0;      // ModelProvider
  std::string revision;  // empty = "main"
  Strategy strategy = Strategy::kSmartFallback;
  bool shared_storage = true;
  std::string cache_root;
  uint32_t chunk_size = kDefaultChunkBytes;
  int streams = 4;
  Phase phase = Phase::kAll;
  std::optional<std::string> expect_commit;  // refuse any other commit
  int resume_seconds = 60;
  std::function<void(const FetchProgress&)> on_progress;  // serialized
  std::function<void(const std::string&)> on_warning;
};

struct FetchReport {
  std::string path;  // the local snapshot directory
  std::string commit;
  size_t files = 0;
  uint64_t bytes = 0;
  uint64_t bytes_streamed = 0;
  double seconds = 0;
  std::string strategy;  // "shared-storage", "stream", "hub"
};

// `client` may be null for kDirect.
Result<FetchReport> FetchModel(MxClient* client, const FetchOptions& options);

// Where an object-store model (provider s3/gcs, or an s3:// / gs:// name) lives under
// `cache_root`: <cache_root>/s3|gcs/<bucket>/<prefix>, ModelExpress's layout, with the
// marker .mx-model written last. nullopt for hub models; InvalidArgument for a bad name.
Result<std::optional<std::string>> ObjectModelDir(const std::string& cache_root, int provider,
                                                  const std::string& model);

// The local cache root: flag, else MODEL_EXPRESS_CACHE_DIRECTORY, else HF_HUB_CACHE, else
// $HF_HOME/hub, else ~/.cache/huggingface/hub.
std::string ResolveCacheRoot(const std::string& flag);

}  // namespace mx::client
