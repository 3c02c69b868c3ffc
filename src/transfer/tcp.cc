// The TCP backend. Wire format (little-endian), one request at a time per connection:
//   request  (32 bytes): magic "MXP1", op (1 = read), addr u64, size u64, reserved u64
//   response (24 bytes): magic "MXR1", code u32, size u64, crc32c u32, reserved u32,
//                        then `size` bytes when code is 0.
// Codes: 0 ok, 1 outside every region, 2 not verified (yet), 3 bad request, 4 device memory
// that could not be copied out, 5 device memory asked for by a checksum-only (cma/ucx) peer.
// Op 7 is a read whose CRC is computed from the memory as it is now (the retry after a
// mismatch against a remembered CRC; see RegionRegistry::Checksum).
// The server computes the CRC over the registered memory and sends from that memory (no
// staging copy); the client receives straight into the destination and checks the CRC.
// Why plain send(): bench/p2p.sh (part d, bench/tcp_send_probe.cc) measured 1 GiB over 4
// loopback connections at 5.6-6.2 GB/s with send(), 3.5-3.6 with MSG_ZEROCOPY (the kernel
// copies loopback zerocopy buffers anyway, and the completions cost extra) and 3.2-3.5 with
// sendfile from a memfd. Across a real NIC zerocopy may win; that is unmeasured here.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <list>
#include <mutex>
#include <random>
#include <thread>

#include "common/env.h"
#include "common/hash.h"
#include "transfer/crc32c.h"
#include "transfer/transport.h"

