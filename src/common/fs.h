// Filesystem primitives that keep a shared cache valid: atomic writes (temp + fsync +
// rename), process-unique temp names, advisory locks, path validation. Correctness never
// depends on the locks: on some NFS/Lustre mounts flock succeeds for everyone.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "common/status.h"

namespace mx {

// mkdir -p. OK if the directory exists.
Status MakeDirs(const std::string& path, mode_t mode = 0755);

// Reads a whole file. Fails with ResourceExhausted, before reading more, when the file holds
// more than `max_bytes` (refs, tokens and listings are small; a path that leads to
// /dev/zero or a huge file must not exhaust memory). With `no_follow`, a symlink as the
// last component is refused (ELOOP): cache files a neighbour could replace by a link.
Result<std::string> ReadFile(const std::string& path, uint64_t max_bytes = 64ull << 20,
                             bool no_follow = false);

// Writes `contents` to `path` so a reader sees either the old file or the whole new one:
// a process-unique temp file beside it, fsync, rename. Mode is 0666 & ~umask.
Status WriteFileAtomic(const std::string& path, std::string_view contents);

// Points `link_path` at `target` (taken literally, usually relative), replacing whatever
// was there atomically (temp symlink + rename).
Status ReplaceSymlink(const std::string& target, const std::string& link_path);

// "mx-<host>-<pid>-<random>": unique among live processes on all hosts sharing a volume.
// Dots in the host name are replaced so the suffix contains none.
std::string UniqueTempSuffix();

// The owner encoded in a UniqueTempSuffix(), to decide whether a temp file is orphaned.
struct TempOwner {
  std::string host;
  pid_t pid = 0;
};
std::optional<TempOwner> ParseTempOwner(std::string_view suffix);
// True when the owner is certainly dead: same host and no such process.
bool TempOwnerIsDead(const TempOwner& owner);

// The one rule for adopting or removing another writer's temp file: its owner (the
// UniqueTempSuffix in its name) is dead on this host, or nobody has touched it for 10
// minutes (a writer on another host that died), or the owner is this very process and no
// thread of it has the file registered as being written (see OwnedTempFile): a server that
// retries a failed download resumes its own earlier temp file at once. False when the
// file is gone.
bool TempFileIsOrphaned(const std::string& path, std::string_view owner_suffix);

// Registers `path` as a temp file a thread of this process is writing, for as long as the
// object lives (movable, not copyable). TempFileIsOrphaned never calls a registered file
// orphaned, even with flock a no-op; an unregistered file named after this process is.
class OwnedTempFile {
 public:
  OwnedTempFile() = default;
  explicit OwnedTempFile(std::string path);
  ~OwnedTempFile();
  OwnedTempFile(OwnedTempFile&& other) noexcept;
  OwnedTempFile& operator=(OwnedTempFile&& other) noexcept;
  OwnedTempFile(const OwnedTempFile&) = delete;
  OwnedTempFile& operator=(const OwnedTempFile&) = delete;

  // Unregisters now (the file was renamed away, removed, or abandoned for a later rerun).
  void Release();

 private:
  std::string path_;
};
// True while some OwnedTempFile of this process holds `path`.
bool IsOwnedTempFile(const std::string& path);

// The mode a new regular file gets in any directory: 0666 & ~umask. Reads the umask from
// /proc/self/status without changing it (umask(2) can only be read by setting it, which
// would race with other threads creating files); without /proc, the umask the process
// had when it started.
mode_t DefaultFileMode();

enum class LockMode { kExclusive, kShared };

// Owns a file descriptor and closes it on destruction: every early return of a function
// that opened a file closes it.
class ScopedFd {
 public:
  ScopedFd() = default;
  explicit ScopedFd(int fd) : fd_(fd) {}
  ~ScopedFd() { Reset(); }
  ScopedFd(ScopedFd&& other) noexcept : fd_(other.Release()) {}
  ScopedFd& operator=(ScopedFd&& other) noexcept {
    if (this != &other) Reset(other.Release());
    return *this;
  }
  ScopedFd(const ScopedFd&) = delete;
  ScopedFd& operator=(const ScopedFd&) = delete;

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  // Gives up ownership without closing.
  int Release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }
  // Closes the current descriptor (if any) and owns `fd`.
  void Reset(int fd = -1);

 private:
  int fd_ = -1;
};

// Holds a flock (exclusive or shared) on a lock file (created 0664). The lock file is
// opened with O_NOFOLLOW (a planted symlink fails with ELOOP) and chmodded only when this
// call created it (O_CREAT | O_EXCL), never when it existed. Releases on
// destruction. MX_TEST_DISABLE_FLOCK=1 turns every lock into a no-op that "succeeds", to
// test that correctness does not depend on locking (as on some network filesystems).
// A lock file must never be deleted while it may be locked: two processes could then
// "hold" locks on two different inodes of the same name.
class FileLock {
 public:
  FileLock() = default;
  ~FileLock();
  FileLock(FileLock&& other) noexcept;
  FileLock& operator=(FileLock&& other) noexcept;
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;

  // Non-blocking: returns a held lock, or an unheld lock (held() == false) when another
  // holder has it in a conflicting mode. IoError only when the lock file cannot be opened
  // (a read-only cache falls back to opening it read-only, which flock allows).
  static Result<FileLock> TryAcquire(const std::string& path, LockMode mode = LockMode::kExclusive);
  // Like TryAcquire, but retries for up to `timeout_ms` (polling, so a caller can bound its
  // wait); unheld when the time ran out.
  static Result<FileLock> Acquire(const std::string& path, LockMode mode, int timeout_ms);
  // Locks an already-open descriptor without blocking (does not take ownership of fd).
  static bool TryLockFd(int fd);

  bool held() const { return held_; }
  void Release();

 private:
  int fd_ = -1;
  bool held_ = false;
};

// A repo-relative path that is safe to join under a directory: non-empty, relative, no
// "." / ".." / empty components, no backslash, NUL or control characters.
bool IsSafeRelativePath(std::string_view path);

// Number of '/' separated components minus one ("a/b/c" -> 2).
int PathDepth(std::string_view relative_path);

// The parent directory of a path ("a/b/c" -> "a/b", "c" -> "").
std::string DirName(std::string_view path);

}  // namespace mx
