#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <cstdlib>
#include <optional>
#include <string>

#include "common/env.h"
#include "common/fs.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/status.h"
#include "common/text.h"

namespace mx {
namespace {

TEST(HashTest, KnownVectors) {
  // `printf 'hello\n' | git hash-object --stdin`
  EXPECT_EQ(GitSha1Hex("hello\n"), "ce013625030ba8dba906f756967f9e9ca394464a");
  EXPECT_EQ(GitSha1Hex(""), "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391");
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(HashTest, HmacAndBase64) {
  // RFC 4231 test case 2.
  EXPECT_EQ(HexEncode(HmacSha256("Jefe", "what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  EXPECT_EQ(Base64Encode("hello"), "aGVsbG8=");
  EXPECT_EQ(*Base64Decode("aGVsbG8="), "hello");
  EXPECT_EQ(*Base64Decode("aGk="), "hi");
  EXPECT_FALSE(Base64Decode("abc").ok());
}

TEST(HashTest, IncrementalEqualsOneShot) {
  std::string data(100000, 'x');
  Hasher h(HashKind::kGitSha1, data.size());
  h.Update(data.data(), 1);
  h.Update(data.data() + 1, data.size() - 1);
  EXPECT_EQ(h.FinalHex(), GitSha1Hex(data));
}

TEST(FsTest, SafeRelativePaths) {
  EXPECT_TRUE(IsSafeRelativePath("config.json"));
  EXPECT_TRUE(IsSafeRelativePath("a/b/c.safetensors"));
  EXPECT_TRUE(IsSafeRelativePath("..hidden"));
  for (const char* bad : {"", "/etc/passwd", "../x", "a/../../x", "a/./b", "a//b", "a\\b", "a/",
                          ".", "..", "a\x01"}) {
    EXPECT_FALSE(IsSafeRelativePath(bad)) << bad;
  }
  EXPECT_FALSE(IsSafeRelativePath(std::string_view("a\0b", 3)));
}

TEST(FsTest, AtomicWriteAndTempOwner) {
  char tmpl[] = "/tmp/mx_common_test_XXXXXX";
  std::string dir = ::mkdtemp(tmpl);
  std::string path = dir + "/sub/ref";
  ASSERT_TRUE(MakeDirs(DirName(path)).ok());
  ASSERT_TRUE(WriteFileAtomic(path, "abc").ok());
  ASSERT_TRUE(WriteFileAtomic(path, "defg").ok());
  auto content = ReadFile(path);
  ASSERT_TRUE(content.ok());
  EXPECT_EQ(*content, "defg");
  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, DefaultFileMode());

  std::string suffix = UniqueTempSuffix();
  EXPECT_EQ(suffix.find('.'), std::string::npos);
  auto owner = ParseTempOwner(suffix);
  ASSERT_TRUE(owner.has_value());
  EXPECT_EQ(owner->pid, ::getpid());
  EXPECT_FALSE(TempOwnerIsDead(*owner));
  EXPECT_NE(UniqueTempSuffix(), suffix);
  std::system(("rm -rf " + dir).c_str());
}

TEST(FsTest, LockIsExclusiveAcrossDescriptors) {
  char tmpl[] = "/tmp/mx_lock_test_XXXXXX";
  std::string dir = ::mkdtemp(tmpl);
  auto a = FileLock::TryAcquire(dir + "/x.lock");
  ASSERT_TRUE(a.ok());
  EXPECT_TRUE(a->held());
  auto b = FileLock::TryAcquire(dir + "/x.lock");
  ASSERT_TRUE(b.ok());
  EXPECT_FALSE(b->held());  // flock is per open file description
  a->Release();
  auto c = FileLock::TryAcquire(dir + "/x.lock");
  EXPECT_TRUE(c->held());
  std::system(("rm -rf " + dir).c_str());
}

// A shared-cache neighbour plants a symlink where a lock file will be: locking must not
// follow it (nor chmod its target), and an existing lock file is never chmodded.
TEST(FsTest, LockNeverFollowsOrChmodsWhatItDidNotCreate) {
  char tmpl[] = "/tmp/mx_lock_link_XXXXXX";
  std::string dir = ::mkdtemp(tmpl);
  std::string victim = dir + "/victim";
  ASSERT_TRUE(WriteFileAtomic(victim, "precious").ok());
  ASSERT_EQ(::chmod(victim.c_str(), 0600), 0);
  ASSERT_EQ(::symlink(victim.c_str(), (dir + "/planted.lock").c_str()), 0);
  auto planted = FileLock::TryAcquire(dir + "/planted.lock");
  EXPECT_FALSE(planted.ok() && planted->held());
  struct stat st;
  ASSERT_EQ(::stat(victim.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);

  std::string existing = dir + "/existing.lock";
  ASSERT_TRUE(WriteFileAtomic(existing, "").ok());
  ASSERT_EQ(::chmod(existing.c_str(), 0600), 0);
  auto lock = FileLock::TryAcquire(existing);
  ASSERT_TRUE(lock.ok());
  EXPECT_TRUE(lock->held());
  ASSERT_EQ(::stat(existing.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);  // not ours to chmod

  auto fresh = FileLock::TryAcquire(dir + "/fresh.lock");
  ASSERT_TRUE(fresh.ok());
  ASSERT_EQ(::stat((dir + "/fresh.lock").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0664u);  // created here: group-writable for the others
  std::system(("rm -rf " + dir).c_str());
}

TEST(FsTest, ReadFileNoFollowRefusesSymlinks) {
  char tmpl[] = "/tmp/mx_read_link_XXXXXX";
  std::string dir = ::mkdtemp(tmpl);
  ASSERT_TRUE(WriteFileAtomic(dir + "/real", "x").ok());
  ASSERT_EQ(::symlink((dir + "/real").c_str(), (dir + "/link").c_str()), 0);
  EXPECT_TRUE(ReadFile(dir + "/link").ok());
  EXPECT_FALSE(ReadFile(dir + "/link", 16, /*no_follow=*/true).ok());
  EXPECT_TRUE(ReadFile(dir + "/real", 16, /*no_follow=*/true).ok());
  std::system(("rm -rf " + dir).c_str());
}

TEST(EnvTest, TruthyAndSizes) {
  EXPECT_TRUE(IsTruthy("yes"));
  EXPECT_TRUE(IsTruthy("On"));
  EXPECT_FALSE(IsTruthy("0"));
  EXPECT_FALSE(IsTruthy(""));
  EXPECT_EQ(*ParseByteSize("256MiB"), 256ull << 20);
  EXPECT_EQ(*ParseByteSize("2GB"), 2000000000ull);
  EXPECT_EQ(*ParseByteSize("1024"), 1024ull);
  EXPECT_FALSE(ParseByteSize("12 parsecs").ok());
  EXPECT_FALSE(ParseByteSize("-1").ok());
  EXPECT_EQ(*ParseByteSize("1.5KiB"), 1536ull);
}

TEST(EnvTest, ByteSizeInRangeNamesItsSourceAndTheRange) {
  EXPECT_EQ(*ParseByteSizeInRange("--chunk-size", "16MiB", 64 << 10, 256 << 20), 16u << 20);
  Result<uint64_t> low =
      ParseByteSizeInRange("key 'chunk_size' in c.yaml", "1KiB", 64 << 10, 256 << 20);
  ASSERT_FALSE(low.ok());
  EXPECT_EQ(low.status().message(),
            "key 'chunk_size' in c.yaml ('1KiB'): must be a size between 64 KiB and 256 MiB (a "
            "number of bytes, or with a unit: 16MiB, 1GiB)");
  Result<uint64_t> junk = ParseByteSizeInRange("X", "\x1b[2J", 0, 1 << 20);
  ASSERT_FALSE(junk.ok());
  EXPECT_NE(junk.status().message().find("must be a size at most 1 MiB"), std::string::npos);
  EXPECT_EQ(junk.status().message().find('\x1b'), std::string::npos);  // quoted printably
  EXPECT_EQ(ExactSizeText(65536), "64 KiB");
  EXPECT_EQ(ExactSizeText(1000), "1000 bytes");
  EXPECT_EQ(ExactSizeText(3ull << 30), "3 GiB");
}

TEST(EnvTest, ByteSizesOutOfRangeAreRefusedNotUndefined) {
  // 1e30 does not fit 64 bits: converting it was undefined behaviour (UBSan flags it).
  for (const char* big : {"1e30", "1e30GiB", "16777216TiB", "18446744073709551616", "20000000TB",
                          "1e400", "inf", "nan"}) {
    auto v = ParseByteSize(big);
    EXPECT_FALSE(v.ok()) << big << " -> " << (v.ok() ? std::to_string(*v) : "");
  }
  auto v = ParseByteSize("1e30");
  EXPECT_NE(v.status().message().find("out of range"), std::string::npos) << v.status().message();
  EXPECT_EQ(*ParseByteSize("16777215TiB"), 16777215ull << 40);
  EXPECT_EQ(*ParseByteSize("15TiB"), 15ull << 40);
  EXPECT_EQ(*ParseByteSize("1e3"), 1000ull);
}

TEST(EnvTest, OneIntegerParser) {
  EXPECT_EQ(*ParseUint64("0"), 0u);
  EXPECT_EQ(*ParseUint64("18446744073709551615"), UINT64_MAX);
  EXPECT_EQ(*ParseInt64("-9223372036854775808"), INT64_MIN);
  EXPECT_EQ(*ParseInt64("-1"), -1);
  for (const char* bad :
       {"", " 1", "1 ", "+1", "-1", "1x", "0x10", "18446744073709551616", "1.0"}) {
    EXPECT_FALSE(ParseUint64(bad).ok()) << bad;
  }
  EXPECT_FALSE(ParseInt64("9223372036854775808").ok());
  EXPECT_NE(ParseUint64("99999999999999999999").status().message().find("out of range"),
            std::string::npos);
  EXPECT_EQ(*ParseIntInRange("--port", "8001", 0, 65535), 8001);
  auto r = ParseIntInRange("--port", "65536", 0, 65535);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("--port"), std::string::npos);
  EXPECT_NE(r.status().message().find("[0, 65535]"), std::string::npos);
  // Errors quote a bounded prefix of hostile input, never all of it.
  EXPECT_LT(ParseUint64(std::string(100000, 'x')).status().message().size(), 200u);
}

TEST(HashTest, OneHexEncoder) {
  EXPECT_EQ(HexEncode(std::string("\x00\x7f\xab\xff", 4)), "007fabff");
  EXPECT_EQ(HexEncode(std::string("\x00\x7f\xab\xff", 4), /*uppercase=*/true), "007FABFF");
}

TEST(LogTest, RedactsCredentialsInUrls) {
  EXPECT_EQ(RedactUrl("https://user:pw@cdn.example/x?X-Amz-Signature=abc"),
            "https://cdn.example/x?<redacted>");
  EXPECT_EQ(RedactUrl("http://127.0.0.1:8/a/b"), "http://127.0.0.1:8/a/b");
}

TEST(FsTest, HostileTempOwnerPidsDoNotThrow) {
  for (const char* suffix :
       {"mx-host-99999999999999999999-0123456789abcdef", "mx-host-0-0123456789abcdef",
        "mx-host-2147483648-0123456789abcdef", "mx-host--0123456789abcdef"}) {
    std::optional<TempOwner> owner;
    EXPECT_NO_THROW(owner = ParseTempOwner(suffix)) << suffix;
    EXPECT_FALSE(owner.has_value()) << suffix;
  }
  char tmpl[] = "/tmp/mx_owner_test_XXXXXX";
  std::string dir = ::mkdtemp(tmpl);
  std::string path = dir + "/blob.mx-host-99999999999999999999-0123456789abcdef.incomplete";
  ASSERT_TRUE(WriteFileAtomic(path, "x").ok());
  EXPECT_NO_THROW(
      EXPECT_FALSE(TempFileIsOrphaned(path, "mx-host-99999999999999999999-0123456789abcdef")));
  std::system(("rm -rf " + dir).c_str());
}

TEST(FsTest, OwnTempFileIsAdoptableOnceNoThreadWritesIt) {
  char tmpl[] = "/tmp/mx_owner_test_XXXXXX";
  std::string dir = ::mkdtemp(tmpl);
  std::string suffix = UniqueTempSuffix();
  std::string path = dir + "/blob." + suffix + ".incomplete";
  ASSERT_TRUE(WriteFileAtomic(path, "partial").ok());
  {
    OwnedTempFile owned(path);
    EXPECT_TRUE(IsOwnedTempFile(path));
    EXPECT_FALSE(TempFileIsOrphaned(path, suffix));  // a thread of ours writes it
    EXPECT_FALSE(TempFileIsOrphaned(path + ".progress", suffix));
    OwnedTempFile moved = std::move(owned);
    EXPECT_FALSE(TempFileIsOrphaned(path, suffix));
  }
  // Same live pid, fresh mtime, nobody of ours writing: a retry adopts it at once instead
  // of waiting 10 minutes.
  EXPECT_FALSE(IsOwnedTempFile(path));
  EXPECT_TRUE(TempFileIsOrphaned(path, suffix));
  std::system(("rm -rf " + dir).c_str());
}

TEST(FsTest, SharedAndExclusiveLocks) {
  char tmpl[] = "/tmp/mx_lock_test_XXXXXX";
  std::string dir = ::mkdtemp(tmpl);
  std::string path = dir + "/repo.lock";
  auto r1 = FileLock::TryAcquire(path, LockMode::kShared);
  auto r2 = FileLock::TryAcquire(path, LockMode::kShared);
  ASSERT_TRUE(r1.ok() && r2.ok());
  EXPECT_TRUE(r1->held());
  EXPECT_TRUE(r2->held());  // readers share
  auto w = FileLock::TryAcquire(path, LockMode::kExclusive);
  ASSERT_TRUE(w.ok());
  EXPECT_FALSE(w->held());  // a cleaner cannot take it while a reader holds it
  r1->Release();
  r2->Release();
  auto w2 = FileLock::Acquire(path, LockMode::kExclusive, 1000);
  ASSERT_TRUE(w2.ok());
  EXPECT_TRUE(w2->held());
  auto start = std::chrono::steady_clock::now();
  auto r3 = FileLock::Acquire(path, LockMode::kShared, 100);
  ASSERT_TRUE(r3.ok());
  EXPECT_FALSE(r3->held());  // bounded wait, then gives up
  EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(100));
  std::system(("rm -rf " + dir).c_str());
}

// DefaultFileMode must read the umask without setting it: umask(2) changes it for every
// thread, so a file created meanwhile by another thread would get the wrong mode. In a
// child, umask(2) is made fatal (seccomp) and the umask changed: the mode must follow the
// current umask and the child must survive.
TEST(FsTest, DefaultFileModeReadsTheUmaskWithoutChangingIt) {
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::umask(027);
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_umask, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {static_cast<unsigned short>(sizeof filter / sizeof filter[0]),
                              filter};
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
        ::prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) {
      ::_exit(3);
    }
    ::_exit(DefaultFileMode() == 0640 ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_FALSE(WIFEXITED(status) && WEXITSTATUS(status) == 3) << "seccomp unavailable";
  EXPECT_TRUE(WIFEXITED(status)) << "DefaultFileMode called umask(2) (killed by signal "
                                 << (WIFSIGNALED(status) ? WTERMSIG(status) : 0) << ")";
  EXPECT_EQ(WIFEXITED(status) ? WEXITSTATUS(status) : -1, 0)
      << "DefaultFileMode did not follow the current umask";
}

TEST(ScopedFdTest, ClosesOnDestructionAndRelease) {
  int raw = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  ASSERT_GE(raw, 0);
  {
    ScopedFd fd(raw);
    EXPECT_EQ(fd.get(), raw);
    ScopedFd moved(std::move(fd));
    EXPECT_FALSE(fd.valid());
    EXPECT_EQ(moved.get(), raw);
  }
  EXPECT_EQ(::fcntl(raw, F_GETFD), -1);  // closed exactly once, by the last owner
  ScopedFd kept(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  int released = kept.Release();
  EXPECT_GE(::fcntl(released, F_GETFD), 0);
  ::close(released);
}

TEST(ReadFileTest, RefusesMoreThanItsCap) {
  auto zero = ReadFile("/dev/zero", 1 << 20);  // would grow until bad_alloc without the cap
  ASSERT_FALSE(zero.ok());
  EXPECT_EQ(zero.status().code(), StatusCode::kResourceExhausted);
  EXPECT_TRUE(ReadFile("/dev/null", 16).ok());
}

TEST(TextTest, EscapeAndPrintable) {
  EXPECT_EQ(EscapeControl("ok caf\xc3\xa9"), "ok caf\xc3\xa9");
  EXPECT_EQ(EscapeControl("\x1b]0;x\x07\xff\xc2\x9b"), "\\x1b]0;x\\x07\\xff\\xc2\\x9b");
  EXPECT_EQ(Printable("a\x1b\xc2\x9b"
                      "b",
                      10),
            "a??b");
  EXPECT_EQ(Printable("abcdef", 3), "abc...");
}

TEST(TextTest, TrimWhitespace) {
  EXPECT_EQ(TrimWhitespace(" \t token\r\n"), "token");
  EXPECT_EQ(TrimWhitespace("a b"), "a b");
  EXPECT_EQ(TrimWhitespace(" \n "), "");
  EXPECT_EQ(TrimWhitespace("\x01x"), "\x01x");  // only whitespace goes, not other controls
}

TEST(TextTest, Utf8) {
  EXPECT_TRUE(IsValidUtf8("caf\xc3\xa9 \xf0\x9f\x98\x80"));
  EXPECT_FALSE(IsValidUtf8("\xff"));
  EXPECT_FALSE(IsValidUtf8("\xc3\x28"));
  EXPECT_FALSE(IsValidUtf8("\xc0\x80"));          // overlong NUL
  EXPECT_FALSE(IsValidUtf8("\xed\xa0\x80"));      // surrogate
  EXPECT_FALSE(IsValidUtf8("\xf4\x90\x80\x80"));  // past U+10FFFF
  EXPECT_FALSE(IsValidUtf8("\xe2\x82"));          // truncated
}

}  // namespace
}  // namespace mx
