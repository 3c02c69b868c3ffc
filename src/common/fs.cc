#include "common/fs.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <ctime>
#include <limits>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>

namespace mx {

Status MakeDirs(const std::string& path, mode_t mode) {
  if (path.empty()) return Status::OK();
  struct stat st;
  if (::stat(path.c_str(), &st) == 0) {
    if (S_ISDIR(st.st_mode)) return Status::OK();
    return Status::IoError(path + " exists and is not a directory");
  }
  std::string parent = DirName(path);
  if (!parent.empty() && parent != path) MX_RETURN_IF_ERROR(MakeDirs(parent, mode));
  if (::mkdir(path.c_str(), mode) != 0 && errno != EEXIST) {
    return Status::FromErrno(errno, "mkdir " + path);
  }
  return Status::OK();
}

void ScopedFd::Reset(int fd) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

Result<std::string> ReadFile(const std::string& path, uint64_t max_bytes, bool no_follow) {
  int flags = O_RDONLY | O_CLOEXEC | O_NONBLOCK | (no_follow ? O_NOFOLLOW : 0);
  ScopedFd fd(::open(path.c_str(), flags));
  if (!fd.valid()) return Status::FromErrno(errno, "open " + path);
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Status::FromErrno(errno, "read " + path);
    if (n == 0) break;
    if (out.size() + static_cast<uint64_t>(n) > max_bytes) {
      return Status::ResourceExhausted(path + " is larger than " + std::to_string(max_bytes) +
                                       " bytes");
    }
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

static Status WriteAll(int fd, std::string_view data, const std::string& what) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Status::FromErrno(errno, "write " + what);
    data.remove_prefix(static_cast<size_t>(n));
  }
  return Status::OK();
}

Status WriteFileAtomic(const std::string& path, std::string_view contents) {
  std::string tmp = path + "." + UniqueTempSuffix() + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666);
  if (fd < 0) return Status::FromErrno(errno, "create " + tmp);
  Status st = WriteAll(fd, contents, tmp);
  if (st.ok() && ::fsync(fd) != 0) st = Status::FromErrno(errno, "fsync " + tmp);
  ::close(fd);
  if (st.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) {
    st = Status::FromErrno(errno, "rename to " + path);
  }
  if (!st.ok()) ::unlink(tmp.c_str());
  return st;
}

Status ReplaceSymlink(const std::string& target, const std::string& link_path) {
  std::string tmp = link_path + "." + UniqueTempSuffix() + ".tmp";
  if (::symlink(target.c_str(), tmp.c_str()) != 0) {
    return Status::FromErrno(errno, "symlink " + link_path);
  }
  if (::rename(tmp.c_str(), link_path.c_str()) != 0) {
    Status st = Status::FromErrno(errno, "rename symlink to " + link_path);
    ::unlink(tmp.c_str());
    return st;
  }
  return Status::OK();
}

static std::string HostForSuffix() {
  char host[256] = {0};
  ::gethostname(host, sizeof host - 1);
  std::string h;
  for (const char* p = host; *p; ++p) {
    char c = *p;
    bool keep = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    h.push_back(keep ? c : '_');
  }
  return h.empty() ? "host" : h;
}

std::string UniqueTempSuffix() {
  static std::atomic<uint64_t> counter{0};
  static const uint64_t seed = std::random_device{}() ^ (uint64_t(std::random_device{}()) << 32);
  uint64_t r = seed + 0x9e3779b97f4a7c15ull * (++counter);
  char rnd[17];
  std::snprintf(rnd, sizeof rnd, "%016llx", static_cast<unsigned long long>(r));
  return "mx-" + HostForSuffix() + "-" + std::to_string(::getpid()) + "-" + rnd;
}

