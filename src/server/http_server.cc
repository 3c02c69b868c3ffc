#include "server/http_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "common/fs.h"
#include "common/log.h"

namespace mx::server {

namespace {

constexpr uint64_t kListenId = 0;
constexpr uint64_t kWakeId = 1;

const char* Reason(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 206:
      return "Partial Content";
    case 302:
      return "Found";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 413:
      return "Content Too Large";
    case 416:
      return "Range Not Satisfiable";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 501:
      return "Not Implemented";
    case 502:
      return "Bad Gateway";
    case 503:
      return "Service Unavailable";
    case 505:
      return "HTTP Version Not Supported";
    default:
      return "Status";
  }
}

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// The bytes that go before a response body: status line, the handler's headers (any with
// a control character is dropped, so no input can split a header), length, connection.
std::string SerializeHead(const HttpResponse& r, uint64_t length, bool keep_alive) {
  std::string out = "HTTP/1.1 " + std::to_string(r.status) + " " + Reason(r.status) + "\r\n";
  for (const auto& [k, v] : r.headers) {
    if (k.empty() || !IsSafeHeaderValue(k) || k.find(':') != std::string::npos ||
        !IsSafeHeaderValue(v)) {
      spdlog::warn("dropping unsafe response header {}", Printable(k, 64));
      continue;
    }
    out += k + ": " + v + "\r\n";
  }
  out += "Content-Length: " + std::to_string(length) + "\r\n";
  out += keep_alive ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n";
  return out;
}

// Best effort on a fresh non-blocking socket: a short refusal, then the caller closes.
void SendRefusal(int fd, int status) {
  std::string msg = "HTTP/1.1 " + std::to_string(status) + " " + Reason(status) +
                    "\r\nContent-Length: 0\r\nRetry-After: 1\r\nConnection: close\r\n\r\n";
  (void)!::send(fd, msg.data(), msg.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
}

}  // namespace

HttpResponse HttpResponse::Text(int status, std::string body, std::string type) {
  HttpResponse r;
  r.status = status;
  r.body = std::move(body);
  r.Add("Content-Type", std::move(type));
  return r;
}

// --- the event loop ----------------------------------------------------------------------

class HttpServer::Loop {
  using Clock = std::chrono::steady_clock;

 public:
  Loop(HttpHandler handler, HttpServerOptions options)
      : handler_(std::move(handler)), options_(std::move(options)) {}
  ~Loop() { Stop(); }

  Status Start(const std::string& host, int* port);
  void Stop();

  std::atomic<uint64_t> body_bytes{0};
  std::atomic<int> open{0};

 private:
  struct Conn {
    enum State { kReadingHead, kReadingBody, kHandling, kWriting };
    uint64_t id = 0;
    int fd = -1;
    uint32_t peer = 0;
    std::string peer_text;
    State state = kReadingHead;
    std::string in;
    bool request_started = false;
    int64_t deadline_ms = 0;
    uint64_t body_left = 0;
    HttpRequest pending;
    std::string out;
    size_t out_off = 0;
    int file_fd = -1;
    off_t file_off = 0;
    uint64_t file_left = 0;
    bool close_after = false;
    bool peer_eof = false;  // the client half-closed after sending
    // The response being written, for the access log.
    bool logging = false;
    AccessRecord access;
    size_t head_len = 0;
    uint64_t file_total = 0;
    Clock::time_point started;
  };
  struct Job {
    uint64_t conn_id;
    uint32_t peer;
    HttpRequest request;
    Clock::time_point started;
  };
  struct Done {
    uint64_t conn_id;
    uint32_t peer;
    std::string out;
    int file_fd = -1;
    uint64_t file_offset = 0;
    uint64_t file_length = 0;
    bool close_after = false;
    // For the access log.
    int status = 0;
    std::string method = "-", path = "-", note;
    size_t head_len = 0;
    Clock::time_point started;
  };

