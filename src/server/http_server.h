// HttpServer: a small HTTP/1.1 server for the mirror endpoint and /metrics. Thread per
// connection (capped), keep-alive, GET/HEAD only; file bodies go out with sendfile(2)
// straight from the page cache.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/status.h"

namespace mx::server {

struct HttpRequest {
  std::string method;
  std::string path;                            // decoded path, without the query
  std::string raw_path;                        // as sent
  std::map<std::string, std::string> query;    // decoded
  std::map<std::string, std::string> headers;  // names lowercased
  std::string Header(const std::string& lowercase_name) const;
};

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

  static HttpResponse Text(int status, std::string body, std::string type = "text/plain");
  void Add(std::string name, std::string value) {
    headers.emplace_back(std::move(name), std::move(value));
  }
};

using HttpHandler = std::function<HttpResponse(const HttpRequest&)>;

class HttpServer {
 public:
  HttpServer(std::string host, int port, HttpHandler handler, int max_connections = 512);
  ~HttpServer();

  // Binds and starts accepting. port 0 picks a free port (see port()).
  Status Start();
  void Stop();
  int port() const { return port_; }
  // Bytes of bodies sent so far (files and strings).
  uint64_t body_bytes_sent() const { return body_bytes_.load(); }

 private:
  void AcceptLoop();
  void Serve(int fd);

  std::string host_;
  int port_;
  HttpHandler handler_;
  int max_connections_;
  int listen_fd_ = -1;
  std::atomic<bool> stopping_{false};
  std::atomic<int> connections_{0};
  std::atomic<uint64_t> body_bytes_{0};
  std::thread accept_thread_;
};

// Percent-decodes; '+' is kept (paths, not forms).
std::string UrlDecode(const std::string& s);

}  // namespace mx::server
