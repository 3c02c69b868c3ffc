// The streamer: reads every tensor of a safetensors model (local files, s3://, gs://,
// az://, http(s)://, or a hub id in the local cache) into memory at the storage's speed,
// with bounded memory, handing each tensor to the consumer as soon as its bytes are in.
//
// Pipeline: plan (headers -> batches of whole tensors, at most one chunk each, or one big
// tensor) -> a byte budget admits batches in order -> `concurrency` workers read chunk-
// sized pieces of admitted batches -> a batch whose pieces are all in is handed to the
// consumer tensor by tensor on the caller's thread. A batch's memory goes back to the
// budget only when the consumer has released it: never reused while held.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "safetensors/safetensors.h"

namespace mx::streamer {

struct StreamOptions {
  int concurrency = 16;               // RUNAI_STREAMER_CONCURRENCY: parallel reads
  uint64_t chunk_bytes = 8ull << 20;  // RUNAI_STREAMER_CHUNK_BYTESIZE: bytes per read
  // RUNAI_STREAMER_MEMORY_LIMIT: -1 unlimited, 0 = the largest tensor, N bytes.
  int64_t memory_limit = -1;
  bool direct_io = false;  // local files: O_DIRECT (cold reads, no page cache)
  // When set, every piece read (or paged in) adds its bytes here as it completes, before
  // its tensors are handed over: progress for pod logs. Owned by the caller.
  std::atomic<uint64_t>* bytes_read = nullptr;

  // Defaults overridden by the RUNAI_STREAMER_* variables. InvalidArgument on bad values.
  // Sizes take units (8MiB, 2GiB) as every size setting of mx does.
  static Result<StreamOptions> FromEnvironment();
};

// The most bytes one read may ask for (a chunk is also a buffer): 1 GiB.
inline constexpr uint64_t kMaxChunkBytes = 1ull << 30;
// A chunk size (RUNAI_STREAMER_CHUNK_BYTESIZE, --chunk-size): 1 byte to 1 GiB, with units;
// the error names `what` and the range.
Result<uint64_t> ParseChunkSize(std::string_view what, std::string_view text);
// A memory limit (RUNAI_STREAMER_MEMORY_LIMIT, --memory-limit): -1 (unlimited), 0 (the
// largest tensor) or a size with units.
Result<int64_t> ParseMemoryLimit(std::string_view what, std::string_view text);

struct Tensor {
  const std::string& file;  // object name ("model-00001-of-00002.safetensors")
  const safetensors::TensorInfo& info;
  uint64_t data_start;  // the file's data offset: the tensor sits at data_start + info.begin
  const char* data;     // info.bytes() bytes
};

// Called on the caller's thread, one tensor at a time. `data` stays valid until the
// callback returns, or for as long as the consumer keeps a copy of `hold`.
// A non-OK return stops the stream with that status.
using TensorCallback =
    std::function<Status(const Tensor& tensor, const std::shared_ptr<void>& hold)>;

// When set, tensors are read straight into caller-owned memory (the loader's tensors):
// returns where tensor `info` of `file` goes (info.bytes() bytes). No budget applies.
using Destination =
    std::function<char*(const std::string& file, const safetensors::TensorInfo& info)>;

struct StreamStats {
  size_t files = 0;
  size_t tensors = 0;
  uint64_t bytes = 0;  // tensor bytes delivered
  double seconds = 0;
  double first_tensor_seconds = 0;
};

// The safetensors files a URI names (an index.json's shards when there is one).
struct ModelFile {
  std::string uri;   // the object's URI
  std::string name;  // relative name
  uint64_t size = 0;
};

// The storage URI for what the user named: a scheme:// URI or an absolute, ./ or ../ path
// comes back unchanged, and a relative name that exists on disk (a directory or a file:
// `cd origin; mx stream acme/m`) comes back as ./acme/m; only a name that exists nowhere
// here is a hub id, org/name[@revision], and becomes its snapshot directory in the local
// HF cache (NotFound, naming the fix, when absent). Logs the choice at debug level
// (`mx -v`). StreamModel applies it to every URI.
Result<std::string> ResolveModelUri(const std::string& uri);

Result<StreamStats> StreamModel(const std::vector<std::string>& uris, const StreamOptions& options,
                                const TensorCallback& on_tensor,
                                const Destination& destination = nullptr);

}  // namespace mx::streamer
