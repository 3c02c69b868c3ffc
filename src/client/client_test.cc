#include "client/client.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <string>

#include "client/fetch.h"

namespace mx::client {
namespace {

TEST(Endpoint, Forms) {
  auto a = ParseEndpoint("localhost:8001");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->target, "localhost:8001");
  EXPECT_FALSE(a->tls);
  auto b = ParseEndpoint("http://model-express-server.model-express.svc.cluster.local:8080/");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->target, "model-express-server.model-express.svc.cluster.local:8080");
  auto c = ParseEndpoint("https://mx.example.com");
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(c->tls);
  EXPECT_EQ(c->target, "mx.example.com:443");
  auto d = ParseEndpoint("[::1]:9000");
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->target, "[::1]:9000");
  EXPECT_EQ(ParseEndpoint("myhost")->target, "myhost:8001");
}

TEST(Endpoint, Refused) {
  for (const char* bad : {"", "ftp://x:1", "http://x:1/path", "x:0", "x:70000", "x:abc",
                          "http://user@x:1", "a b:1", "::1:80", "http://:80"}) {
    EXPECT_FALSE(ParseEndpoint(bad).ok()) << bad;
  }
}

TEST(Endpoint, Precedence) {
  ::unsetenv("MODEL_EXPRESS_URL");
  ::unsetenv("MODEL_EXPRESS_ENDPOINT");
  EXPECT_EQ(ResolveEndpoint("")->target, "localhost:8001");
  ::setenv("MODEL_EXPRESS_ENDPOINT", "b:2", 1);
  EXPECT_EQ(ResolveEndpoint("")->target, "b:2");
  EXPECT_EQ(ResolveEndpoint("")->source, "MODEL_EXPRESS_ENDPOINT");
  ::setenv("MODEL_EXPRESS_URL", "http://a:1", 1);
  EXPECT_EQ(ResolveEndpoint("")->target, "a:1");
  EXPECT_EQ(ResolveEndpoint("c:3")->target, "c:3");
  ::unsetenv("MODEL_EXPRESS_URL");
  ::unsetenv("MODEL_EXPRESS_ENDPOINT");
}

std::string TempPath(const char* name) {
  return std::string(::testing::TempDir()) + "/" + name + std::to_string(::getpid());
}

void WriteWithMtime(const std::string& path, const std::string& text, time_t mtime) {
  std::ofstream(path) << text;
  struct timespec times[2] = {{mtime, 0}, {mtime, 0}};
  ::utimensat(AT_FDCWD, path.c_str(), times, 0);
}

TEST(TokenFile, AbsentMeansNoToken) {
  TokenFile t(TempPath("no-such-token"), 60);
  auto v = t.Get();
  ASSERT_TRUE(v.ok());
  EXPECT_FALSE(v->has_value());
}

TEST(TokenFile, RereadWhenMtimeChanges) {
  std::string path = TempPath("token");
  WriteWithMtime(path, "first\n", 1000);
  TokenFile t(path, 3600);
  EXPECT_EQ(t.Get()->value(), "first");
  // Same mtime, long TTL: the cached value (the file is not read again).
  WriteWithMtime(path, "second", 1000);
  EXPECT_EQ(t.Get()->value(), "first");
  // A rotated token has a new mtime.
  WriteWithMtime(path, "third", 2000);
  EXPECT_EQ(t.Get()->value(), "third");
  ::unlink(path.c_str());
  EXPECT_FALSE(t.Get()->has_value());
}

TEST(TokenFile, RereadAfterTtl) {
  std::string path = TempPath("token-ttl");
  WriteWithMtime(path, "first", 1000);
  TokenFile t(path, 0);
  EXPECT_EQ(t.Get()->value(), "first");
  WriteWithMtime(path, "second", 1000);
  EXPECT_EQ(t.Get()->value(), "second");
  WriteWithMtime(path, "bad\x01token", 1000);
  EXPECT_FALSE(t.Get().ok());
  ::unlink(path.c_str());
}

TEST(Fetch, Names) {
  EXPECT_EQ(*ParseStrategy("server-only"), Strategy::kServerOnly);
  EXPECT_FALSE(ParseStrategy("fast").ok());
  EXPECT_EQ(*ParseProvider("s3"), 3);
  EXPECT_TRUE(IsWeightFile("sub/model-00001-of-00002.safetensors"));
  EXPECT_TRUE(IsWeightFile("model.ckpt.index"));
  EXPECT_FALSE(IsWeightFile("config.json"));
}

TEST(Fetch, CacheRoot) {
  ::setenv("HF_HOME", "/h", 1);
  ::unsetenv("HF_HUB_CACHE");
  ::unsetenv("MODEL_EXPRESS_CACHE_DIRECTORY");
  EXPECT_EQ(ResolveCacheRoot(""), "/h/hub");
  ::setenv("HF_HUB_CACHE", "/c", 1);
  EXPECT_EQ(ResolveCacheRoot(""), "/c");
  ::setenv("MODEL_EXPRESS_CACHE_DIRECTORY", "/m", 1);
  EXPECT_EQ(ResolveCacheRoot(""), "/m");
  EXPECT_EQ(ResolveCacheRoot("/f"), "/f");
}

}  // namespace
}  // namespace mx::client
