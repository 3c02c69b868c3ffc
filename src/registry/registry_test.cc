// Both backends must behave the same: each test runs against SQLite (two connections to
// one file, as two server processes would have) and against a real redis-server.
#include "registry/registry.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <thread>

namespace mx::registry {
namespace {

int FreePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

// A throw-away redis-server on loopback, stopped by PID.
class RedisServer {
 public:
  explicit RedisServer(const std::string& dir) : dir_(dir), port_(FreePort()) { Start(); }
  ~RedisServer() { Stop(); }
  void Start() {
    pid_ = ::fork();
    if (pid_ == 0) {
      std::string port = std::to_string(port_);
      ::execlp("redis-server", "redis-server", "--port", port.c_str(), "--bind", "127.0.0.1",
               "--save", "", "--appendonly", "no", "--dir", dir_.c_str(), "--loglevel", "warning",
               static_cast<char*>(nullptr));
      ::_exit(127);
    }
    for (int i = 0; i < 100; ++i) {  // wait until it accepts connections
      StoreConfig c;
      c.backend = "redis";
      c.redis_port = port_;
      if (OpenStore(c).ok()) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  void Stop() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
      pid_ = -1;
    }
  }
  int port() const { return port_; }

 private:
  std::string dir_;
  int port_;
  pid_t pid_ = -1;
};

class StoreTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/mx_registry_test_XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    if (GetParam() == "redis") redis_ = std::make_unique<RedisServer>(dir_);
  }
  void TearDown() override {
    redis_.reset();
    std::system(("rm -rf " + dir_).c_str());
  }
  std::unique_ptr<MetadataStore> Open() {
    StoreConfig c;
    c.backend = GetParam();
    c.sqlite_path = dir_ + "/registry.db";
    if (redis_) c.redis_port = redis_->port();
    auto s = OpenStore(c);
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    return s.ok() ? std::move(s.value()) : nullptr;
  }

  std::string dir_;
  std::unique_ptr<RedisServer> redis_;
};

ModelKey Key(bool ignore_weights = false) { return {0, "org/model", "", ignore_weights}; }

TEST_P(StoreTest, OnlyOneReplicaWinsAClaim) {
  auto a = Open(), b = Open();
  auto ca = a->TryClaim(Key(), "replica-a", 30000, true);
  auto cb = b->TryClaim(Key(), "replica-b", 30000, true);
  ASSERT_TRUE(ca.ok() && cb.ok());
  EXPECT_TRUE(ca->won);
  EXPECT_FALSE(ca->previous.has_value());
  EXPECT_FALSE(cb->won);
  EXPECT_EQ(cb->record.claim_id, "replica-a");
  EXPECT_EQ(cb->record.state, ModelState::kDownloading);
  // Keys differ by ignore_weights: a metadata-only claim is separate.
  EXPECT_TRUE(b->TryClaim(Key(true), "replica-b", 30000, true)->won);
  EXPECT_TRUE(b->RenewLease(Key(), "replica-b", 30000).code() == StatusCode::kFailedPrecondition);
  ASSERT_TRUE(a->RenewLease(Key(), "replica-a", 30000).ok());
  ASSERT_TRUE(a->Finish(Key(), "replica-a", ModelState::kDownloaded, "", "c0ffee", 42).ok());
  auto done = b->GetModel(Key());
  ASSERT_TRUE(done.ok() && done->has_value());
  EXPECT_EQ((*done)->state, ModelState::kDownloaded);
  EXPECT_EQ((*done)->resolved_revision, "c0ffee");
  EXPECT_EQ((*done)->bytes, 42u);
  EXPECT_FALSE(b->TryClaim(Key(), "replica-b", 30000, true)->won);
}

TEST_P(StoreTest, ExpiredLeaseIsTakenOverAndErrorRetriedOnce) {
  auto a = Open(), b = Open();
  ASSERT_TRUE(a->TryClaim(Key(), "dead", 50, true)->won);
  std::this_thread::sleep_for(std::chrono::milliseconds(120));
  auto take = b->TryClaim(Key(), "alive", 30000, true);
  EXPECT_TRUE(take->won);
  EXPECT_EQ(take->previous, ModelState::kDownloading);
  EXPECT_EQ(a->Finish(Key(), "dead", ModelState::kDownloaded, "", "x", 1).code(),
            StatusCode::kFailedPrecondition);  // the dead owner cannot overwrite
  ASSERT_TRUE(b->Finish(Key(), "alive", ModelState::kError, "boom", "", 0).ok());
  EXPECT_FALSE(a->TryClaim(Key(), "r1", 30000, /*retry_error=*/false)->won);
  auto r1 = a->TryClaim(Key(), "r1", 30000, true);
  auto r2 = b->TryClaim(Key(), "r2", 30000, true);
  EXPECT_TRUE(r1->won);
  EXPECT_EQ(r1->previous, ModelState::kError);
  EXPECT_FALSE(r2->won);  // exactly one replica retries
}

