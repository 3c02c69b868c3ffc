// HttpServer: the HTTP/1.1 server behind the mirror endpoint and /metrics, built to stay
// up with any client on the network, hostile or slow.
//
// One event-loop thread (epoll) owns every connection: it accepts, reads request heads
// against a whole-head deadline, discards small request bodies, and writes responses
// without blocking (string bodies with send, file bodies with sendfile from the page
// cache). A slow client therefore costs a connection slot, never a thread. Handlers run
// on a fixed pool of worker threads created by Start(): no thread is created while
// serving, so a pids or memory limit cannot take the server down mid-request. Limits:
// total connections, connections per client address, queued requests per client, idle
// keep-alive time, whole-head time, send stall time. A handler that throws answers 500.
// Stop() closes every connection and joins every thread it started.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"
#include "server/http_parse.h"

namespace mx::server {

struct HttpResponse {
  int status = 200;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  // When file_fd >= 0 the body is file bytes [file_offset, file_offset + file_length),
  // sent with sendfile; the server closes file_fd.
  int file_fd = -1;
  uint64_t file_offset = 0;
  uint64_t file_length = 0;
  // For HEAD answers that describe a body without opening it: the Content-Length to send.
  std::optional<uint64_t> head_length;
  // For the server's own log only (never sent): why an error answer was given, with the
  // detail the client does not see (see AccessRecord::note).
  std::string log_note;

  static HttpResponse Text(int status, std::string body, std::string type = "text/plain");
  void Add(std::string name, std::string value) {
    headers.emplace_back(std::move(name), std::move(value));
  }
};

using HttpHandler = std::function<HttpResponse(const HttpRequest&)>;

// One answered request, for an access log: reported once per response when its last
// byte was sent (complete) or its connection closed first (not complete), including the
// answers the server gives itself (400, 405, 431, 503).
struct AccessRecord {
  std::string method;  // "-" when the request head could not be parsed
  std::string path;    // as sent, without the query string (which may carry secrets)
  std::string peer;
  int status = 0;
  uint64_t body_bytes = 0;  // body bytes actually sent
  double seconds = 0;       // from the end of the request head to the last byte
  bool complete = false;
  std::string note;  // HttpResponse::log_note
};
using AccessLogger = std::function<void(const AccessRecord&)>;

struct HttpServerOptions {
  int worker_threads = 32;
  int max_connections = 4096;
  int max_connections_per_peer = 64;
  int max_queued_per_peer = 16;  // requests waiting for or inside a handler, per address
  int head_timeout_ms = 10000;   // from the first byte of a request to its blank line
  int idle_timeout_ms = 5000;    // keep-alive connections with no request under way
  int send_stall_ms = 30000;     // a response that makes no progress for this long is cut
  HeadLimits limits;
  // Called on the event-loop thread for every response (must be quick and not throw).
  AccessLogger access_log;
};

class HttpServer {
 public:
  HttpServer(std::string host, int port, HttpHandler handler, HttpServerOptions options = {});
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds, starts the event loop and the workers. port 0 picks a free port (see port()).
  Status Start();
  // Stops accepting, closes every connection, joins every thread. Idempotent.
  void Stop();
  int port() const { return port_; }
  // Bytes of bodies sent so far (files and strings).
  uint64_t body_bytes_sent() const;
  // Connections open now (for metrics and tests).
  int open_connections() const;

 private:
  class Loop;
  std::string host_;
  int port_;
  HttpHandler handler_;
  HttpServerOptions options_;
  std::unique_ptr<Loop> loop_;
};

}  // namespace mx::server