std::optional<TempOwner> ParseTempOwner(std::string_view suffix) {
  // mx-<host>-<pid>-<16 hex>; host has no '-' replaced... it may contain '_' but not '-'
  // only if the hostname had none, so parse from the right.
  if (suffix.substr(0, 3) != "mx-") return std::nullopt;
  size_t last = suffix.rfind('-');
  if (last == std::string_view::npos || last < 3) return std::nullopt;
  size_t pid_dash = suffix.rfind('-', last - 1);
  if (pid_dash == std::string_view::npos || pid_dash < 3) return std::nullopt;
  std::string pid_text(suffix.substr(pid_dash + 1, last - pid_dash - 1));
  if (pid_text.empty() || pid_text.find_first_not_of("0123456789") != std::string::npos) {
    return std::nullopt;
  }
  // from_chars, not stol: a hostile or corrupt name ("...-99999999999999999999-...") must
  // read as "not ours", never throw.
  long long pid = 0;
  auto [end, ec] = std::from_chars(pid_text.data(), pid_text.data() + pid_text.size(), pid);
  if (ec != std::errc() || end != pid_text.data() + pid_text.size() || pid <= 0 ||
      pid > std::numeric_limits<pid_t>::max()) {
    return std::nullopt;
  }
  TempOwner owner;
  owner.host = std::string(suffix.substr(3, pid_dash - 3));
  owner.pid = static_cast<pid_t>(pid);
  return owner;
}

bool TempOwnerIsDead(const TempOwner& owner) {
  if (owner.host != HostForSuffix()) return false;  // cannot tell across hosts
  return ::kill(owner.pid, 0) != 0 && errno == ESRCH;
}

namespace {

// Temp files threads of this process are writing (OwnedTempFile).
std::mutex& OwnedMu() {
  static std::mutex mu;
  return mu;
}
std::multiset<std::string>& OwnedPaths() {
  static std::multiset<std::string> paths;
  return paths;
}

}  // namespace

OwnedTempFile::OwnedTempFile(std::string path) : path_(std::move(path)) {
  std::lock_guard<std::mutex> l(OwnedMu());
  OwnedPaths().insert(path_);
}

OwnedTempFile::~OwnedTempFile() { Release(); }

OwnedTempFile::OwnedTempFile(OwnedTempFile&& other) noexcept : path_(std::move(other.path_)) {
  other.path_.clear();
}

OwnedTempFile& OwnedTempFile::operator=(OwnedTempFile&& other) noexcept {
  if (this != &other) {
    Release();
    path_ = std::move(other.path_);
    other.path_.clear();
  }
  return *this;
}

void OwnedTempFile::Release() {
  if (path_.empty()) return;
  std::lock_guard<std::mutex> l(OwnedMu());
  auto it = OwnedPaths().find(path_);
  if (it != OwnedPaths().end()) OwnedPaths().erase(it);
  path_.clear();
}

bool IsOwnedTempFile(const std::string& path) {
  std::lock_guard<std::mutex> l(OwnedMu());
  return OwnedPaths().count(path) > 0;
}

bool TempFileIsOrphaned(const std::string& path, std::string_view owner_suffix) {
  constexpr int kStaleSeconds = 600;
  // A temp file's ".progress" sidecar belongs to whoever owns the temp file.
  constexpr std::string_view kSidecar = ".progress";
  std::string_view main_path = path;
  if (main_path.size() > kSidecar.size() &&
      main_path.substr(main_path.size() - kSidecar.size()) == kSidecar) {
    main_path.remove_suffix(kSidecar.size());
  }
  if (IsOwnedTempFile(std::string(main_path))) return false;  // a thread of ours writes it
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) return false;
  if (std::time(nullptr) - st.st_mtime > kStaleSeconds) return true;
  auto owner = ParseTempOwner(owner_suffix);
  if (!owner) return false;
  // Ours, yet no thread of ours writes it: left by an earlier attempt of this process.
  if (owner->host == HostForSuffix() && owner->pid == ::getpid()) return true;
  return TempOwnerIsDead(*owner);
}

