#include "registry/redis_connection.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace mx::registry {
namespace {

std::string Where(const StoreConfig& c) {
  return c.redis_host + ":" + std::to_string(c.redis_port);
}

// redis://: hiredis's own blocking socket code.
class PlainConnection : public RedisConnection {
 public:
  explicit PlainConnection(redisContext* ctx) : ctx_(ctx) {}
  ~PlainConnection() override { redisFree(ctx_); }

  redisReply* Command(const std::vector<std::string>& args) override {
    Argv a(args);
    return static_cast<redisReply*>(redisCommandArgv(ctx_, a.count(), a.argv(), a.lens()));
  }
  void Append(const std::vector<std::string>& args) override {
    Argv a(args);
    redisAppendCommandArgv(ctx_, a.count(), a.argv(), a.lens());
  }
  redisReply* GetReply() override {
    void* raw = nullptr;
    if (redisGetReply(ctx_, &raw) != REDIS_OK) return nullptr;
    return static_cast<redisReply*>(raw);
  }
  bool broken() const override { return ctx_->err != 0; }
  std::string error() const override { return ctx_->err ? ctx_->errstr : ""; }

  // Binary-safe argv for hiredis.
  class Argv {
   public:
    explicit Argv(const std::vector<std::string>& args) {
      for (const auto& a : args) {
        argv_.push_back(a.data());
        lens_.push_back(a.size());
      }
    }
    int count() const { return static_cast<int>(argv_.size()); }
    const char** argv() { return argv_.data(); }
    const size_t* lens() const { return lens_.data(); }

   private:
    std::vector<const char*> argv_;
    std::vector<size_t> lens_;
  };

 private:
  redisContext* ctx_;
};

std::string OpenSslErrors() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof(buf));
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out;
}

bool IsIpLiteral(const std::string& host) {
  unsigned char buf[sizeof(in6_addr)];
  return inet_pton(AF_INET, host.c_str(), buf) == 1 || inet_pton(AF_INET6, host.c_str(), buf) == 1;
}

