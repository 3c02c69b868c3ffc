// Both backends must behave the same: each test runs against SQLite (two connections to
// one file, as two server processes would have) and against a real redis-server.
#include "registry/registry.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

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

bool HaveRedisServer() { return std::system("command -v redis-server >/dev/null 2>&1") == 0; }

#define MX_SKIP_WITHOUT_REDIS()                              \
  if (!HaveRedisServer())                                    \
  GTEST_SKIP() << "redis-server is not on PATH: install it " \
                  "(apt-get install redis-server) to test "  \
                  "the Redis backend"

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
    ready_ = false;
    for (int i = 0; i < 100; ++i) {  // wait until it accepts connections
      StoreConfig c;
      c.backend = "redis";
      c.redis_port = port_;
      if (OpenStore(c).ok()) {
        ready_ = true;
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  bool ready() const { return ready_; }
  // Asks the server to write its data set (dump.rdb in its dir), loaded by the next Start.
  void Save() {
    ASSERT_EQ(std::system(("redis-cli -p " + std::to_string(port_) + " SAVE >/dev/null").c_str()),
              0);
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
  bool ready_ = false;
};

// A TCP proxy in front of Redis that can lose one reply: the next command containing
// `marker` reaches Redis and runs, then the connection is closed before its reply is
// forwarded, as a network failure at the worst moment would do.
class LossyProxy {
 public:
  explicit LossyProxy(int upstream_port) : upstream_port_(upstream_port) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a);
    ::listen(listen_fd_, 16);
    socklen_t len = sizeof a;
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    acceptor_ = std::thread([this] { AcceptLoop(); });
  }
  ~LossyProxy() {
    stop_ = true;
    ::shutdown(listen_fd_, SHUT_RDWR);
    acceptor_.join();
    ::close(listen_fd_);
    std::lock_guard<std::mutex> l(mu_);
    for (auto& t : conns_) t.join();
  }
  int port() const { return port_; }
  void LoseNextReplyTo(const std::string& marker) {
    std::lock_guard<std::mutex> l(mu_);
    marker_ = marker;
  }
  int lost() const { return lost_; }

 private:
  void AcceptLoop() {
    while (!stop_) {
      int c = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) return;
      std::lock_guard<std::mutex> l(mu_);
      conns_.emplace_back([this, c] { Pump(c); });
    }
  }
  void Pump(int client) {
    int up = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(static_cast<uint16_t>(upstream_port_));
    if (::connect(up, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      ::close(up);
      ::close(client);
      return;
    }
    bool lose_reply = false;
    char buf[65536];
    while (!stop_) {
      pollfd p[2] = {{client, POLLIN, 0}, {up, POLLIN, 0}};
      if (::poll(p, 2, 100) <= 0) continue;
      if (p[0].revents) {
        ssize_t n = ::read(client, buf, sizeof buf);
        if (n <= 0) break;
        {
          std::lock_guard<std::mutex> l(mu_);
          if (!marker_.empty() &&
              std::string_view(buf, static_cast<size_t>(n)).find(marker_) != std::string::npos) {
            lose_reply = true;
            marker_.clear();
          }
        }
        if (::write(up, buf, static_cast<size_t>(n)) != n) break;
      }
      if (p[1].revents) {
        ssize_t n = ::read(up, buf, sizeof buf);
        if (n <= 0) break;
        if (lose_reply) {
          ++lost_;
          break;  // the command ran; its reply never arrives
        }
        if (::write(client, buf, static_cast<size_t>(n)) != n) break;
      }
    }
    ::close(up);
    ::close(client);
  }

  int upstream_port_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> lost_{0};
  std::thread acceptor_;
  std::mutex mu_;
  std::string marker_;
  std::vector<std::thread> conns_;
};

class StoreTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/mx_registry_test_XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    if (GetParam() == "redis") {
      MX_SKIP_WITHOUT_REDIS();
      redis_ = std::make_unique<RedisServer>(dir_);
      ASSERT_TRUE(redis_->ready()) << "redis-server did not start on port " << redis_->port();
    }
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
    // Fatal for the test (callers use the store at once), never a null dereference.
    if (!s.ok()) throw std::runtime_error("open store: " + s.status().ToString());
    return std::move(s.value());
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
    r.worker = "blob" + std::to_string(i);
    ASSERT_TRUE(s->PutSource(r, {}).ok());
  }
  SourceFilter f;
  f.worker_rank = 1;
  auto one = s->ListSources(f);
  ASSERT_EQ(one->size(), 1u);
  EXPECT_EQ((*one)[0].worker_id, "w1");
  EXPECT_EQ((*one)[0].identity, std::string("\0id", 3));
  EXPECT_TRUE((*one)[0].worker.empty()) << "listings leave the worker blob out by default";
  f.with_worker = true;
  EXPECT_EQ((*s->ListSources(f))[0].worker, "blob1");
  EXPECT_EQ((*s->GetSource("abc", "w1"))->worker, "blob1");
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

TEST_P(StoreTest, ClaimIsIdempotentPerClaimId) {
  auto a = Open();
  ASSERT_TRUE(a->TryClaim(Key(), "mine", 30000, true)->won);
  auto again = a->TryClaim(Key(), "mine", 30000, true);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->won) << "re-sending our own claim must not read as lost";
  EXPECT_FALSE(a->TryClaim(Key(), "other", 30000, true)->won);
}

TEST_P(StoreTest, TouchNeverRecreatesADeletedModel) {
  auto a = Open(), b = Open();
  std::atomic<bool> stop{false};
  std::atomic<int> husks{0};
  // b keeps creating and deleting the record while a touches it; a touch that lands
  // between a check and a write must not leave a record holding only last_used_ms.
  std::thread churn([&] {
    for (int i = 0; i < 1500; ++i) {
      (void)b->TryClaim(Key(), "c" + std::to_string(i), 30000, true);
      (void)b->DeleteModel(Key());
    }
    stop = true;
  });
  while (!stop) {
    (void)a->TouchModel(Key());
    auto m = a->GetModel(Key());
    if (m.ok() && m->has_value() && (*m)->key.name.empty()) ++husks;
  }
  churn.join();
  (void)a->TouchModel(Key());
  auto m = a->GetModel(Key());
  ASSERT_TRUE(m.ok());
  EXPECT_FALSE(m->has_value());
  EXPECT_EQ(husks.load(), 0);
}

TEST_P(StoreTest, SourceOwnershipAndLimits) {
  auto s = Open();
  SourceRecord r;
  r.mx_source_id = "id1";
  r.worker_id = "w0";
  r.owner = "host-a";
  r.updated_at_ms = NowMs();
  SourceLimits limits{2, 3};
  ASSERT_TRUE(s->PutSource(r, limits).ok());
  ASSERT_TRUE(s->PutSource(r, limits).ok()) << "the owner re-publishes (heartbeat)";
  SourceRecord hijack = r;
  hijack.owner = "host-b";
  hijack.worker = "evil";
  EXPECT_EQ(s->PutSource(hijack, limits).code(), StatusCode::kPermissionDenied);
  EXPECT_EQ((*s->GetSource("id1", "w0"))->worker, "");
  r.worker_id = "w1";
  ASSERT_TRUE(s->PutSource(r, limits).ok());
  r.worker_id = "w2";
  EXPECT_EQ(s->PutSource(r, limits).code(), StatusCode::kResourceExhausted) << "per identity";
  r.mx_source_id = "id2";
  ASSERT_TRUE(s->PutSource(r, limits).ok());
  r.worker_id = "w3";
  EXPECT_EQ(s->PutSource(r, limits).code(), StatusCode::kResourceExhausted) << "in total";
  SourceFilter f;
  f.mx_source_id = "id1";
  EXPECT_EQ(s->ListSources(f)->size(), 2u);
  f.limit = 1;
  EXPECT_EQ(s->ListSources(f)->size(), 1u);
}

TEST(RedisLostReplyTest, AClaimWonBeforeItsReplyWasLostIsStillWon) {
  MX_SKIP_WITHOUT_REDIS();
  char tmpl[] = "/tmp/mx_redis_lost_XXXXXX";
  std::string dir = ::mkdtemp(tmpl);
  RedisServer redis(dir);
  ASSERT_TRUE(redis.ready());
  LossyProxy proxy(redis.port());
  StoreConfig c;
  c.backend = "redis";
  c.redis_port = proxy.port();
  auto store = OpenStore(c);
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  proxy.LoseNextReplyTo("EVAL");
  auto claim = (*store)->TryClaim(Key(), "me", 30000, true);
  ASSERT_TRUE(claim.ok()) << claim.status().ToString();
  EXPECT_EQ(proxy.lost(), 1) << "the proxy did not drop the claim's reply";
  EXPECT_TRUE(claim->won);
  EXPECT_FALSE(claim->previous.has_value());
  EXPECT_EQ(claim->record.claim_id, "me");
  EXPECT_TRUE((*store)->Finish(Key(), "me", ModelState::kDownloaded, "", "abc", 1).ok());
  std::system(("rm -rf " + dir).c_str());
}

