#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#include "common/env.h"
#include "common/fs.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/status.h"

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
}

TEST(LogTest, RedactsCredentialsInUrls) {
  EXPECT_EQ(RedactUrl("https://user:pw@cdn.example/x?X-Amz-Signature=abc"),
            "https://cdn.example/x?<redacted>");
  EXPECT_EQ(RedactUrl("http://127.0.0.1:8/a/b"), "http://127.0.0.1:8/a/b");
}

}  // namespace
}  // namespace mx
