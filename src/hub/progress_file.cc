#include "hub/progress_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace mx::hub {

static constexpr char kMagic[8] = {'M', 'X', 'P', 'R', 'O', 'G', '0', '1'};
static constexpr size_t kHeaderBytes = 24;

std::optional<size_t> ProgressFile::ChunkCount(uint64_t file_size, uint64_t chunk_bytes) {
  if (chunk_bytes < kMinChunkBytes) return std::nullopt;
  // (size - 1) / chunk + 1, not (size + chunk - 1) / chunk: the latter wraps to 0 chunks
  // for a huge chunk size, and 0 chunks would read as "everything written".
  uint64_t chunks = file_size == 0 ? 0 : (file_size - 1) / chunk_bytes + 1;
  if (chunks > kMaxChunks) return std::nullopt;
  return static_cast<size_t>(chunks);
}

ProgressFile::~ProgressFile() { Close(); }

ProgressFile::ProgressFile(ProgressFile&& o) noexcept { *this = std::move(o); }

ProgressFile& ProgressFile::operator=(ProgressFile&& o) noexcept {
  if (this != &o) {
    Close();
    fd_ = o.fd_;
    path_ = std::move(o.path_);
    size_ = o.size_;
    chunk_bytes_ = o.chunk_bytes_;
    done_ = std::move(o.done_);
    o.fd_ = -1;
  }
  return *this;
}

Result<ProgressFile> ProgressFile::Create(const std::string& path, uint64_t file_size,
                                          uint64_t chunk_bytes) {
  auto chunks = ChunkCount(file_size, chunk_bytes);
  if (!chunks) {
    return Status::InvalidArgument("chunk size " + std::to_string(chunk_bytes) + " for a file of " +
                                   std::to_string(file_size) + " bytes");
  }
  ProgressFile p;
  p.path_ = path;
  p.size_ = file_size;
  p.chunk_bytes_ = chunk_bytes;
  p.done_.assign(*chunks, 0);
  // A fresh inode of our own: whatever held the name (a stale record, or a file or
  // symlink a shared-cache neighbour planted) is unlinked, never written through.
  ::unlink(path.c_str());
  p.fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (p.fd_ < 0) return Status::FromErrno(errno, "create " + path);
  std::vector<char> buf(kHeaderBytes + 8 * p.done_.size(), 0);
  std::memcpy(buf.data(), kMagic, 8);
  std::memcpy(buf.data() + 8, &p.size_, 8);
  std::memcpy(buf.data() + 16, &p.chunk_bytes_, 8);
  if (::pwrite(p.fd_, buf.data(), buf.size(), 0) != static_cast<ssize_t>(buf.size())) {
    return Status::FromErrno(errno, "write " + path);
  }
  return p;
}

Result<ProgressFile> ProgressFile::Open(const std::string& path, uint64_t file_size) {
  ProgressFile p;
  p.path_ = path;
  p.fd_ = ::open(path.c_str(), O_RDWR | O_NOFOLLOW | O_CLOEXEC);
  if (p.fd_ < 0) return Status::FromErrno(errno, "open " + path);
  // Only our own regular file is trusted (a shared cache: someone else's may lie).
  struct stat own;
  if (::fstat(p.fd_, &own) != 0 || !S_ISREG(own.st_mode) || own.st_uid != ::geteuid()) {
    return Status::DataLoss(path + ": not a regular file owned by this user");
  }
  char header[kHeaderBytes];
  if (::pread(p.fd_, header, kHeaderBytes, 0) != static_cast<ssize_t>(kHeaderBytes) ||
      std::memcmp(header, kMagic, 8) != 0) {
    return Status::DataLoss(path + ": not a progress record");
  }
  std::memcpy(&p.size_, header + 8, 8);
  std::memcpy(&p.chunk_bytes_, header + 16, 8);
  if (p.size_ != file_size) return Status::DataLoss(path + ": describes a different file");
  // The record comes from disk (another process, a crash, anyone with write access): its
  // chunk size decides an allocation, so it is checked before anything is sized by it.
  auto chunks = ChunkCount(file_size, p.chunk_bytes_);
  if (!chunks) {
    return Status::DataLoss(path + ": implausible chunk size " + std::to_string(p.chunk_bytes_));
  }
  struct stat st;
  if (::fstat(p.fd_, &st) != 0 ||
      static_cast<uint64_t>(st.st_size) < kHeaderBytes + 8 * static_cast<uint64_t>(*chunks)) {
    return Status::DataLoss(path + ": truncated progress record");
  }
  p.done_.assign(*chunks, 0);
  ssize_t want = static_cast<ssize_t>(8 * p.done_.size());
  if (::pread(p.fd_, p.done_.data(), static_cast<size_t>(want), kHeaderBytes) != want) {
    return Status::DataLoss(path + ": truncated progress record");
  }
  for (size_t k = 0; k < p.done_.size(); ++k) {
    uint64_t len = std::min(p.chunk_bytes_, file_size - k * p.chunk_bytes_);
    if (p.done_[k] > len) p.done_[k] = 0;  // nonsense: trust nothing in this chunk
  }
  return p;
}

http::ByteRange ProgressFile::MissingInChunk(size_t k) const {
  uint64_t begin = k * chunk_bytes_;
  uint64_t end = std::min(size_, begin + chunk_bytes_);
  return {begin + done_[k], end};
}

uint64_t ProgressFile::BytesDone() const {
  uint64_t total = 0;
  for (uint64_t d : done_) total += d;
  return total;
}

uint64_t ProgressFile::PrefixEnd(size_t* first_open) const {
  size_t& k = *first_open;
  while (k < done_.size() && done_[k] == std::min(chunk_bytes_, size_ - k * chunk_bytes_)) ++k;
  if (k == done_.size()) return size_;
  return k * chunk_bytes_ + done_[k];
}

void ProgressFile::Record(size_t k, uint64_t cursor) {
  uint64_t done = cursor - k * chunk_bytes_;
  if (done <= done_[k]) return;
  done_[k] = done;
  if (fd_ >= 0) {
    // Best effort: a lost update only means re-fetching bytes we already had.
    (void)::pwrite(fd_, &done, 8, static_cast<off_t>(kHeaderBytes + 8 * k));
  }
}

void ProgressFile::Close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

void ProgressFile::Remove() {
  Close();
  if (!path_.empty()) ::unlink(path_.c_str());
}

}  // namespace mx::hub