TEST_P(StoreTest, SourcesFilterUpdateAndReap) {
  auto s = Open();
  for (int i = 0; i < 3; ++i) {
    SourceRecord r;
    r.mx_source_id = "abc";
    r.worker_id = "w" + std::to_string(i);
    r.model_name = "m";
    r.worker_rank = static_cast<uint32_t>(i);
    r.status = 2;
    r.updated_at_ms = NowMs() - (i == 2 ? 200000 : 0);
    r.identity = std::string("\0id", 3);
    ASSERT_TRUE(s->PutSource(r).ok());
  }
  SourceFilter f;
  f.worker_rank = 1;
  auto one = s->ListSources(f);
  ASSERT_EQ(one->size(), 1u);
  EXPECT_EQ((*one)[0].worker_id, "w1");
  EXPECT_EQ((*one)[0].identity, std::string("\0id", 3));
  f = {};
  f.limit = 2;
  EXPECT_EQ(s->ListSources(f)->size(), 2u);
  auto reaped = s->ReapSources(90000, 3600000, 3);
  ASSERT_TRUE(reaped.ok());
  EXPECT_EQ(reaped->first, 1);
  EXPECT_EQ((*s->GetSource("abc", "w2"))->status, 3);
  ASSERT_TRUE(s->UpdateSourceStatus("abc", "w2", 2).ok());
  EXPECT_EQ((*s->GetSource("abc", "w2"))->status, 2);
  EXPECT_EQ(s->UpdateSourceStatus("abc", "nope", 2).code(), StatusCode::kNotFound);
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  reaped = s->ReapSources(0, 0, 3);
  EXPECT_EQ(reaped->second, 3);
  EXPECT_TRUE(s->ListSources({})->empty());
}

TEST(RedisRestartTest, StateIsRestoredAfterAnEmptyRestart) {
  char tmpl[] = "/tmp/mx_redis_restart_XXXXXX";
  std::string dir = ::mkdtemp(tmpl);
  RedisServer redis(dir);
  StoreConfig c;
  c.backend = "redis";
  c.redis_port = redis.port();
  auto store = OpenStore(c);
  ASSERT_TRUE(store.ok());
  auto& s = *store;
  ASSERT_TRUE(s->TryClaim(Key(), "me", 30000, true)->won);
  ASSERT_TRUE(s->Finish(Key(), "me", ModelState::kDownloaded, "", "abc", 7).ok());
  SourceRecord src;
  src.mx_source_id = "id";
  src.worker_id = "w";
  src.status = 2;
  src.updated_at_ms = NowMs();
  ASSERT_TRUE(s->PutSource(src).ok());
  redis.Stop();
  redis.Start();  // same port, empty data
  auto m = s->GetModel(Key());
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  ASSERT_TRUE(m->has_value());
  EXPECT_EQ((*m)->state, ModelState::kDownloaded);
  EXPECT_EQ((*m)->resolved_revision, "abc");
  EXPECT_TRUE((*s->GetSource("id", "w")).has_value());
  std::system(("rm -rf " + dir).c_str());
}

TEST(RedisUrlTest, Parses) {
  StoreConfig c;
  ASSERT_TRUE(ParseRedisUrl("redis://:pw@example:6380/2", &c).ok());
  EXPECT_EQ(c.redis_host, "example");
  EXPECT_EQ(c.redis_port, 6380);
  EXPECT_EQ(c.redis_password, "pw");
  EXPECT_EQ(c.redis_db, 2);
  EXPECT_FALSE(ParseRedisUrl("http://x", &c).ok());
}

INSTANTIATE_TEST_SUITE_P(Backends, StoreTest, ::testing::Values("embedded", "redis"));

}  // namespace
}  // namespace mx::registry
