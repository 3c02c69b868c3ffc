#include "server/http_server.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "server/http_parse.h"
#include "server/mirror.h"

namespace mx::server {
namespace {

// Sanitizers slow everything down 2-15x: time bounds are for the release build, and
// sanitizer builds get room instead of flaking.
#ifdef MX_SANITIZER_BUILD
constexpr double kSlack = 10;
#else
constexpr double kSlack = 1;
#endif

Result<HttpRequest> Parse(const std::string& head, HeadError* error = nullptr) {
  HeadError ignored;
  return ParseRequestHead(head, HeadLimits{}, error ? error : &ignored);
}

TEST(HttpParseTest, PlainGet) {
  auto r = Parse("GET /a%20b?x=1&y=%2F HTTP/1.1\r\nHost: h:8\r\nRange: bytes=0-1");
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->method, "GET");
  EXPECT_EQ(r->path, "/a b");
  EXPECT_EQ(r->raw_path, "/a%20b");
  EXPECT_EQ(r->query.at("y"), "/");
  EXPECT_EQ(r->Header("range"), "bytes=0-1");
  EXPECT_TRUE(r->keep_alive);
}

TEST(HttpParseTest, RefusesWhatCouldBeFramedTwoWays) {
  HeadError e;
  EXPECT_FALSE(Parse("GET / HTTP/1.1\r\nTransfer-Encoding: chunked", &e).ok());
  EXPECT_EQ(e.status, 501);
  EXPECT_FALSE(Parse("GET / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked", &e).ok());
  EXPECT_EQ(e.status, 400);
  EXPECT_FALSE(Parse("GET / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4", &e).ok());
  EXPECT_EQ(e.status, 400);
  EXPECT_FALSE(Parse("GET / HTTP/1.1\r\nContent-Length: -1", &e).ok());
  EXPECT_FALSE(Parse("GET / HTTP/1.1\r\nContent-Length: 99999999999999999999999", &e).ok());
  EXPECT_FALSE(Parse("GET / HTTP/1.1\r\nContent-Length: 1000000", &e).ok());
  EXPECT_EQ(e.status, 413);
  EXPECT_FALSE(Parse("GET / HTTP/1.1\r\nHost : x", &e).ok());    // space before colon
  EXPECT_FALSE(Parse("GET / HTTP/1.1\r\nA: b\r\n c", &e).ok());  // obs-fold
  EXPECT_FALSE(Parse("GET / HTTP/1.1\nHost: x", &e).ok());       // bare LF
  EXPECT_FALSE(Parse("GET / HTTP/1.1\r\nHost: a\nX-Injected: 1", &e).ok());
  EXPECT_FALSE(Parse("GET / HTTP/1.1\r\nHost: evil.com/\r\n", &e).ok());
  EXPECT_FALSE(Parse("GET  / HTTP/1.1", &e).ok());
  EXPECT_FALSE(Parse("GET / HTTP/2.0", &e).ok());
  EXPECT_EQ(e.status, 505);
  auto ok = Parse("GET / HTTP/1.1\r\nContent-Length: 12");
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(ok->body_length, 12u);
}

TEST(HttpParseTest, DecodedPathMustBeCleanUtf8) {
  for (const char* target :
       {"/%FF", "/api/models/a/b/tree/%C3%28", "/%0D%0AX-Injected:%20yes", "/a%00b", "/x?q=%FF"}) {
    HeadError e;
    EXPECT_FALSE(Parse(std::string("GET ") + target + " HTTP/1.1", &e).ok()) << target;
    EXPECT_EQ(e.status, 400) << target;
  }
  EXPECT_TRUE(Parse("GET /caf%C3%A9 HTTP/1.1").ok());
}

TEST(HttpParseTest, ConnectionHeader) {
  EXPECT_FALSE(Parse("GET / HTTP/1.1\r\nConnection: Close")->keep_alive);
  EXPECT_FALSE(Parse("GET / HTTP/1.0")->keep_alive);
  EXPECT_TRUE(Parse("GET / HTTP/1.0\r\nConnection: keep-alive")->keep_alive);
}

TEST(HttpParseTest, RangesPerRfc9110) {
  auto r = ParseRange("bytes=0-18446744073709551615", 100);
  EXPECT_EQ(r.kind, ByteRange::kPartial);
  EXPECT_EQ(r.first, 0u);
  EXPECT_EQ(r.last, 99u);
  r = ParseRange("bytes=0-99999999999999999999999999", 100);  // beyond 64 bits: to the end
  EXPECT_EQ(r.kind, ByteRange::kPartial);
  EXPECT_EQ(r.last, 99u);
  EXPECT_EQ(ParseRange("bytes=0-1,5-6", 100).kind, ByteRange::kFull);
  EXPECT_EQ(ParseRange("items=0-1", 100).kind, ByteRange::kFull);
  EXPECT_EQ(ParseRange("", 100).kind, ByteRange::kFull);
  EXPECT_EQ(ParseRange("bytes=100-", 100).kind, ByteRange::kUnsatisfiable);
  EXPECT_EQ(ParseRange("bytes=5-2", 100).kind, ByteRange::kUnsatisfiable);
  EXPECT_EQ(ParseRange("bytes=x-2", 100).kind, ByteRange::kUnsatisfiable);
  EXPECT_EQ(ParseRange("bytes=-0", 100).kind, ByteRange::kUnsatisfiable);
  EXPECT_EQ(ParseRange("bytes=-5", 0).kind, ByteRange::kUnsatisfiable);
  r = ParseRange("Bytes=-10", 100);
  EXPECT_EQ(r.kind, ByteRange::kPartial);
  EXPECT_EQ(r.first, 90u);
  r = ParseRange("bytes=-99999999999999999999999", 100);
  EXPECT_EQ(r.first, 0u);
  EXPECT_EQ(r.last, 99u);
}

TEST(HttpParseTest, BearerTokenMatches) {
  EXPECT_TRUE(BearerTokenMatches("Bearer s3cret", "s3cret"));
  EXPECT_FALSE(BearerTokenMatches("Bearer s3cres", "s3cret"));
  EXPECT_FALSE(BearerTokenMatches("Bearer s3cret2", "s3cret"));
  EXPECT_FALSE(BearerTokenMatches("Bearer s3cre", "s3cret"));
  EXPECT_FALSE(BearerTokenMatches("bearer s3cret", "s3cret"));
  EXPECT_FALSE(BearerTokenMatches("", "s3cret"));
  EXPECT_FALSE(BearerTokenMatches("Bearer ", ""));
}

TEST(HttpParseTest, PrintableBoundsAndCleans) {
  EXPECT_EQ(Printable("a\r\nb\xff", 100), "a??b?");
  EXPECT_EQ(Printable(std::string(1000, 'x'), 10), std::string(10, 'x') + "...");
  EXPECT_EQ(Printable("caf\xc3\xa9"), "caf\xc3\xa9");
}

TEST(MirrorRouteTest, ValidatesEveryPart) {
  auto r = ParseMirrorRoute("/acme/m/resolve/refs%2Fpr%2F1/sub/config.json");
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->kind, MirrorRoute::kResolve);
  EXPECT_EQ(r->repo_id, "acme/m");
  EXPECT_EQ(r->revision, "refs/pr/1");
  EXPECT_EQ(r->path, "sub/config.json");
  r = ParseMirrorRoute("/api/models/acme/m/tree/main/revision/x");
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->kind, MirrorRoute::kTree);
  EXPECT_EQ(r->repo_id, "acme/m");
  EXPECT_EQ(r->path, "revision/x");
  r = ParseMirrorRoute("/api/models/acme/m");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->kind, MirrorRoute::kRevision);
  EXPECT_EQ(r->revision, "main");
  for (const char* bad :
       {"/acme/m/resolve/..%2F..%2F..%2F..%2Fdev%2Fzero/config.json",
        "/acme/m/resolve/main/..%2F..%2Fx", "/api/models/acme/m/revision/..%2F..%2Fetc",
        "/api/models/acme/m/tree/main/..", "/..%2Fx/m/resolve/main/a", "/acme/m/resolve/a%00b/x",
        "/acme/m/resolve/main/%2Fetc%2Fpasswd", "/api/models/acme/m/revision/x.lock"}) {
    auto b = ParseMirrorRoute(bad);
    EXPECT_FALSE(b.ok()) << bad;
    EXPECT_EQ(b.status().code(), StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_EQ(ParseMirrorRoute("/nothing").status().code(), StatusCode::kNotFound);
}

// --- a live server ---------------------------------------------------------------------

int Connect(int port, const char* from = "127.0.0.1") {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in src{};
  src.sin_family = AF_INET;
  ::inet_pton(AF_INET, from, &src.sin_addr);
  ::bind(fd, reinterpret_cast<sockaddr*>(&src), sizeof src);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  ::inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// Everything the server sends until it closes or `ms` pass without a byte.
std::string ReadAll(int fd, int ms = 2000) {
  std::string out;
  char buf[65536];
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, ms) <= 0) break;
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

int CountOf(const std::string& haystack, const std::string& needle) {
  int n = 0;
  for (size_t at = haystack.find(needle); at != std::string::npos;
       at = haystack.find(needle, at + 1)) {
    ++n;
  }
  return n;
}

class LiveServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    HttpServerOptions o;
    o.head_timeout_ms = 1500;
    o.idle_timeout_ms = 1000;
    o.worker_threads = 4;
    server_ = std::make_unique<HttpServer>(
        "127.0.0.1", 0,
        [this](const HttpRequest& r) -> HttpResponse {
          ++handled_;
          if (r.path == "/throw") throw std::runtime_error("boom");
          if (r.path == "/slow") std::this_thread::sleep_for(std::chrono::milliseconds(1500));
          if (r.path == "/big") return HttpResponse::Text(200, std::string(4 << 20, 'b'));
          if (r.path == "/inject") {
            HttpResponse resp = HttpResponse::Text(200, "x");
            resp.Add("X-Bad", "a\r\nX-Injected: yes");
            return resp;
          }
          return HttpResponse::Text(200, "path=" + r.path);
        },
        o);
    ASSERT_TRUE(server_->Start().ok());
  }
  void TearDown() override { server_->Stop(); }

  std::string Exchange(const std::string& bytes, int ms = 1500) {
    int fd = Connect(server_->port());
    EXPECT_GE(fd, 0);
    ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    std::string out = ReadAll(fd, ms);
    ::close(fd);
    return out;
  }

  std::unique_ptr<HttpServer> server_;
  std::atomic<int> handled_{0};
};

