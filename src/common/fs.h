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

Result<std::string> ReadFile(const std::string& path);

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
// minutes (a writer on another host that died). False when the file is gone.
bool TempFileIsOrphaned(const std::string& path, std::string_view owner_suffix);

// The mode a new regular file gets in any directory: 0666 & ~umask.
mode_t DefaultFileMode();

// Holds an exclusive flock on a lock file (created 0664). Releases on destruction.
// MX_TEST_DISABLE_FLOCK=1 turns every lock into a no-op that "succeeds", to test that
// correctness does not depend on locking (as on some network filesystems).
class FileLock {
 public:
  FileLock() = default;
  ~FileLock();
  FileLock(FileLock&& other) noexcept;
  FileLock& operator=(FileLock&& other) noexcept;
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;

  // Non-blocking: returns a held lock, or nullopt-like unheld lock when another holder
  // has it (held() == false). IoError only when the lock file cannot be opened.
  static Result<FileLock> TryAcquire(const std::string& path);
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
