#include "http/http.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "http/curl_util.h"
#include "http/range_engine.h"

namespace mx::http {
namespace {

TEST(HttpTest, SplitIntoChunksAlignsToChunkSize) {
  auto r = SplitIntoChunks(5, 25, 10);
  ASSERT_EQ(r.size(), 3u);
  EXPECT_EQ(r[0].begin, 5u);
  EXPECT_EQ(r[0].end, 10u);
  EXPECT_EQ(r[1].begin, 10u);
  EXPECT_EQ(r[1].end, 20u);
  EXPECT_EQ(r[2].end, 25u);
  EXPECT_TRUE(SplitIntoChunks(7, 7, 10).empty());
}

TEST(HttpTest, RetryAfterAndBackoff) {
  EXPECT_EQ(*ParseRetryAfter("3"), 3.0);
  EXPECT_FALSE(ParseRetryAfter("soon").has_value());
  RetryPolicy p{5, 1.0, 8.0};
  for (int attempt = 1; attempt < 8; ++attempt) {
    double s = BackoffSeconds(attempt, p, std::nullopt);
    EXPECT_LE(s, 8.0);
    EXPECT_GE(s, 0.5 * std::min(8.0, 1.0 * (1 << (attempt - 1))));
  }
  EXPECT_EQ(BackoffSeconds(1, p, 2.5), 2.5);
  EXPECT_TRUE(IsRetryableStatus(429));
  EXPECT_TRUE(IsRetryableStatus(503));
  EXPECT_FALSE(IsRetryableStatus(404));
}

TEST(HttpTest, UrlHelpers) {
  EXPECT_EQ(UrlQuote("refs/pr/1"), "refs%2Fpr%2F1");
  EXPECT_EQ(UrlQuote("a b/c.txt", "/"), "a%20b/c.txt");
  EXPECT_EQ(OriginOf("HTTP://Example.com/x"), "http://example.com:80");
  EXPECT_EQ(OriginOf("https://h:8443/x?y"), "https://h:8443");
  EXPECT_EQ(ResolveUrl("http://a:1/x/y?q", "/api/z"), "http://a:1/api/z");
  EXPECT_EQ(ResolveUrl("http://a:1/x/y", "http://b:2/c"), "http://b:2/c");
}

TEST(HttpTest, SameOriginForCredentials) {
  EXPECT_TRUE(IsSameHttpOrigin("http://127.0.0.1:8/api/a", "HTTP://127.0.0.1:8/api/b?c=1"));
  EXPECT_TRUE(IsSameHttpOrigin("https://hub.example/x", "https://hub.example:443/y"));
  EXPECT_FALSE(IsSameHttpOrigin("http://127.0.0.1:8/a", "http://127.0.0.2:8/a"));   // host
  EXPECT_FALSE(IsSameHttpOrigin("http://127.0.0.1:8/a", "http://127.0.0.1:9/a"));   // port
  EXPECT_FALSE(IsSameHttpOrigin("https://hub.example/a", "http://hub.example/a"));  // scheme
  EXPECT_FALSE(IsSameHttpOrigin("http://hub.example/a", "http://hub.example.evil/a"));
  EXPECT_FALSE(IsSameHttpOrigin("http://hub.example/a", "http://hub.example@evil/a"));
  EXPECT_FALSE(IsSameHttpOrigin("ftp://h/a", "ftp://h/b"));  // only http(s)
  EXPECT_FALSE(IsSameHttpOrigin("file:///etc/passwd", "file:///etc/passwd"));
  EXPECT_FALSE(IsSameHttpOrigin("", ""));
}

TEST(HttpTest, PercentEncoderIsUppercaseRfc3986) {
  EXPECT_EQ(UrlQuote(std::string("\xff\x00~-._", 6)), "%FF%00~-._");
  EXPECT_EQ(UrlQuote("a=b&c"), "a%3Db%26c");
  EXPECT_EQ(UrlQuote("a=b", "="), "a=b");
}

TEST(HttpTest, OnlyHttpAndHttpsAreSpoken) {
  // file:// would read local files (file:///dev/zero until bad_alloc) and gopher:// would
  // write raw bytes to local services: libcurl must refuse both before connecting.
  for (const char* url : {"file:///etc/hostname", "gopher://127.0.0.1:1/_FLUSHALL",
                          "dict://127.0.0.1:1/x", "ftp://127.0.0.1:1/x"}) {
    Request req;
    req.url = url;
    auto r = Fetch(req, RetryPolicy{1, 0.0, 0.0});
    EXPECT_FALSE(r.ok()) << url;
    if (!r.ok()) {
      EXPECT_NE(r.status().message().find("not supported or disabled"), std::string::npos)
          << url << ": " << r.status().message();
    }
  }
}

TEST(HttpTest, StorageCredentialHeadersAreRecognised) {
  EXPECT_TRUE(CarriesStorageCredentials({"X-Amz-Security-Token: t"}));
  EXPECT_TRUE(CarriesStorageCredentials({"Authorization: a", "x-amz-date: d"}));
  EXPECT_TRUE(CarriesStorageCredentials({"x-ms-version: v"}));
  EXPECT_TRUE(CarriesStorageCredentials({"X-Goog-User-Project: p"}));
  EXPECT_FALSE(CarriesStorageCredentials({"Authorization: Bearer hf_x", "Range: bytes=0-0"}));
  EXPECT_FALSE(CarriesStorageCredentials({}));
}

TEST(HttpTest, TlsFailuresThatNoRetryFixesAreRecognised) {
  auto says = [](CURLcode rc, const char* detail, const char* expected) {
    auto r = internal::PermanentTlsFailure(rc, detail);
    return r && r->find(expected) != std::string::npos;
  };
  EXPECT_TRUE(says(CURLE_SSL_CONNECT_ERROR, "error:0A00010B:SSL routines::wrong version number",
                   "does not speak TLS"));
  EXPECT_TRUE(says(CURLE_PEER_FAILED_VERIFICATION,
                   "SSL certificate problem: self-signed certificate", "CURL_CA_BUNDLE"));
  EXPECT_TRUE(says(CURLE_PEER_FAILED_VERIFICATION,
                   "SSL: no alternative certificate subject name matches target host name 'x'",
                   "another host name"));
  EXPECT_TRUE(says(CURLE_SSL_CACERT_BADFILE, "error setting certificate file", "CA bundle"));
  EXPECT_TRUE(says(CURLE_SSL_CERTPROBLEM, "could not load PEM client certificate", "client"));
  // A reset mid-handshake may pass: still retried.
  EXPECT_FALSE(internal::PermanentTlsFailure(CURLE_SSL_CONNECT_ERROR,
                                             "OpenSSL SSL_connect: Connection reset by peer"));
  EXPECT_FALSE(internal::PermanentTlsFailure(CURLE_COULDNT_CONNECT, "Connection refused"));
}

// A plain-HTTP peer that answers every connection with a 400 (what an HTTP server says to
// a TLS ClientHello), on a loopback port, until destroyed.
class PlainHttpPeer {
 public:
  PlainHttpPeer() {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(a);
    bind(fd_, reinterpret_cast<sockaddr*>(&a), len);
    listen(fd_, 16);
    getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] {
      for (;;) {
        int c = accept(fd_, nullptr, nullptr);
        if (c < 0 || stop_) {
          if (c >= 0) close(c);
          return;
        }
        ++connections_;
        char buf[4096];
        (void)!read(c, buf, sizeof(buf));
        const char kAnswer[] = "HTTP/1.0 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
        (void)!write(c, kAnswer, sizeof(kAnswer) - 1);
        close(c);
      }
    });
  }
  ~PlainHttpPeer() {
    stop_ = true;
    shutdown(fd_, SHUT_RDWR);
    thread_.join();
    close(fd_);
  }
  std::string url() const { return "https://127.0.0.1:" + std::to_string(port_) + "/f"; }
  int connections() const { return connections_; }