TEST_F(LiveServerTest, AHandlerThatThrowsAnswers500AndTheServerLives) {
  EXPECT_NE(Exchange("GET /throw HTTP/1.1\r\nConnection: close\r\n\r\n").find("500"),
            std::string::npos);
  EXPECT_NE(Exchange("GET /ok HTTP/1.1\r\nConnection: close\r\n\r\n").find("path=/ok"),
            std::string::npos);
}

TEST_F(LiveServerTest, ABodyIsNeverParsedAsTheNextRequest) {
  std::string smuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
  std::string out =
      Exchange("GET /first HTTP/1.1\r\nContent-Length: " + std::to_string(smuggled.size()) +
               "\r\n\r\n" + smuggled + "GET /second HTTP/1.1\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(CountOf(out, "HTTP/1.1 200"), 2) << out;
  EXPECT_EQ(out.find("/smuggled"), std::string::npos) << out;
  EXPECT_NE(out.find("path=/second"), std::string::npos) << out;
  // A POST body is consumed with its 405, not executed.
  out = Exchange("POST /x HTTP/1.1\r\nContent-Length: " + std::to_string(smuggled.size()) +
                 "\r\n\r\n" + smuggled);
  EXPECT_NE(out.find("405"), std::string::npos);
  EXPECT_EQ(out.find("/smuggled"), std::string::npos) << out;
  // Transfer-Encoding with Content-Length: refused and closed.
  out = Exchange("GET /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n" +
                 smuggled);
  EXPECT_EQ(CountOf(out, "HTTP/1.1 "), 1) << out;
  EXPECT_NE(out.find("400"), std::string::npos);
  EXPECT_EQ(handled_.load(), 2);  // /first and /second only
}

TEST_F(LiveServerTest, ResponseHeadersCannotBeSplit) {
  std::string out = Exchange("GET /inject HTTP/1.1\r\nConnection: close\r\n\r\n");
  EXPECT_NE(out.find("200"), std::string::npos);
  EXPECT_EQ(out.find("X-Injected"), std::string::npos) << out;
}

TEST_F(LiveServerTest, PipelinedRequestsAreAnsweredInOrder) {
  std::string out = Exchange(
      "GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nGET /3 HTTP/1.1\r\nConnection: close\r\n\r\n");
  size_t a = out.find("path=/1"), b = out.find("path=/2"), c = out.find("path=/3");
  ASSERT_NE(c, std::string::npos) << out;
  EXPECT_LT(a, b);
  EXPECT_LT(b, c);
}

TEST_F(LiveServerTest, SlowAndIdleClientsNeitherBlockOthersNorStayForever) {
  // 200 connections that never finish their head, 50 slow readers of a 4 MiB body and 200
  // idle ones, from other addresses than the well-behaved client.
  std::vector<int> hostile;
  for (int i = 0; i < 450; ++i) {
    std::string from = "127.0.1." + std::to_string(1 + i % 40);
    int fd = Connect(server_->port(), from.c_str());
    ASSERT_GE(fd, 0);
    int small = 4096;
    ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    if (i < 200) {
      ::send(fd, "GET / HTTP/1.1\r\nX-Slow: ", 24, MSG_NOSIGNAL);
    } else if (i < 250) {
      std::string req = "GET /big HTTP/1.1\r\n\r\n";
      ::send(fd, req.data(), req.size(), MSG_NOSIGNAL);
    }
    hostile.push_back(fd);
  }
  auto start = std::chrono::steady_clock::now();
  int fd = Connect(server_->port(), "127.0.0.2");
  std::string req = "GET /hello HTTP/1.1\r\nConnection: close\r\n\r\n";
  ::send(fd, req.data(), req.size(), MSG_NOSIGNAL);
  std::string out = ReadAll(fd, static_cast<int>(1000 * kSlack));
  ::close(fd);
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_NE(out.find("path=/hello"), std::string::npos);
  EXPECT_LT(s, 1.0 * kSlack);
  // Past the head and idle deadlines (1.5 s / 1 s here) the slowloris and idle connections
  // are gone; the slow readers go only when their send stalls (30 s), so they stay.
  for (int i = 0; i < 60 * kSlack && server_->open_connections() > 50; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_LE(server_->open_connections(), 50);
  for (int h : hostile) ::close(h);
}

TEST_F(LiveServerTest, OneAddressCannotOccupyEveryWorker) {
  // 4 workers here: one address gets a quarter of them, whatever it queues.
  std::vector<int> slow;
  for (int i = 0; i < 4; ++i) {
    int fd = Connect(server_->port(), "127.0.3.1");
    std::string req = "GET /slow HTTP/1.1\r\n\r\n";
    ::send(fd, req.data(), req.size(), MSG_NOSIGNAL);
    slow.push_back(fd);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  auto start = std::chrono::steady_clock::now();
  int fd = Connect(server_->port(), "127.0.3.2");
  std::string req = "GET /quick HTTP/1.1\r\nConnection: close\r\n\r\n";
  ::send(fd, req.data(), req.size(), MSG_NOSIGNAL);
  std::string out = ReadAll(fd, 3000);
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ::close(fd);
  EXPECT_NE(out.find("path=/quick"), std::string::npos);
  EXPECT_LT(s, 0.5 * kSlack);
  for (int f : slow) ::close(f);
}

TEST_F(LiveServerTest, HalfClosedClientStillGetsItsAnswers) {
  int fd = Connect(server_->port());
  std::string req = "GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n";
  ::send(fd, req.data(), req.size(), MSG_NOSIGNAL);
  ::shutdown(fd, SHUT_WR);  // like `printf ... | nc -N`
  std::string out = ReadAll(fd);
  ::close(fd);
  EXPECT_NE(out.find("path=/a"), std::string::npos) << out;
  EXPECT_NE(out.find("path=/b"), std::string::npos) << out;
}

TEST_F(LiveServerTest, PerAddressConnectionLimit) {
  std::vector<int> fds;
  for (int i = 0; i < 80; ++i) fds.push_back(Connect(server_->port(), "127.0.2.1"));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_LE(server_->open_connections(), 64);
  // Another address is still served.
  int fd = Connect(server_->port(), "127.0.2.2");
  std::string req = "GET /x HTTP/1.1\r\nConnection: close\r\n\r\n";
  ::send(fd, req.data(), req.size(), MSG_NOSIGNAL);
  EXPECT_NE(ReadAll(fd).find("path=/x"), std::string::npos);
  ::close(fd);
  for (int f : fds) ::close(f);
}

TEST(HttpServerStopTest, StopJoinsEverythingWithConnectionsOpen) {
  for (int round = 0; round < 5; ++round) {
    auto server = std::make_unique<HttpServer>(
        "127.0.0.1", 0, [](const HttpRequest&) { return HttpResponse::Text(200, "ok"); });
    ASSERT_TRUE(server->Start().ok());
    std::vector<int> fds;
    for (int i = 0; i < 20; ++i) {
      int fd = Connect(server->port());
      std::string req = "GET / HTTP/1.1\r\n\r\n";
      ::send(fd, req.data(), req.size(), MSG_NOSIGNAL);
      fds.push_back(fd);
    }
    server.reset();  // the destructor joins; ASan reports any use after free
    for (int fd : fds) ::close(fd);
  }
}

TEST(HttpServerAccessLogTest, ReportsEveryAnswerOnce) {
  std::mutex mu;
  std::vector<AccessRecord> records;
  HttpServerOptions o;
  o.access_log = [&](const AccessRecord& a) {
    std::lock_guard<std::mutex> l(mu);
    records.push_back(a);
  };
  HttpServer server(
      "127.0.0.1", 0,
      [](const HttpRequest& r) {
        if (r.path == "/big") return HttpResponse::Text(200, std::string(64 << 20, 'b'));
        HttpResponse resp = HttpResponse::Text(404, "nope");
        resp.log_note = "detail for the log";
        return resp;
      },
      o);
  ASSERT_TRUE(server.Start().ok());
  auto exchange = [&](const std::string& bytes) {
    int fd = Connect(server.port());
    ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    std::string out = ReadAll(fd, 500);
    ::close(fd);
    return out;
  };
  exchange("GET /a?secret=1 HTTP/1.1\r\nConnection: close\r\n\r\n");
  exchange("POST /p HTTP/1.1\r\nConnection: close\r\n\r\n");
  exchange("GET /\x01 HTTP/1.1\r\n\r\n");
  {  // a client that leaves before the body is out
    int fd = Connect(server.port());
    std::string req = "GET /big HTTP/1.1\r\n\r\n";
    ::send(fd, req.data(), req.size(), MSG_NOSIGNAL);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    ::close(fd);
  }
  for (int i = 0; i < 50; ++i) {
    {
      std::lock_guard<std::mutex> l(mu);
      if (records.size() >= 4) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  server.Stop();
  ASSERT_EQ(records.size(), 4u);
  EXPECT_EQ(records[0].method, "GET");
  EXPECT_EQ(records[0].path, "/a");  // no query string
  EXPECT_EQ(records[0].status, 404);
  EXPECT_EQ(records[0].body_bytes, 4u);
  EXPECT_TRUE(records[0].complete);
  EXPECT_EQ(records[0].note, "detail for the log");
  EXPECT_EQ(records[1].status, 405);
  EXPECT_EQ(records[1].method, "POST");
  EXPECT_EQ(records[2].status, 400);
  EXPECT_EQ(records[2].method, "-");
  EXPECT_EQ(records[3].path, "/big");
  EXPECT_FALSE(records[3].complete);
  EXPECT_LT(records[3].body_bytes, uint64_t{64} << 20);
}

}  // namespace
}  // namespace mx::server