TEST(RedisRestartTest, RestoreNeverOverwritesARecordThatSurvived) {
  MX_SKIP_WITHOUT_REDIS();
  char tmpl[] = "/tmp/mx_redis_failover_XXXXXX";
  std::string dir = ::mkdtemp(tmpl);
  RedisServer redis(dir);
  ASSERT_TRUE(redis.ready());
  StoreConfig c;
  c.backend = "redis";
  c.redis_port = redis.port();
  auto a = OpenStore(c), b = OpenStore(c);
  ASSERT_TRUE(a.ok() && b.ok());
  // a's claim expires and b finishes the download: a's authored copy is now stale.
  ASSERT_TRUE((*a)->TryClaim(Key(), "a", 50, true)->won);
  std::this_thread::sleep_for(std::chrono::milliseconds(120));
  ASSERT_TRUE((*b)->TryClaim(Key(), "b", 30000, true)->won);
  ASSERT_TRUE((*b)->Finish(Key(), "b", ModelState::kDownloaded, "", "newer", 9).ok());
  SourceRecord src;
  src.mx_source_id = "id";
  src.worker_id = "w";
  src.status = 1;
  src.updated_at_ms = NowMs();
  ASSERT_TRUE((*a)->PutSource(src, {}).ok());
  ASSERT_TRUE((*b)->UpdateSourceStatus("id", "w", 2).ok());
  redis.Save();
  redis.Stop();
  redis.Start();  // a new run_id, the data kept (as after a failover to a replica)
  ASSERT_TRUE(redis.ready());
  auto m = (*a)->GetModel(Key());  // a reconnects and restores
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  ASSERT_TRUE(m->has_value());
  EXPECT_EQ((*m)->state, ModelState::kDownloaded);
  EXPECT_EQ((*m)->resolved_revision, "newer");
  EXPECT_EQ((*(*a)->GetSource("id", "w"))->status, 2);
  std::system(("rm -rf " + dir).c_str());
}

TEST(RedisRestartTest, StateIsRestoredAfterAnEmptyRestart) {
  MX_SKIP_WITHOUT_REDIS();
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
  ASSERT_TRUE(s->PutSource(src, {}).ok());
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
  EXPECT_FALSE(c.redis_tls);
}

TEST(RedisUrlTest, RedissWithTlsOptions) {
  StoreConfig c;
  ASSERT_TRUE(
      ParseRedisUrl("rediss://:pw@cache.example:6380/1?ca=/etc/a%26b.pem&cert=/c&key=/k", &c).ok());
  EXPECT_TRUE(c.redis_tls);
  EXPECT_EQ(c.redis_host, "cache.example");
  EXPECT_EQ(c.redis_port, 6380);
  EXPECT_EQ(c.redis_db, 1);
  EXPECT_EQ(c.redis_tls_ca, "/etc/a&b.pem");
  EXPECT_EQ(c.redis_tls_cert, "/c");
  EXPECT_EQ(c.redis_tls_key, "/k");
  EXPECT_FALSE(c.redis_tls_insecure);
  ASSERT_TRUE(ParseRedisUrl("rediss://h?insecure=true", &c).ok());
  EXPECT_TRUE(c.redis_tls_insecure);
  // Unknown options and options on a plain URL are refused, not ignored.
  Status st = ParseRedisUrl("rediss://h?cafile=/x", &c);
  EXPECT_NE(st.message().find("cafile"), std::string::npos) << st.message();
  EXPECT_FALSE(ParseRedisUrl("rediss://h?insecure=maybe", &c).ok());
  EXPECT_FALSE(ParseRedisUrl("redis://h?ca=/x", &c).ok());
}

INSTANTIATE_TEST_SUITE_P(Backends, StoreTest, ::testing::Values("embedded", "redis"));

}  // namespace
}  // namespace mx::registry