 private:
  int fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> connections_{0};
  std::thread thread_;
};

TEST(HttpTest, HttpsToAPlainHttpPortFailsAtOnce) {
  PlainHttpPeer peer;
  auto start = std::chrono::steady_clock::now();
  Request req;
  req.url = peer.url();
  auto r = Fetch(req, RetryPolicy{6, 0.25, 20.0});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition) << r.status().message();
  EXPECT_NE(r.status().message().find("http:// instead of https://"), std::string::npos)
      << r.status().message();

  // The range engine too: one attempt, no backoff.
  RangeEngine engine(EngineOptions{});
  Status done = Status::Internal("not called");
  FetchJob job;
  job.url = peer.url();
  job.size = 10;
  job.ranges = {{0, 10}};
  job.display_name = "f";
  job.sink = [](uint64_t, const char*, size_t) { return Status::OK(); };
  job.on_done = [&done](const Status& st) { done = st; };
  engine.Add(std::move(job));
  ASSERT_TRUE(engine.Run().ok());
  EXPECT_EQ(done.code(), StatusCode::kFailedPrecondition) << done.message();
  EXPECT_NE(done.message().find("does not speak TLS"), std::string::npos) << done.message();
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(seconds, 1.0);  // six tries with backoff took 4 s and more
  EXPECT_EQ(peer.connections(), 2);
}

}  // namespace
}  // namespace mx::http