namespace mx::transfer {
namespace {

constexpr uint32_t kRequestMagic = 0x3150584d;   // "MXP1"
constexpr uint32_t kResponseMagic = 0x3152584d;  // "MXR1"
constexpr uint32_t kOpRead = 1;
constexpr uint32_t kOpFreshRead = 7;
constexpr size_t kRequestBytes = 32;
constexpr size_t kResponseBytes = 24;
enum Code : uint32_t {
  kOk = 0,
  kOutside = 1,
  kNotVerified = 2,
  kBadRequest = 3,
  kDeviceFailed = 4,   // the range is in device memory that could not be copied out
  kOnDevice = 5,       // a checksum-only request (cma, ucx) for device memory: use tcp reads
  kTokenRequired = 6,  // the source has MX_P2P_TOKEN and this connection has not proven it
  kTokenRefused = 7,   // the proof did not match
};

constexpr std::string_view kProofContext = "mx-p2p-token-v1";

std::string Proof(const std::string& token, const std::string& challenge) {
  return HmacSha256(token, std::string(kProofContext) + challenge);
}

bool SameBytes(const std::string& a, const std::string& b) {  // constant time in the content
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

// The client's view of an answer code that refuses every request on the connection.
Status TokenStatus(uint32_t code, const std::string& peer) {
  if (code == kTokenRequired) {
    return Status::Unauthenticated(peer + ": the source requires a token (set MX_P2P_TOKEN)");
  }
  return Status::PermissionDenied(peer + ": the source refused our token (MX_P2P_TOKEN)");
}

// The answer code for a failed RegionRegistry lookup or checksum.
uint32_t CodeFor(const Status& st) {
  switch (st.code()) {
    case StatusCode::kUnavailable:
      return kNotVerified;
    case StatusCode::kNotFound:
      return kOutside;
    default:
      return kDeviceFailed;
  }
}

void SetTimeouts(int fd, int ms) {
  timeval tv{ms / 1000, (ms % 1000) * 1000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

// Sends all of `size` bytes; false on error or a send stalled past SO_SNDTIMEO.
bool SendAll(int fd, const char* p, size_t size) {
  while (size > 0) {
    ssize_t n = ::send(fd, p, size, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

// Receives exactly `size` bytes. 0 ok, else errno-like (EAGAIN: stalled, ECONNRESET, or
// -1 for an orderly close).
int RecvAll(int fd, char* p, size_t size) {
  while (size > 0) {
    ssize_t n = ::recv(fd, p, size, MSG_WAITALL);
    if (n < 0 && errno == EINTR) continue;
    if (n == 0) return -1;
    if (n < 0) return errno;
    p += n;
    size -= static_cast<size_t>(n);
  }
  return 0;
}

Result<sockaddr_in> Resolve(const std::string& host, int port) {
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  int rc = getaddrinfo(host.c_str(), nullptr, &hints, &res);
  if (rc != 0 || res == nullptr) {
    return Status::InvalidArgument("cannot resolve host '" + host + "': " + gai_strerror(rc));
  }
  sockaddr_in a;
  std::memcpy(&a, res->ai_addr, sizeof(a));
  freeaddrinfo(res);
  a.sin_port = htons(static_cast<uint16_t>(port));
  return a;
}

class TcpServer : public Server {
 public:
  TcpServer(RegionRegistry* regions, ServerOptions o) : regions_(regions), o_(std::move(o)) {}
  ~TcpServer() override { Stop(); }

  Status Start() {
    std::random_device rd;
    for (char& c : nonce_) c = static_cast<char>(rd());
    if (o_.ucx && UcxBuilt()) {
      auto agent = StartUcxAgent();
      if (agent.ok()) {
        agent_ = std::move(*agent);
      } else {
        spdlog::warn("p2p: UCX unavailable, serving TCP only: {}", agent.status().message());
      }
    }
    MX_ASSIGN_OR_RETURN(sockaddr_in addr, Resolve(o_.host, o_.port));
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (listen_fd_ < 0) return Status::FromErrno(errno, "socket");
    int one = 1;
    setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      return Status::FromErrno(errno, "bind " + o_.host + ":" + std::to_string(o_.port));
    }
    if (::listen(listen_fd_, 128) != 0) return Status::FromErrno(errno, "listen");
    socklen_t len = sizeof(addr);
    getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    accept_thread_ = std::thread([this] { AcceptLoop(); });
    return Status::OK();
  }

  std::string endpoint() const override { return "tcp://" + o_.host + ":" + std::to_string(port_); }
  uint64_t bytes_served() const override { return served_.load(); }

  void Stop() override {
    if (stopping_.exchange(true)) return;
    if (accept_thread_.joinable()) accept_thread_.join();
    if (listen_fd_ >= 0) ::close(listen_fd_);
    std::list<Conn> conns;
    {
      std::lock_guard<std::mutex> l(mu_);
      for (auto& c : conns_) ::shutdown(c.fd, SHUT_RDWR);
      conns.swap(conns_);
    }
    for (auto& c : conns) {
      if (c.thread.joinable()) c.thread.join();
      ::close(c.fd);
    }
  }

 private:
  struct Conn {
    int fd;
    std::thread thread;
    std::atomic<bool> done{false};
  };

  void AcceptLoop() {
    while (!stopping_) {
      pollfd p{listen_fd_, POLLIN, 0};
      if (::poll(&p, 1, 100) <= 0) continue;
      int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;
      std::lock_guard<std::mutex> l(mu_);
      Reap();
      if (static_cast<int>(conns_.size()) >= o_.max_connections) {
        ::close(fd);
        continue;
      }
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      SetTimeouts(fd, o_.stall_ms);
      Conn& c = conns_.emplace_back();
      c.fd = fd;
      c.thread = std::thread([this, &c] {
        Serve(c.fd);
        // The peer sees the end at once; the descriptor is closed by Reap (or Stop), so its
        // number cannot be reused while this entry still names it.
        ::shutdown(c.fd, SHUT_RDWR);
        c.done = true;
      });
    }
  }

  // Joins finished connection threads. REQUIRES: mu_ held.
  void Reap() {
    for (auto it = conns_.begin(); it != conns_.end();) {
      if (it->done) {
        it->thread.join();
        ::close(it->fd);
        it = conns_.erase(it);
      } else {
        ++it;
      }
    }
  }

  // Waits for the next request: false on stop, idle timeout or a closed connection.
  bool WaitRequest(int fd) {
    auto idle_until = std::chrono::steady_clock::now() + std::chrono::milliseconds(o_.idle_ms);
    while (!stopping_) {
      pollfd p{fd, POLLIN, 0};
      int rc = ::poll(&p, 1, 100);
      if (rc > 0) return true;
      if (rc < 0 && errno != EINTR) return false;
      if (std::chrono::steady_clock::now() > idle_until) return false;
    }
    return false;
  }

  void Throttle(uint64_t bytes) {
    if (o_.max_rate == 0) return;
    std::chrono::steady_clock::time_point until;
    {
      std::lock_guard<std::mutex> l(rate_mu_);
      auto now = std::chrono::steady_clock::now();
      if (next_free_ < now) next_free_ = now;
      next_free_ += std::chrono::nanoseconds(bytes * 1000000000ull / o_.max_rate);
      until = next_free_;
    }
    std::this_thread::sleep_until(until);
  }

  // Answers one authentication request (kOpChallenge / kOpProve) or refuses a request on a
  // connection that has not proven the token. False when the connection should close.
  bool ServeToken(int fd, uint32_t op, uint64_t size, std::string* challenge, bool* proven) {
    char resp[kResponseBytes] = {};
    Put32(resp, kResponseMagic);
    if (op == kOpChallenge) {
      if (!o_.token.empty()) {
        challenge->resize(16);
        std::random_device rd;
        for (char& c : *challenge) c = static_cast<char>(rd());
      }
      Put64(resp + 8, challenge->size());
      Put32(resp + 16, Crc32c(*challenge));
      return SendAll(fd, resp, sizeof(resp)) && SendAll(fd, challenge->data(), challenge->size());
    }
    if (op == kOpProve && size == 32 && !challenge->empty()) {
      std::string proof(32, '\0');
      if (RecvAll(fd, proof.data(), proof.size()) != 0) return false;
      *proven = SameBytes(proof, Proof(o_.token, *challenge));
      challenge->clear();  // one proof per challenge
      Put32(resp + 4, *proven ? kOk : kTokenRefused);
      return SendAll(fd, resp, sizeof(resp)) && *proven;
    }
    Put32(resp + 4, kTokenRequired);
    SendAll(fd, resp, sizeof(resp));
    return false;
  }

  void Serve(int fd) {
    char req[kRequestBytes];
    bool proven = o_.token.empty();
    std::string challenge;
    while (WaitRequest(fd)) {
      if (RecvAll(fd, req, sizeof(req)) != 0) return;
      char resp[kResponseBytes] = {};
      Put32(resp, kResponseMagic);
      uint64_t addr = Get64(req + 8), size = Get64(req + 16);
      uint32_t op = Get32(req + 4);
      if (Get32(req) == kRequestMagic && (!proven || op == kOpChallenge || op == kOpProve)) {
        if (!ServeToken(fd, op, size, &challenge, &proven)) return;
        continue;
      }
      bool read = op == kOpRead || op == kOpFreshRead;
      if (Get32(req) == kRequestMagic && !read && size <= kMaxReadBytes) {
        if (!ServeControl(fd, op, addr, size)) return;
        continue;
      }
      if (Get32(req) != kRequestMagic || !read || size > kMaxReadBytes) {
        Put32(resp + 4, kBadRequest);
        SendAll(fd, resp, sizeof(resp));
        return;  // a peer that speaks something else is not worth a second try
      }
      Region region;
      auto crc = regions_->Checksum(addr, size, op == kOpFreshRead, &region);
      if (!crc.ok()) {
        Put32(resp + 4, CodeFor(crc.status()));
        if (!SendAll(fd, resp, sizeof(resp))) return;
        continue;
      }
      Put64(resp + 8, size);
      Put32(resp + 16, *crc);
      Throttle(size);
      if (!SendAll(fd, resp, sizeof(resp))) return;
      if (region.device >= 0) {
        // Device memory goes out through a staging buffer, piece by piece. A failed copy
        // cuts the answer short: the peer sees the connection end and asks another source.
        Status st = ForEachStagedPiece(*regions_->staging(), region.device, addr, size, o_.stall_ms,
                                       [&](const char* piece, size_t n) {
                                         return SendAll(fd, piece, n) ? Status::OK()
                                                                      : Status::Unavailable("send");
                                       });
        if (!st.ok()) {
          spdlog::warn("p2p: serving device memory failed: {}", st.message());
          return;
        }
      } else if (!SendAll(fd, reinterpret_cast<const char*>(addr), size)) {
        return;
      }
      served_ += size;
    }
  }

  // The UCX control requests. False when the connection should close.
  bool ServeControl(int fd, uint32_t op, uint64_t addr, uint64_t size) {
    char resp[kResponseBytes] = {};
    Put32(resp, kResponseMagic);
    std::string blob;
    uint32_t code = kOk;
    bool ucx_op = op == kOpUcxAddress || op == kOpUcxRkey;
    bool checksum_op = op == kOpChecksum || op == kOpFreshChecksum;
    if ((ucx_op && agent_ == nullptr) || (!ucx_op && !checksum_op && op != kOpCmaHello)) {
      code = kBadRequest;
    } else if (op == kOpCmaHello) {
      char head[16];
      Put64(head, static_cast<uint64_t>(::getpid()));
      Put64(head + 8, reinterpret_cast<uint64_t>(nonce_));
      blob = std::string(head, 16) + std::string(nonce_, sizeof(nonce_));
    } else if (op == kOpUcxAddress) {
      blob = agent_->worker_address();
    } else if (checksum_op) {
      auto region = regions_->Readable(addr, size);
      if (!region.ok()) {
        code = CodeFor(region.status());
      } else if (region->device >= 0) {
        code = kOnDevice;
      } else if (auto crc = regions_->Checksum(addr, size, op == kOpFreshChecksum); !crc.ok()) {
        code = CodeFor(crc.status());
      } else {
        Put32(resp + 16, *crc);
        Throttle(size);
        served_ += size;
      }
    } else {
      auto readable = regions_->Readable(addr, 0);
      if (!readable.ok()) {
        code = CodeFor(readable.status());
      } else {
        auto rkey = agent_->PackRkey(*readable);
        if (!rkey.ok()) {
          code = kBadRequest;
        } else {
          char head[16];
          Put64(head, readable->addr);
          Put64(head + 8, readable->size);
          blob = std::string(head, 16) + *rkey;
        }
      }
    }
    Put32(resp + 4, code);
    Put64(resp + 8, blob.size());
    if (!checksum_op) Put32(resp + 16, Crc32c(blob));
    return SendAll(fd, resp, sizeof(resp)) && SendAll(fd, blob.data(), blob.size());
  }

  RegionRegistry* regions_;
  ServerOptions o_;
  std::unique_ptr<RmaAgent> agent_;
  char nonce_[16];  // read back by a same-host peer through process_vm_readv
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<uint64_t> served_{0};
  std::thread accept_thread_;
  std::mutex mu_;
  std::list<Conn> conns_;
  std::mutex rate_mu_;
  std::chrono::steady_clock::time_point next_free_{};
};

class TcpConnection : public Connection {
 public:
  TcpConnection(int fd, std::string peer) : fd_(fd), peer_(std::move(peer)) {}
  ~TcpConnection() override { ::close(fd_); }

  bool broken() const override { return broken_; }
  const char* transport() const override { return "tcp"; }

  Status Control(uint32_t op, uint64_t addr, uint64_t size, std::string* blob,
                 uint32_t* crc) override {
    if (broken_) return Status::Unavailable(peer_ + ": connection already failed");
    char resp[kResponseBytes];
    MX_RETURN_IF_ERROR(Exchange(op, addr, size, resp));
    uint64_t n = Get64(resp + 8);
    if (n > (1u << 20)) {
      broken_ = true;
      return Status::DataLoss(peer_ + ": control answer too large");
    }
    blob->resize(n);
    if (n > 0) {
      if (int e = RecvAll(fd_, blob->data(), n); e != 0) return Fail("receive", e);
    }
    *crc = Get32(resp + 16);
    MX_RETURN_IF_ERROR(AnswerStatus(Get32(resp + 4), /*unknown_breaks=*/false,
                                    Status::Unimplemented(peer_ + ": does not offer UCX")));
    if (op != kOpChecksum && op != kOpFreshChecksum && Crc32c(*blob) != *crc) {
      broken_ = true;
      return Status::DataLoss(peer_ + ": control answer checksum mismatch");
    }
    return Status::OK();
  }

  // A whole read: the header, then the bytes straight into `dest`, checked piece by piece.
  Status ReadChecked(uint64_t remote_addr, uint64_t size, char* dest, bool fresh,
                     uint32_t* crc_out) override {
    if (broken_) return Status::Unavailable(peer_ + ": connection already failed");
    char resp[kResponseBytes];
    MX_RETURN_IF_ERROR(Exchange(fresh ? kOpFreshRead : kOpRead, remote_addr, size, resp));
    MX_RETURN_IF_ERROR(AnswerStatus(Get32(resp + 4), /*unknown_breaks=*/true,
                                    Status::InvalidArgument(peer_ + ": refused the request")));
    if (Get64(resp + 8) != size) {
      broken_ = true;
      return Status::DataLoss(peer_ + ": answered a different size");
    }
    uint32_t crc = 0;
    for (uint64_t done = 0; done < size;) {
      uint64_t n = std::min(kCrcPieceBytes, size - done);
      if (int e = RecvAll(fd_, dest + done, n); e != 0) return Fail("receive data", e);
      crc = Crc32c(crc, dest + done, n);
      done += n;
    }
    if (crc != Get32(resp + 16)) return Status::DataLoss(peer_ + ": chunk checksum mismatch");
    if (crc_out != nullptr) *crc_out = crc;
    return Status::OK();
  }
  void MarkBroken() override { broken_ = true; }

  // What an answer's code means. "Not verified" and "outside" leave the connection usable;
  // the other refusals break it, as does an unknown code when `unknown_breaks`.
  Status AnswerStatus(uint32_t code, bool unknown_breaks, Status unknown) {
    switch (code) {
      case kOk:
        return Status::OK();
      case kNotVerified:
        return Status::Unavailable(peer_ + ": range not verified yet");
      case kOutside:
        return Status::NotFound(peer_ + ": range is outside its registered memory");
      case kOnDevice:
        broken_ = true;
        return Status::FailedPrecondition(peer_ + ": range is in device memory (read over tcp)");
      case kDeviceFailed:
        broken_ = true;
        return Status::Unavailable(peer_ + ": could not copy its device memory out");
      case kTokenRequired:
      case kTokenRefused:
        broken_ = true;
        return TokenStatus(code, peer_);
      default:
        broken_ = broken_ || unknown_breaks;
        return unknown;
    }
  }

  // Proves `token` when the source asks for one (its challenge is empty otherwise).
  Status Authenticate(const std::string& token) {
    std::string challenge;
    uint32_t crc = 0;
    MX_RETURN_IF_ERROR(Control(kOpChallenge, 0, 0, &challenge, &crc));
    if (challenge.empty()) return Status::OK();
    if (challenge.size() != 16) {
      broken_ = true;
      return Status::DataLoss(peer_ + ": malformed token challenge");
    }
    char req[kRequestBytes] = {};
    Put32(req, kRequestMagic);
    Put32(req + 4, kOpProve);
    Put64(req + 16, 32);
    std::string proof = Proof(token, challenge);
    if (!SendAll(fd_, req, sizeof(req)) || !SendAll(fd_, proof.data(), proof.size())) {
      return Fail("send", errno);
    }
    char resp[kResponseBytes];
    if (int e = RecvAll(fd_, resp, sizeof(resp)); e != 0) return Fail("receive", e);
    if (Get32(resp) != kResponseMagic) {
      broken_ = true;
      return Status::DataLoss(peer_ + ": not an mx transfer peer");
    }
    if (Get32(resp + 4) != kOk) {
      broken_ = true;
      return TokenStatus(kTokenRefused, peer_);
    }
    return Status::OK();
  }

 private:
  // Sends one request and receives the fixed-size answer header into `resp`.
  Status Exchange(uint32_t op, uint64_t addr, uint64_t size, char* resp) {
    char req[kRequestBytes] = {};
    Put32(req, kRequestMagic);
    Put32(req + 4, op);
    Put64(req + 8, addr);
    Put64(req + 16, size);
    if (!SendAll(fd_, req, sizeof(req))) return Fail("send", errno);
    if (int e = RecvAll(fd_, resp, kResponseBytes); e != 0) return Fail("receive", e);
    if (Get32(resp) != kResponseMagic) {
      broken_ = true;
      return Status::DataLoss(peer_ + ": not an mx transfer peer");
    }
    return Status::OK();
  }

  Status Fail(const char* what, int err) {
    broken_ = true;
    std::string why = err == -1 ? "connection closed"
                      : (err == EAGAIN || err == EWOULDBLOCK)
                          ? "stalled (no data within the deadline)"
                          : std::strerror(err);
    return Status::Unavailable(peer_ + ": " + what + ": " + why);
  }

  int fd_;
  std::string peer_;
  bool broken_ = false;
};

}  // namespace

Status ParseTcpEndpoint(const std::string& endpoint, std::string* host, int* port) {
  const std::string prefix = "tcp://";
  if (endpoint.rfind(prefix, 0) != 0 || endpoint.size() > 300) {
    return Status::InvalidArgument("not a tcp:// endpoint");
  }
  std::string rest = endpoint.substr(prefix.size());
  size_t colon = rest.rfind(':');
  if (colon == std::string::npos || colon == 0)
    return Status::InvalidArgument("endpoint lacks a port");
  std::string p = rest.substr(colon + 1);
  if (p.empty() || p.size() > 5 || p.find_first_not_of("0123456789") != std::string::npos) {
    return Status::InvalidArgument("bad port in endpoint");
  }
  *port = std::stoi(p);
  if (*port <= 0 || *port > 65535) return Status::InvalidArgument("bad port in endpoint");
  *host = rest.substr(0, colon);
  for (char c : *host) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-')) {
      return Status::InvalidArgument("bad host in endpoint");
    }
  }
  return Status::OK();
}

Result<std::unique_ptr<Server>> StartTcpServer(RegionRegistry* regions,
                                               const ServerOptions& options) {
  auto s = std::make_unique<TcpServer>(regions, options);
  MX_RETURN_IF_ERROR(s->Start());
  return std::unique_ptr<Server>(std::move(s));
}

Result<std::unique_ptr<Connection>> ConnectTcp(const std::string& endpoint,
                                               const ConnectOptions& options) {
  std::string host;
  int port = 0;
  MX_RETURN_IF_ERROR(ParseTcpEndpoint(endpoint, &host, &port));
  MX_ASSIGN_OR_RETURN(sockaddr_in addr, Resolve(host, port));
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return Status::FromErrno(errno, "socket");
  auto fail = [&](const std::string& what, int err) {
    ::close(fd);
    return Status::Unavailable(endpoint + ": " + what + ": " + std::strerror(err));
  };
  if (!options.bind_host.empty()) {
    auto local = Resolve(options.bind_host, 0);
    if (!local.ok()) {
      ::close(fd);
      return local.status();
    }
    if (::bind(fd, reinterpret_cast<sockaddr*>(&*local), sizeof(*local)) != 0) {
      return fail("bind " + options.bind_host, errno);
    }
  }
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    if (errno != EINPROGRESS) return fail("connect", errno);
    pollfd p{fd, POLLOUT, 0};
    int rc = ::poll(&p, 1, options.connect_ms);
    if (rc <= 0) return fail("connect", rc == 0 ? ETIMEDOUT : errno);
    int err = 0;
    socklen_t len = sizeof(err);
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) return fail("connect", err);
  }
  int flags = fcntl(fd, F_GETFL);
  fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  SetTimeouts(fd, options.stall_ms);
  auto conn = std::make_unique<TcpConnection>(fd, endpoint);
  if (!options.token.empty()) MX_RETURN_IF_ERROR(conn->Authenticate(options.token));
  return std::unique_ptr<Connection>(std::move(conn));
}

Result<std::string> P2pTokenFromEnvironment() {
  std::optional<std::string> token = GetEnv("MX_P2P_TOKEN");
  if (!token) return std::string();
  if (token->empty() || token->size() > 4096) {
    return Status::InvalidArgument("MX_P2P_TOKEN must be 1 to 4096 bytes");
  }
  return *token;
}

Status Connection::Read(uint64_t remote_addr, uint64_t size, char* dest, uint32_t* crc) {
  if (size > kMaxReadBytes) return Status::InvalidArgument("read larger than 64 MiB");
  Status st = ReadChecked(remote_addr, size, dest, false, crc);
  if (st.code() == StatusCode::kDataLoss && !broken()) {
    st = ReadChecked(remote_addr, size, dest, true, crc);
  }
  if (st.code() == StatusCode::kDataLoss) MarkBroken();
  return st;
}

Result<std::unique_ptr<Connection>> Connect(const std::string& endpoint,
                                            const ConnectOptions& options) {
  if (endpoint.rfind("tcp://", 0) != 0) {
    return Status::InvalidArgument("unsupported transfer endpoint (expected tcp://HOST:PORT)");
  }
  // "auto": CMA for a process on this host (bench/p2p.sh: fastest there), else TCP, which
  // bench/p2p.sh measured faster than our UCX path (a control round trip per chunk for the
  // checksum). UCX is used when asked for.
  if (options.transport == "ucx") return ConnectUcx(endpoint, options);
  if (options.transport == "cma") return ConnectCma(endpoint, options);
  if (options.transport == "auto") {
    auto cma = ConnectCma(endpoint, options);
    if (cma.ok()) return cma;
    spdlog::debug("p2p: {} is not readable in place, using TCP: {}", endpoint,
                  cma.status().message());
  }
  return ConnectTcp(endpoint, options);
}

}  // namespace mx::transfer