  void Run();
  void Work();
  bool TakeJob(Job* job);  // REQUIRES: jobs_mu_ held
  Done Answer(Job& job);
  void AcceptAll();
  bool EvictOneIdle();
  void OnEvent(Conn* c, uint32_t events);
  void ReadInput(Conn* c);
  void ProcessInput(Conn* c);
  void CloseIfStuckAfterEof(uint64_t id);
  void Dispatch(Conn* c, HttpRequest request);
  void RespondNow(Conn* c, const HttpResponse& r, bool keep_alive,
                  const HttpRequest* request = nullptr);
  // Reports the response under way on `c` to the access log, once.
  void LogAccess(Conn* c, bool complete);
  void StartWriting(Conn* c, Done d);
  void Write(Conn* c);
  void FinishResponse(Conn* c);
  void DrainCompletions();
  void Sweep();
  void Close(Conn* c);
  void Watch(Conn* c, uint32_t events, int op);

  HttpHandler handler_;
  HttpServerOptions options_;
  int listen_fd_ = -1;
  int epoll_fd_ = -1;
  int wake_fd_ = -1;
  std::atomic<bool> stopping_{false};
  bool stopped_ = false;
  std::thread loop_thread_;
  std::vector<std::thread> workers_;

  // Owned by the loop thread.
  std::unordered_map<uint64_t, std::unique_ptr<Conn>> conns_;
  std::unordered_map<uint32_t, int> conns_per_peer_;
  std::unordered_map<uint32_t, int> queued_per_peer_;
  uint64_t next_id_ = 2;
  std::vector<uint64_t> ready_;  // connections with a buffered request to look at
  bool accept_paused_ = false;   // listen socket disarmed after EMFILE, until the next sweep

  // Loop -> workers.
  std::mutex jobs_mu_;
  std::condition_variable jobs_cv_;
  // Requests wait per client address and are taken in turn, one per address, so a client
  // with hundreds of queued requests delays another client by one request, not hundreds.
  std::unordered_map<uint32_t, std::deque<Job>> jobs_;
  std::deque<uint32_t> turns_;
  std::unordered_map<uint32_t, int> running_;  // requests inside a handler, per address
  bool quit_ = false;

  // Workers -> loop.
  std::mutex done_mu_;
  std::vector<Done> done_;
};

Status HttpServer::Loop::Start(const std::string& host, int* port) {
  listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (listen_fd_ < 0) return Status::FromErrno(errno, "socket");
  int one = 1;
  ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(*port));
  if (::inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1) {
    return Status::InvalidArgument("not an IPv4 address: " + host);
  }
  if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    return Status::FromErrno(errno, "bind " + host + ":" + std::to_string(*port));
  }
  if (::listen(listen_fd_, 4096) != 0) return Status::FromErrno(errno, "listen");
  // Leave descriptors for files, the registry and gRPC: at most half the limit for clients.
  if (rlimit nofile{};
      ::getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur != RLIM_INFINITY) {
    // Two descriptors per connection (the socket and a file being sent).
    rlim_t budget = std::min<rlim_t>(nofile.rlim_cur / 4, INT_MAX);
    options_.max_connections = std::min<int>(options_.max_connections, static_cast<int>(budget));
  }
  socklen_t len = sizeof addr;
  ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
  *port = ntohs(addr.sin_port);
  epoll_fd_ = ::epoll_create1(EPOLL_CLOEXEC);
  wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (epoll_fd_ < 0 || wake_fd_ < 0) return Status::FromErrno(errno, "epoll/eventfd");
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kListenId;
  ::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, listen_fd_, &ev);
  ev.data.u64 = kWakeId;
  ::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, wake_fd_, &ev);
  // Every thread is made here, so a thread limit hit later cannot end the process.
  try {
    for (int i = 0; i < std::max(1, options_.worker_threads); ++i) {
      workers_.emplace_back([this] { Work(); });
    }
    loop_thread_ = std::thread([this] { Run(); });
  } catch (const std::system_error& e) {
    Stop();
    return Status::ResourceExhausted(std::string("cannot start HTTP threads: ") + e.what());
  }
  return Status::OK();
}

void HttpServer::Loop::Stop() {
  if (stopped_) return;
  stopped_ = true;
  stopping_ = true;
  if (wake_fd_ >= 0) {
    uint64_t one = 1;
    (void)!::write(wake_fd_, &one, sizeof one);
  }
  if (loop_thread_.joinable()) loop_thread_.join();
  {
    std::lock_guard<std::mutex> l(jobs_mu_);
    quit_ = true;
    jobs_.clear();  // queued requests are dropped with their connections
    turns_.clear();
  }
  jobs_cv_.notify_all();
  for (auto& t : workers_) {
    if (t.joinable()) t.join();
  }
  for (auto& d : done_) {
    if (d.file_fd >= 0) ::close(d.file_fd);
  }
  done_.clear();
  for (auto& [id, c] : conns_) {
    if (c->file_fd >= 0) ::close(c->file_fd);
    ::close(c->fd);
  }
  conns_.clear();
  open = 0;
  for (int* fd : {&listen_fd_, &epoll_fd_, &wake_fd_}) {
    if (*fd >= 0) ::close(*fd);
    *fd = -1;
  }
}