namespace {

// "Umask:\t0022" from /proc/self/status; nullopt without /proc (or on kernels < 4.7).
std::optional<mode_t> UmaskFromProc() {
  int fd = ::open("/proc/self/status", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  char buf[4096];
  std::string text;
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    text.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  size_t at = text.find("\nUmask:");
  if (at == std::string::npos) return std::nullopt;
  size_t begin = text.find_first_of("01234567", at + 7);
  if (begin == std::string::npos) return std::nullopt;
  unsigned value = 0;
  auto [end, ec] = std::from_chars(text.data() + begin, text.data() + text.size(), value, 8);
  if (ec != std::errc() || value > 0777) return std::nullopt;
  return static_cast<mode_t>(value);
}

// Computed during static initialization, before main() can start threads: the one moment
// when reading the umask by setting it cannot race with another thread creating a file.
const mode_t kStartupUmask = [] {
  if (auto mask = UmaskFromProc()) return *mask;
  mode_t mask = ::umask(022);
  ::umask(mask);
  return mask;
}();

}  // namespace

mode_t DefaultFileMode() {
  mode_t mask = UmaskFromProc().value_or(kStartupUmask);
  return static_cast<mode_t>(0666 & ~mask);
}

static bool FlockDisabledForTests() {
  const char* v = std::getenv("MX_TEST_DISABLE_FLOCK");
  return v != nullptr && std::string(v) == "1";
}

FileLock::~FileLock() { Release(); }

FileLock::FileLock(FileLock&& other) noexcept : fd_(other.fd_), held_(other.held_) {
  other.fd_ = -1;
  other.held_ = false;
}

FileLock& FileLock::operator=(FileLock&& other) noexcept {
  if (this != &other) {
    Release();
    fd_ = other.fd_;
    held_ = other.held_;
    other.fd_ = -1;
    other.held_ = false;
  }
  return *this;
}

void FileLock::Release() {
  if (fd_ >= 0) ::close(fd_);  // closing drops the flock
  fd_ = -1;
  held_ = false;
}

bool FileLock::TryLockFd(int fd) {
  if (FlockDisabledForTests()) return true;
  return ::flock(fd, LOCK_EX | LOCK_NB) == 0;
}

Result<FileLock> FileLock::TryAcquire(const std::string& path, LockMode mode) {
  FileLock lock;
  if (FlockDisabledForTests()) {
    lock.held_ = true;
    return lock;
  }
  // O_NOFOLLOW everywhere: on a shared cache a neighbour may plant a symlink named like
  // our lock file; following it would let them make us open (and chmod) any file.
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0664);
  if (fd >= 0) {
    // Only a file we just created: group-writable so other users of a shared cache can
    // lock too. Never chmod an existing file (it may be someone else's).
    ::fchmod(fd, 0664);
  } else if (errno == EEXIST) {
    fd = ::open(path.c_str(), O_RDWR | O_NOFOLLOW | O_CLOEXEC);
  }
  if (fd < 0 && (errno == EACCES || errno == EROFS)) {
    fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);  // flock needs no write access
  }
  if (fd < 0) return Status::FromErrno(errno, "open lock " + path);
  lock.fd_ = fd;
  int op = (mode == LockMode::kShared ? LOCK_SH : LOCK_EX) | LOCK_NB;
  int rc;
  do {
    rc = ::flock(fd, op);
  } while (rc != 0 && errno == EINTR);
  if (rc == 0) {
    lock.held_ = true;
  } else if (errno != EWOULDBLOCK) {
    return Status::FromErrno(errno, "flock " + path);  // `lock` closes fd
  }
  return lock;
}

Result<FileLock> FileLock::Acquire(const std::string& path, LockMode mode, int timeout_ms) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    MX_ASSIGN_OR_RETURN(FileLock lock, TryAcquire(path, mode));
    if (lock.held() || std::chrono::steady_clock::now() >= deadline) return lock;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

bool IsSafeRelativePath(std::string_view path) {
  if (path.empty() || path.front() == '/' || path.back() == '/') return false;
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string_view::npos) end = path.size();
    std::string_view part = path.substr(start, end - start);
    if (part.empty() || part == "." || part == "..") return false;
    start = end + 1;
  }
  for (char c : path) {
    unsigned char u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f || c == '\\') return false;
  }
  return true;
}

int PathDepth(std::string_view relative_path) {
  int depth = 0;
  for (char c : relative_path) depth += (c == '/');
  return depth;
}

std::string DirName(std::string_view path) {
  size_t slash = path.rfind('/');
  if (slash == std::string_view::npos) return "";
  if (slash == 0) return "/";
  return std::string(path.substr(0, slash));
}

}  // namespace mx