// A TCP connection within timeout_s, then blocking with send/receive timeouts. -1 and
// *why on failure.
int ConnectTcp(const std::string& host, int port, int timeout_s, std::string* why) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  int gai = getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res);
  if (gai != 0) {
    *why = gai_strerror(gai);
    return -1;
  }
  int fd = -1;
  for (addrinfo* ai = res; ai != nullptr && fd < 0; ai = ai->ai_next) {
    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
    if (fd < 0) continue;
    int rc = connect(fd, ai->ai_addr, ai->ai_addrlen);
    if (rc != 0 && errno == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      rc = poll(&p, 1, timeout_s * 1000);
      int err = 0;
      socklen_t len = sizeof(err);
      if (rc == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0) {
        rc = 0;
      } else {
        errno = rc == 0 ? ETIMEDOUT : (err ? err : errno);
        rc = -1;
      }
    }
    if (rc != 0) {
      *why = std::strerror(errno);
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(res);
  if (fd < 0) return -1;
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  timeval tv{timeout_s, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
  return fd;
}

// rediss://: RESP over an OpenSSL session on a blocking socket (see the header for why).
// Writes to a peer that closed raise SIGPIPE, as hiredis's own do: mx-server ignores it.
class TlsConnection : public RedisConnection {
 public:
  ~TlsConnection() override {
    if (ssl_) {
      // close_notify, without waiting for the peer's; never after a fatal error.
      if (connected_ && error_.empty()) SSL_shutdown(ssl_);
      SSL_free(ssl_);
    }
    if (ctx_) SSL_CTX_free(ctx_);
    if (fd_ >= 0) close(fd_);
    if (reader_) redisReaderFree(reader_);
  }

  Status Open(const StoreConfig& c, int timeout_s) {
    const std::string where = Where(c);
    ERR_clear_error();
    ctx_ = SSL_CTX_new(TLS_client_method());
    if (ctx_ == nullptr) return Status::Internal("TLS set-up failed: " + OpenSslErrors());
    SSL_CTX_set_min_proto_version(ctx_, TLS1_2_VERSION);
    if (c.redis_tls_insecure) {
      SSL_CTX_set_verify(ctx_, SSL_VERIFY_NONE, nullptr);
    } else {
      SSL_CTX_set_verify(ctx_, SSL_VERIFY_PEER, nullptr);
      int ok = c.redis_tls_ca.empty()
                   ? SSL_CTX_set_default_verify_paths(ctx_)
                   : SSL_CTX_load_verify_locations(ctx_, c.redis_tls_ca.c_str(), nullptr);
      if (ok != 1) {
        return Status::InvalidArgument(
            "cannot load the Redis TLS CA file '" + c.redis_tls_ca +
            "' (MX_REDIS_TLS_CA or ?ca= in the URL): " + OpenSslErrors());
      }
    }
    if (!c.redis_tls_cert.empty() || !c.redis_tls_key.empty()) {
      if (c.redis_tls_cert.empty() || c.redis_tls_key.empty()) {
        return Status::InvalidArgument(
            "a Redis TLS client certificate needs both MX_REDIS_TLS_CERT and MX_REDIS_TLS_KEY "
            "(or ?cert= and ?key= in the URL)");
      }
      if (SSL_CTX_use_certificate_chain_file(ctx_, c.redis_tls_cert.c_str()) != 1 ||
          SSL_CTX_use_PrivateKey_file(ctx_, c.redis_tls_key.c_str(), SSL_FILETYPE_PEM) != 1 ||
          SSL_CTX_check_private_key(ctx_) != 1) {
        return Status::InvalidArgument("cannot use the Redis TLS client certificate '" +
                                       c.redis_tls_cert + "' with key '" + c.redis_tls_key +
                                       "': " + OpenSslErrors());
      }
    }
    std::string why;
    fd_ = ConnectTcp(c.redis_host, c.redis_port, timeout_s, &why);
    if (fd_ < 0) return Status::Unavailable("cannot reach Redis at " + where + ": " + why);
    ssl_ = SSL_new(ctx_);
    if (ssl_ == nullptr || SSL_set_fd(ssl_, fd_) != 1)
      return Status::Internal("TLS set-up failed: " + OpenSslErrors());
    const std::string& name = c.redis_host;
    if (IsIpLiteral(name)) {
      X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl_), name.c_str());
    } else {
      SSL_set_tlsext_host_name(ssl_, name.c_str());
      SSL_set1_host(ssl_, name.c_str());
    }
    if (SSL_connect(ssl_) != 1) return HandshakeError(c, where, timeout_s);
    connected_ = true;
    reader_ = redisReaderCreate();
    if (reader_ == nullptr) return Status::Internal("out of memory");
    return Status::OK();
  }

  redisReply* Command(const std::vector<std::string>& args) override {
    Append(args);
    return GetReply();
  }

  void Append(const std::vector<std::string>& args) override {
    PlainConnection::Argv a(args);
    char* cmd = nullptr;
    int len = redisFormatCommandArgv(&cmd, a.count(), a.argv(), a.lens());
    if (len < 0 || cmd == nullptr) {
      Fail("out of memory");
      return;
    }
    out_.append(cmd, static_cast<size_t>(len));
    redisFreeCommand(cmd);
  }

  redisReply* GetReply() override {
    if (!error_.empty()) return nullptr;
    ERR_clear_error();  // SSL_get_error reads the queue: nothing stale in it
    while (!out_.empty()) {
      int n =
          SSL_write(ssl_, out_.data(), static_cast<int>(std::min<size_t>(out_.size(), 1 << 20)));
      if (n <= 0) return IoFailure(n, "write");
      out_.erase(0, static_cast<size_t>(n));
    }
    for (;;) {
      void* raw = nullptr;
      if (redisReaderGetReply(reader_, &raw) != REDIS_OK) {
        Fail(std::string("protocol error: ") + reader_->errstr);
        return nullptr;
      }
      if (raw != nullptr) return static_cast<redisReply*>(raw);
      char buf[16384];
      int n = SSL_read(ssl_, buf, sizeof(buf));
      if (n <= 0) return IoFailure(n, "read");
      if (redisReaderFeed(reader_, buf, static_cast<size_t>(n)) != REDIS_OK) {
        Fail("protocol error");
        return nullptr;
      }
    }
  }

  bool broken() const override { return !error_.empty(); }
  std::string error() const override { return error_; }

 private:
  void Fail(std::string why) {
    if (error_.empty()) error_ = std::move(why);
  }

  redisReply* IoFailure(int n, const char* op) {
    int saved_errno = errno;
    int e = SSL_get_error(ssl_, n);
    errno = saved_errno;
    std::string detail = OpenSslErrors();
    if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && errno == 0)) {
      Fail("connection closed by Redis" + (detail.empty() ? "" : " (" + detail + ")"));
    } else if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE ||
               (e == SSL_ERROR_SYSCALL && (errno == EAGAIN || errno == EWOULDBLOCK))) {
      Fail(std::string("timed out on ") + op);
    } else {
      Fail(std::string("TLS ") + op +
           " failed: " + (detail.empty() ? std::string(std::strerror(errno)) : detail));
    }
    return nullptr;
  }

  // Says what to check: the CA, the name in the URL, the port, the client certificate.
  Status HandshakeError(const StoreConfig& c, const std::string& where, int timeout_s) {
    int saved_errno = errno;
    long verify = SSL_get_verify_result(ssl_);
    std::string detail = OpenSslErrors();
    if (!c.redis_tls_insecure && verify != X509_V_OK) {
      std::string reason = X509_verify_cert_error_string(verify);
      if (verify == X509_V_ERR_HOSTNAME_MISMATCH || verify == X509_V_ERR_IP_ADDRESS_MISMATCH) {
        return Status::FailedPrecondition("Redis at " + where + ": TLS certificate is not for '" +
                                          c.redis_host + "' (" + reason +
                                          "): use the name the certificate was issued for");
      }
      return Status::FailedPrecondition(
          "Redis at " + where + ": TLS certificate not trusted (" + reason +
          "): set MX_REDIS_TLS_CA (or ?ca=/path in the rediss:// URL) to the CA bundle that "
          "signed the Redis server's certificate" +
          (c.redis_tls_ca.empty() ? " (now: the system CA store)"
                                  : " (now: " + c.redis_tls_ca + ")"));
    }
    if (detail.find("wrong version number") != std::string::npos ||
        detail.find("packet length too long") != std::string::npos) {
      return Status::FailedPrecondition(
          "Redis at " + where +
          ": TLS handshake failed: the server does not speak TLS on this port (is it a plain "
          "redis:// port? rediss:// needs redis-server --tls-port)");
    }
    if (detail.empty() && (saved_errno == EAGAIN || saved_errno == EWOULDBLOCK)) {
      // A plain Redis port reads a ClientHello as the start of an inline command and waits.
      return Status::FailedPrecondition(
          "Redis at " + where + ": no TLS answer within " + std::to_string(timeout_s) +
          " s: is it a plain redis:// port? (rediss:// needs redis-server --tls-port)");
    }
    if (detail.empty()) detail = saved_errno ? std::strerror(saved_errno) : "connection closed";
    return Status::Unavailable("Redis at " + where + ": TLS handshake failed: " + detail);
  }

  SSL_CTX* ctx_ = nullptr;
  SSL* ssl_ = nullptr;
  int fd_ = -1;
  bool connected_ = false;  // the handshake completed
  redisReader* reader_ = nullptr;
  std::string out_;  // formatted commands not sent yet
  std::string error_;
};

}  // namespace

Result<std::unique_ptr<RedisConnection>> RedisConnection::Open(const StoreConfig& config,
                                                               int timeout_s) {
  if (config.redis_tls) {
    auto conn = std::make_unique<TlsConnection>();
    MX_RETURN_IF_ERROR(conn->Open(config, timeout_s));
    return std::unique_ptr<RedisConnection>(std::move(conn));
  }
  timeval timeout{timeout_s, 0};
  redisContext* ctx =
      redisConnectWithTimeout(config.redis_host.c_str(), config.redis_port, timeout);
  if (ctx == nullptr || ctx->err) {
    std::string why = ctx ? ctx->errstr : "out of memory";
    if (ctx) redisFree(ctx);
    return Status::Unavailable("cannot reach Redis at " + Where(config) + ": " + why);
  }
  redisSetTimeout(ctx, timeout);
  return std::unique_ptr<RedisConnection>(std::make_unique<PlainConnection>(ctx));
}

}  // namespace mx::registry
