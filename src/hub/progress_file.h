// ProgressFile: the sidecar "<temp>.progress" that records, per chunk of a partial
// download, how many leading bytes are already written. It is what lets a run resume a
// temp file left by a killed process without trusting any byte it cannot account for.
//
// Layout: "MXPROG01", u64 file size, u64 chunk bytes, then one u64 per chunk (bytes done
// from the chunk's start), all little-endian. Updated with pwrite after the data it
// describes was written, so a kill between the two only under-reports.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "http/range_engine.h"

namespace mx::hub {

class ProgressFile {
 public:
  ProgressFile() = default;
  ~ProgressFile();
  ProgressFile(ProgressFile&& other) noexcept;
  ProgressFile& operator=(ProgressFile&& other) noexcept;

  // Bounds on the chunk table: a record that would need more than kMaxChunks entries (8 MiB
  // of table) or chunks under kMinChunkBytes is refused, whoever wrote it.
  static constexpr uint64_t kMinChunkBytes = 4096;
  static constexpr uint64_t kMaxChunks = 1u << 20;
  // Chunks of `chunk_bytes` needed to cover `file_size` bytes; nullopt outside the bounds.
  static std::optional<size_t> ChunkCount(uint64_t file_size, uint64_t chunk_bytes);

  // A fresh record with nothing done, in a new inode (whatever had the name is unlinked;
  // opened O_NOFOLLOW | O_EXCL). InvalidArgument for a chunk size outside the bounds.
  static Result<ProgressFile> Create(const std::string& path, uint64_t file_size,
                                     uint64_t chunk_bytes);
  // An existing record; DataLoss if it does not describe a file of `file_size` bytes or is
  // implausible (a chunk size of 0, a tiny one that would need a huge table, one that
  // wraps to zero chunks, a table shorter than the file needs), or is not a regular file
  // owned by the effective user (opened O_NOFOLLOW, then fstat). Callers treat DataLoss as
  // "start over": nothing in the temp file is trusted. Never throws or aborts.
  static Result<ProgressFile> Open(const std::string& path, uint64_t file_size);

  size_t chunk_count() const { return done_.size(); }
  uint64_t chunk_bytes() const { return chunk_bytes_; }
  // The part of chunk k not yet written.
  http::ByteRange MissingInChunk(size_t k) const;
  // Bytes of the file already accounted for.
  uint64_t BytesDone() const;
  // End of the written prefix [0, end) of the file. `first_open` is a cursor the caller
  // keeps between calls (start at 0) so repeated calls cost O(1) amortized.
  uint64_t PrefixEnd(size_t* first_open) const;
  // Chunk k is written up to absolute offset `cursor`.
  void Record(size_t k, uint64_t cursor);

  void Close();
  void Remove();  // closes and unlinks

 private:
  int fd_ = -1;
  std::string path_;
  uint64_t size_ = 0;
  uint64_t chunk_bytes_ = 0;
  std::vector<uint64_t> done_;
};

}  // namespace mx::hub