void HttpServer::Loop::Run() {
  epoll_event events[256];
  int64_t last_sweep = NowMs();
  while (!stopping_) {
    int n = ::epoll_wait(epoll_fd_, events, 256, ready_.empty() ? 100 : 0);
    for (int i = 0; i < n && !stopping_; ++i) {
      uint64_t id = events[i].data.u64;
      if (id == kListenId) {
        try {
          AcceptAll();
        } catch (const std::exception& e) {
          spdlog::warn("HTTP: accept: {}", e.what());
        }
      } else if (id == kWakeId) {
        uint64_t v;
        (void)!::read(wake_fd_, &v, sizeof v);
        try {
          DrainCompletions();
        } catch (const std::exception& e) {
          spdlog::warn("HTTP: completing responses: {}", e.what());
        }
      } else if (auto it = conns_.find(id); it != conns_.end()) {
        // Memory can run out (a cgroup limit, an address-space limit): that costs the one
        // connection being served, never the process.
        try {
          OnEvent(it->second.get(), events[i].events);
        } catch (const std::exception& e) {
          spdlog::warn("HTTP: dropping a connection: {}", e.what());
          if (auto again = conns_.find(id); again != conns_.end()) Close(again->second.get());
        }
      }
    }
    std::vector<uint64_t> ready;
    ready.swap(ready_);
    for (uint64_t id : ready) {
      try {
        if (auto it = conns_.find(id); it != conns_.end()) ProcessInput(it->second.get());
        CloseIfStuckAfterEof(id);
      } catch (const std::exception& e) {
        if (auto it = conns_.find(id); it != conns_.end()) Close(it->second.get());
      }
    }
    if (NowMs() - last_sweep >= 100) {
      try {
        Sweep();
      } catch (const std::exception& e) {
        spdlog::warn("HTTP: sweep: {}", e.what());
      }
      last_sweep = NowMs();
    }
  }
}

void HttpServer::Loop::Watch(Conn* c, uint32_t events, int op) {
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = c->id;
  ::epoll_ctl(epoll_fd_, op, c->fd, &ev);
}

void HttpServer::Loop::AcceptAll() {
  // A bounded batch per round, so a connect flood cannot starve connections being served.
  for (int round = 0; round < 256; ++round) {
    sockaddr_in addr{};
    socklen_t len = sizeof addr;
    int fd = ::accept4(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len,
                       SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if ((errno == EMFILE || errno == ENFILE) && !EvictOneIdle()) {
        // Out of descriptors and nothing idle to free: stop listening until the next sweep,
        // or the still-readable listen socket would spin the loop.
        spdlog::warn("HTTP: out of file descriptors; pausing accepts");
        epoll_event ev{};
        ev.data.u64 = kListenId;
        ::epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, listen_fd_, &ev);
        accept_paused_ = true;
      }
      return;
    }
    ScopedFd owned(fd);  // closed on every early exit, including a bad_alloc below
    uint32_t peer = addr.sin_addr.s_addr;
    if (static_cast<int>(conns_.size()) >= options_.max_connections && !EvictOneIdle()) {
      SendRefusal(fd, 503);
      continue;
    }
    auto per_peer = conns_per_peer_.find(peer);
    if (per_peer != conns_per_peer_.end() &&
        per_peer->second >= options_.max_connections_per_peer) {
      SendRefusal(fd, 503);
      continue;
    }
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    // Queue at most this much not-yet-sent data per connection: a reader that stalls
    // then holds 128 KiB of kernel memory instead of a whole autotuned send buffer, while
    // data in flight (and so throughput on long links) is not limited.
    int lowat = 128 << 10;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &lowat, sizeof lowat);
    auto c = std::make_unique<Conn>();
    c->id = next_id_++;
    c->fd = fd;
    c->peer = peer;
    char text[INET_ADDRSTRLEN] = "?";
    ::inet_ntop(AF_INET, &addr.sin_addr, text, sizeof text);
    c->peer_text = text;
    // A new connection must bring its first request within the head deadline.
    c->deadline_ms = NowMs() + options_.head_timeout_ms;
    Conn* conn = c.get();
    conns_.emplace(conn->id, std::move(c));  // may throw: nothing registered yet
    owned.Release();                         // the connection owns it now
    ++conns_per_peer_[peer];
    ++open;
    Watch(conn, EPOLLIN, EPOLL_CTL_ADD);
  }
}

