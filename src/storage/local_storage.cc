// Local files: parallel pread, or O_DIRECT with reads rounded out to 4 KiB and trimmed.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "storage/backends.h"

namespace mx::storage {
namespace {

namespace fs = std::filesystem;
constexpr uint64_t kDirectAlign = 4096;

class LocalReader : public RangeReader {
 public:
  LocalReader(ObjectInfo info, int fd, bool direct)
      : info_(std::move(info)), fd_(fd), direct_(direct) {}
  ~LocalReader() override { ::close(fd_); }
  const ObjectInfo& info() const override { return info_; }
  uint64_t alignment() const override { return direct_ ? kDirectAlign : 1; }

  Result<const char*> Map(uint64_t offset, uint64_t len, void** base, size_t* mapped) override {
    if (direct_) return Status::Unimplemented("O_DIRECT reads bypass the page cache");
    if (offset + len > info_.size) return Status::InvalidArgument(info_.uri + ": map past the end");
    static const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
    uint64_t start = offset / page * page;
    size_t length = static_cast<size_t>(offset + len - start);
    if (length == 0) length = 1;
    void* p = ::mmap(nullptr, length, PROT_READ, MAP_SHARED, fd_, static_cast<off_t>(start));
    if (p == MAP_FAILED) return Status::FromErrno(errno, "mmap " + info_.uri);
    *base = p;
    *mapped = length;
    return static_cast<const char*>(p) + (offset - start);
  }

  Status Populate(const char* data, uint64_t len) override {
    static const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
    uintptr_t start = reinterpret_cast<uintptr_t>(data) / page * page;
    size_t length = reinterpret_cast<uintptr_t>(data) + len - start;
#ifdef MADV_POPULATE_READ
    if (::madvise(reinterpret_cast<void*>(start), length, MADV_POPULATE_READ) == 0)
      return Status::OK();
    if (errno == EFAULT || errno == EIO) return Status::FromErrno(errno, "read " + info_.uri);
#endif
    // Older kernels: touch one byte a page.
    volatile char sink = 0;
    for (uintptr_t a = start; a < start + length; a += page)
      sink = sink + *reinterpret_cast<const char*>(a);
    return Status::OK();
  }

  Status ReadAt(uint64_t offset, uint64_t len, char* dst) override {
    if (offset + len > info_.size)
      return Status::InvalidArgument(info_.uri + ": read past the end");
    if (!direct_) return PreadFully(offset, len, dst);
    uint64_t begin = offset / kDirectAlign * kDirectAlign;
    uint64_t end = (offset + len + kDirectAlign - 1) / kDirectAlign * kDirectAlign;
    bool aligned = begin == offset && len % kDirectAlign == 0 &&
                   reinterpret_cast<uintptr_t>(dst) % kDirectAlign == 0;
    if (aligned) return PreadFully(offset, len, dst);
    // Round out to the device's alignment into a bounce buffer, then trim.
    void* bounce = nullptr;
    if (::posix_memalign(&bounce, kDirectAlign, end - begin) != 0) {
      return Status::ResourceExhausted("no memory for an O_DIRECT buffer");
    }
    Status st =
        PreadFully(begin, std::min(end, RoundUp(info_.size)) - begin, static_cast<char*>(bounce),
                   /*allow_short=*/true);
    if (st.ok()) std::memcpy(dst, static_cast<char*>(bounce) + (offset - begin), len);
    std::free(bounce);
    return st;
  }

 private:
  static uint64_t RoundUp(uint64_t n) {
    return (n + kDirectAlign - 1) / kDirectAlign * kDirectAlign;
  }

  Status PreadFully(uint64_t offset, uint64_t len, char* dst, bool allow_short = false) {
    uint64_t done = 0;
    while (done < len) {
      ssize_t n = ::pread(fd_, dst + done, len - done, static_cast<off_t>(offset + done));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return Status::FromErrno(errno, "read " + info_.uri);
      if (n == 0) {
        if (allow_short && offset + done >= info_.size) return Status::OK();  // O_DIRECT tail
        return Status::DataLoss(info_.uri + " is shorter than it was (truncated while reading?)");
      }
      done += static_cast<uint64_t>(n);
    }
    return Status::OK();
  }

  ObjectInfo info_;
  int fd_;
  bool direct_;
};

class LocalStorage : public Storage {
 public:
  explicit LocalStorage(StorageOptions o) : options_(o) {}

  Result<std::vector<ObjectInfo>> List(const std::string& uri) override {
    std::string path = uri.rfind("file://", 0) == 0 ? uri.substr(7) : uri;
    std::error_code ec;
    fs::file_status st = fs::status(path, ec);
    if (ec || !fs::exists(st)) return Status::NotFound("no such file or directory: " + path);
    std::vector<ObjectInfo> out;
    if (fs::is_regular_file(st)) {
      out.push_back({path, fs::path(path).filename(), fs::file_size(path)});
      return out;
    }
    for (auto it = fs::recursive_directory_iterator(path, ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (!it->is_regular_file()) continue;  // follows symlinks (HF snapshots are symlinks)
      out.push_back(
          {it->path().string(), it->path().lexically_relative(path).string(), it->file_size()});
    }
    std::sort(out.begin(), out.end(),
              [](const ObjectInfo& a, const ObjectInfo& b) { return a.name < b.name; });
    if (out.empty()) return Status::NotFound("no files under " + path);
    return out;
  }

  Result<std::unique_ptr<RangeReader>> Open(const ObjectInfo& object) override {
    int flags = O_RDONLY | O_CLOEXEC | (options_.direct_io ? O_DIRECT : 0);
    int fd = ::open(object.uri.c_str(), flags);
    if (fd < 0 && options_.direct_io && errno == EINVAL) {
      return Status::InvalidArgument(object.uri + ": this filesystem does not support O_DIRECT");
    }
    if (fd < 0) return Status::FromErrno(errno, "open " + object.uri);
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    return std::unique_ptr<RangeReader>(new LocalReader(object, fd, options_.direct_io));
  }

 private:
  StorageOptions options_;
};

}  // namespace

Result<std::unique_ptr<Storage>> OpenLocalStorage(const StorageOptions& options) {
  return std::unique_ptr<Storage>(new LocalStorage(options));
}

}  // namespace mx::storage