bool HttpServer::Loop::EvictOneIdle() {
  Conn* oldest = nullptr;
  for (auto& [id, c] : conns_) {
    if (c->state == Conn::kReadingHead && !c->request_started && c->in.empty() &&
        (!oldest || c->deadline_ms < oldest->deadline_ms)) {
      oldest = c.get();
    }
  }
  if (!oldest) return false;
  Close(oldest);
  return true;
}

void HttpServer::Loop::OnEvent(Conn* c, uint32_t events) {
  if (c->state == Conn::kWriting) {
    if (events & (EPOLLERR | EPOLLHUP)) return Close(c);
    return Write(c);
  }
  if (c->state == Conn::kReadingHead || c->state == Conn::kReadingBody) ReadInput(c);
}

void HttpServer::Loop::ReadInput(Conn* c) {
  char buf[16384];
  size_t cap = options_.limits.max_head_bytes + sizeof buf;
  while (c->in.size() < cap) {
    ssize_t n = ::recv(c->fd, buf, sizeof buf, 0);
    if (n > 0) {
      c->in.append(buf, static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    if (n == 0 && !c->in.empty()) {
      // The client sent its request(s) and half-closed: answer what is complete, then
      // close (a readable EOF must not be watched again, or the loop would spin).
      c->peer_eof = true;
      uint64_t id = c->id;
      ProcessInput(c);
      CloseIfStuckAfterEof(id);
      return;
    }
    return Close(c);  // EOF or error
  }
  ProcessInput(c);
}

void HttpServer::Loop::CloseIfStuckAfterEof(uint64_t id) {
  auto it = conns_.find(id);
  if (it == conns_.end() || !it->second->peer_eof) return;
  Conn* c = it->second.get();
  // Waiting for more of a request from a client that already closed: it will never come.
  if (c->state == Conn::kReadingHead || c->state == Conn::kReadingBody) Close(c);
}

void HttpServer::Loop::ProcessInput(Conn* c) {
  for (;;) {
    if (c->state == Conn::kReadingBody) {
      uint64_t take = std::min<uint64_t>(c->body_left, c->in.size());
      c->in.erase(0, take);
      c->body_left -= take;
      if (c->body_left > 0) return;
      c->state = Conn::kReadingHead;
      Dispatch(c, std::move(c->pending));
      return;
    }
    if (c->state != Conn::kReadingHead) return;
    // RFC 9112 2.2: empty lines before a request line are ignored.
    size_t skip = 0;
    while (c->in.compare(skip, 2, "\r\n") == 0) skip += 2;
    c->in.erase(0, skip);
    if (c->in.empty()) return;
    if (!c->request_started) {
      c->request_started = true;
      c->deadline_ms = NowMs() + options_.head_timeout_ms;
    }
    size_t end = c->in.find("\r\n\r\n");
    if (end == std::string::npos) {
      if (c->in.size() > options_.limits.max_head_bytes) {
        RespondNow(c, HttpResponse::Text(431, "request head too large\n"), false);
      }
      return;
    }
    HeadError error;
    auto request =
        ParseRequestHead(std::string_view(c->in).substr(0, end), options_.limits, &error);
    c->in.erase(0, end + 4);
    if (!request.ok()) {
      // The framing of anything after a bad head is unknown: answer and close.
      RespondNow(c, HttpResponse::Text(error.status, error.message + "\n"), false);
      return;
    }
    request->peer = c->peer_text;
    if (request->body_length > 0) {
      c->body_left = request->body_length;
      c->pending = std::move(*request);
      c->state = Conn::kReadingBody;
      continue;
    }
    Dispatch(c, std::move(*request));
    return;
  }
}

void HttpServer::Loop::Dispatch(Conn* c, HttpRequest request) {
  c->request_started = false;
  if (request.method != "GET" && request.method != "HEAD") {
    HttpResponse r = HttpResponse::Text(405, "only GET and HEAD\n");
    r.Add("Allow", "GET, HEAD");
    return RespondNow(c, r, request.keep_alive, &request);
  }
  int& queued = queued_per_peer_[c->peer];
  if (queued >= options_.max_queued_per_peer) {
    return RespondNow(c, HttpResponse::Text(503, "too many requests from this address\n"), false,
                      &request);
  }
  c->state = Conn::kHandling;
  // Not watched while a worker answers: pipelined bytes wait in the socket buffer.
  ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, c->fd, nullptr);
  {
    std::lock_guard<std::mutex> l(jobs_mu_);
    std::deque<Job>& mine = jobs_[c->peer];
    bool first = mine.empty();
    mine.push_back({c->id, c->peer, std::move(request), Clock::now()});
    if (first) turns_.push_back(c->peer);
  }
  ++queued;
  jobs_cv_.notify_one();
}

void HttpServer::Loop::RespondNow(Conn* c, const HttpResponse& r, bool keep_alive,
                                  const HttpRequest* request) {
  Done d;
  d.conn_id = c->id;
  d.out = SerializeHead(r, r.body.size(), keep_alive);
  d.head_len = d.out.size();
  d.out += r.body;
  d.close_after = !keep_alive;
  d.status = r.status;
  if (request) {
    d.method = request->method;
    d.path = request->raw_path;
  }
  d.started = Clock::now();
  StartWriting(c, std::move(d));
}

void HttpServer::Loop::LogAccess(Conn* c, bool complete) {
  if (!c->logging) return;
  c->logging = false;
  AccessRecord& a = c->access;
  a.complete = complete;
  a.body_bytes = (c->out_off > c->head_len ? c->out_off - c->head_len : 0) +
                 (c->file_total - std::min(c->file_total, c->file_left));
  a.seconds = std::chrono::duration<double>(Clock::now() - c->started).count();
  try {
    options_.access_log(a);
  } catch (const std::exception& e) {
    spdlog::warn("HTTP: access log: {}", e.what());
  }
}

void HttpServer::Loop::StartWriting(Conn* c, Done d) {
  bool was_watched = c->state != Conn::kHandling;
  c->state = Conn::kWriting;
  c->out = std::move(d.out);
  c->out_off = 0;
  c->file_fd = d.file_fd;
  c->file_off = static_cast<off_t>(d.file_offset);
  c->file_left = d.file_length;
  c->close_after = d.close_after;
  c->deadline_ms = NowMs() + options_.send_stall_ms;
  c->logging = static_cast<bool>(options_.access_log);
  if (c->logging) {
    c->access = AccessRecord{};
    c->access.method = std::move(d.method);
    c->access.path = std::move(d.path);
    c->access.peer = c->peer_text;
    c->access.status = d.status;
    c->access.note = std::move(d.note);
    c->head_len = d.head_len;
    c->file_total = d.file_length;
    c->started = d.started;
  }
  Watch(c, EPOLLOUT, was_watched ? EPOLL_CTL_MOD : EPOLL_CTL_ADD);
  Write(c);
}

void HttpServer::Loop::Write(Conn* c) {
  // At most this much per turn, so one connection with a deep socket buffer cannot hold
  // the loop while others wait; epoll reports it writable again next round.
  constexpr uint64_t kTurnBytes = 1 << 20;
  uint64_t budget = kTurnBytes;
  bool progress = false;
  while (c->out_off < c->out.size()) {
    ssize_t n = ::send(c->fd, c->out.data() + c->out_off, c->out.size() - c->out_off,
                       MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      c->out_off += static_cast<size_t>(n);
      progress = true;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    return Close(c);
  }
  if (c->out_off == c->out.size()) {
    while (c->file_left > 0 && budget > 0) {
      ssize_t n = ::sendfile(c->fd, c->file_fd, &c->file_off,
                             static_cast<size_t>(std::min<uint64_t>(c->file_left, budget)));
      if (n > 0) {
        budget -= std::min<uint64_t>(budget, static_cast<uint64_t>(n));
        c->file_left -= static_cast<uint64_t>(n);
        body_bytes += static_cast<uint64_t>(n);
        progress = true;
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      return Close(c);  // an error, or the file shrank under us: the length is a lie now
    }
  }
  if (progress) c->deadline_ms = NowMs() + options_.send_stall_ms;
  if (c->out_off == c->out.size() && c->file_left == 0) FinishResponse(c);
}

void HttpServer::Loop::FinishResponse(Conn* c) {
  LogAccess(c, true);
  if (c->file_fd >= 0) ::close(c->file_fd);
  c->file_fd = -1;
  c->out.clear();
  c->out.shrink_to_fit();
  if (c->close_after || (c->peer_eof && c->in.empty())) return Close(c);
  c->state = Conn::kReadingHead;
  c->request_started = false;
  c->deadline_ms = NowMs() + options_.idle_timeout_ms;
  // After the client's EOF only buffered requests remain: nothing more to read.
  Watch(c, c->peer_eof ? 0u : static_cast<uint32_t>(EPOLLIN), EPOLL_CTL_MOD);
  // A pipelined request may already be buffered: the loop takes it up next round (not
  // here, so a long pipeline cannot recurse).
  if (!c->in.empty()) ready_.push_back(c->id);
}

void HttpServer::Loop::DrainCompletions() {
  std::vector<Done> done;
  {
    std::lock_guard<std::mutex> l(done_mu_);
    done.swap(done_);
  }
  for (auto& d : done) {
    auto q = queued_per_peer_.find(d.peer);
    if (q != queued_per_peer_.end() && --q->second <= 0) queued_per_peer_.erase(q);
    auto it = conns_.find(d.conn_id);
    if (it == conns_.end()) {  // the client left while its request was being answered
      if (d.file_fd >= 0) ::close(d.file_fd);
      if (options_.access_log) {
        AccessRecord a;
        a.method = std::move(d.method);
        a.path = std::move(d.path);
        a.status = d.status;
        a.note = std::move(d.note);
        a.seconds = std::chrono::duration<double>(Clock::now() - d.started).count();
        try {
          options_.access_log(a);
        } catch (const std::exception&) {
        }
      }
      continue;
    }
    uint64_t id = d.conn_id;
    try {
      // StartWriting hands the file to the connection before anything that can throw.
      StartWriting(it->second.get(), std::move(d));
    } catch (const std::exception&) {
      if (auto again = conns_.find(id); again != conns_.end()) Close(again->second.get());
    }
  }
}

void HttpServer::Loop::Sweep() {
  int64_t now = NowMs();
  if (accept_paused_) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = kListenId;
    ::epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, listen_fd_, &ev);
    accept_paused_ = false;
  }
  std::vector<Conn*> expired;
  for (auto& [id, c] : conns_) {
    if (c->state != Conn::kHandling && now > c->deadline_ms) expired.push_back(c.get());
  }
  for (Conn* c : expired) Close(c);
}

void HttpServer::Loop::Close(Conn* c) {
  if (c->state == Conn::kWriting) LogAccess(c, false);
  if (c->state != Conn::kHandling) ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, c->fd, nullptr);
  ::close(c->fd);
  if (c->file_fd >= 0) ::close(c->file_fd);
  auto p = conns_per_peer_.find(c->peer);
  if (p != conns_per_peer_.end() && --p->second <= 0) conns_per_peer_.erase(p);
  --open;
  conns_.erase(c->id);
}

bool HttpServer::Loop::TakeJob(Job* job) {
  // The first address in turn that is below its share of the workers: one client (or two)
  // cannot occupy every worker with slow requests while others wait.
  const int share = std::max(1, options_.worker_threads / 4);
  for (auto t = turns_.begin(); t != turns_.end(); ++t) {
    uint32_t peer = *t;
    auto r = running_.find(peer);
    if (r != running_.end() && r->second >= share) continue;
    // Everything that may allocate (and throw bad_alloc under a memory limit) happens before
    // the job leaves the queue, so a failure loses nothing: the caller retries later.
    auto it = jobs_.find(peer);
    bool more = it->second.size() > 1;
    auto counted = running_.try_emplace(peer, 0).first;  // an idle 0 entry is harmless
    if (more) turns_.push_back(peer);                    // invalidates t: found again below
    turns_.erase(std::find(turns_.begin(), turns_.end(), peer));  // the first: this turn
    *job = std::move(it->second.front());
    it->second.pop_front();
    if (!more) jobs_.erase(it);
    ++counted->second;
    return true;
  }
  return false;
}

void HttpServer::Loop::Work() {
  for (;;) {
    Job job;
    try {
      std::unique_lock<std::mutex> l(jobs_mu_);
      jobs_cv_.wait(l, [&] { return quit_ || TakeJob(&job); });
      if (quit_) return;
    } catch (const std::bad_alloc&) {
      // Memory is short (TakeJob left the queue as it was): wait, then try again.
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      continue;
    }
    Done d;
    try {
      d = Answer(job);
    } catch (...) {  // out of memory even for the error answer: close without one
      d = Done{};
      d.conn_id = job.conn_id;
      d.peer = job.peer;
      d.close_after = true;
    }
    {
      std::lock_guard<std::mutex> l(jobs_mu_);
      if (auto r = running_.find(job.peer); r != running_.end() && --r->second <= 0) {
        running_.erase(r);
      }
    }
    jobs_cv_.notify_all();
    // The loop must hear of every answer, or the connection would wait forever: retry
    // while memory is short.
    for (int attempt = 0;; ++attempt) {
      try {
        std::lock_guard<std::mutex> l(done_mu_);
        done_.push_back(std::move(d));
        break;
      } catch (const std::bad_alloc&) {
        if (attempt == 1000) std::abort();
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
    }
    uint64_t one = 1;
    (void)!::write(wake_fd_, &one, sizeof one);
  }
}

HttpServer::Loop::Done HttpServer::Loop::Answer(Job& job) {
  Done d;
  d.conn_id = job.conn_id;
  d.peer = job.peer;
  d.started = job.started;
  const HttpRequest& req = job.request;
  d.method = req.method;
  d.path = req.raw_path;
  bool keep_alive = req.keep_alive;
  HttpResponse r;
  try {
    r = handler_(req);
  } catch (const std::exception& e) {
    spdlog::error("HTTP {} {}: handler failed: {}", req.method, Printable(req.raw_path), e.what());
    r = HttpResponse::Text(500, "internal error\n");
  } catch (...) {
    spdlog::error("HTTP {} {}: handler failed", req.method, Printable(req.raw_path));
    r = HttpResponse::Text(500, "internal error\n");
  }
  d.status = r.status;
  try {
    d.note = std::move(r.log_note);
    uint64_t length = r.file_fd >= 0 ? r.file_length : r.body.size();
    if (req.method == "HEAD") {
      if (r.head_length) length = *r.head_length;
      d.out = SerializeHead(r, length, keep_alive);
      d.head_len = d.out.size();
      if (r.file_fd >= 0) ::close(r.file_fd);
    } else if (r.file_fd >= 0) {
      d.out = SerializeHead(r, length, keep_alive);
      d.head_len = d.out.size();
      d.file_fd = r.file_fd;
      d.file_offset = r.file_offset;
      d.file_length = r.file_length;
    } else {
      d.out = SerializeHead(r, length, keep_alive);
      d.head_len = d.out.size();
      d.out += r.body;
      body_bytes += r.body.size();
    }
    d.close_after = !keep_alive;
  } catch (...) {  // bad_alloc while serializing: answer nothing, close
    if (r.file_fd >= 0 && d.file_fd < 0) ::close(r.file_fd);
    d.out.clear();
    d.close_after = true;
  }
  return d;
}

// --- HttpServer ------------------------------------------------------------------------

HttpServer::HttpServer(std::string host, int port, HttpHandler handler, HttpServerOptions options)
    : host_(std::move(host)),
      port_(port),
      handler_(std::move(handler)),
      options_(std::move(options)) {}

HttpServer::~HttpServer() { Stop(); }

Status HttpServer::Start() {
  loop_ = std::make_unique<Loop>(handler_, options_);
  Status st = loop_->Start(host_, &port_);
  if (!st.ok()) loop_.reset();
  return st;
}

void HttpServer::Stop() {
  if (loop_) loop_->Stop();
}

uint64_t HttpServer::body_bytes_sent() const { return loop_ ? loop_->body_bytes.load() : 0; }

int HttpServer::open_connections() const { return loop_ ? loop_->open.load() : 0; }

}  // namespace mx::server
