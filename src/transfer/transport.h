// The transfer engine's two sides behind one interface, whatever the backend:
//   Server     - lets peers read the verified ranges of a RegionRegistry;
//   Connection - reads one range of a peer's registered memory straight into local memory,
//                checking the chunk's CRC-32C before reporting success.
// Backends: "tcp" (our own: one request at a time per connection, several connections per
// peer, data sent straight from the registered memory and received straight into the
// destination) and, when built with UCX, "ucx". An endpoint names its backend:
// "tcp://HOST:PORT".
//
// Failure contract: every socket wait is bounded by `stall_ms`; a peer that dies, stalls or
// sends a bad checksum fails the call (Unavailable / DataLoss) and never hangs it. A peer
// that has not verified a range answers Unavailable("not verified") and stays usable.
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>

#include "common/status.h"
#include "transfer/region.h"

namespace mx::transfer {

// Little-endian fields of the backends' wire messages (x86-64 and arm64 hosts only).
inline void Put32(char* p, uint32_t v) { std::memcpy(p, &v, 4); }
inline void Put64(char* p, uint64_t v) { std::memcpy(p, &v, 8); }
inline uint32_t Get32(const char* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
inline uint64_t Get64(const char* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

// The most bytes one read may ask for.
inline constexpr uint64_t kMaxReadBytes = 64ull << 20;
// Receivers check a chunk's CRC piece by piece as the bytes land, while each piece is still
// in the CPU's cache (a 4 MiB chunk checked after it landed is read back from memory).
inline constexpr uint64_t kCrcPieceBytes = 256 << 10;

// The server side of an RMA backend (UCX): memory registration and the keys a peer needs.
class RmaAgent {
 public:
  virtual ~RmaAgent() = default;
  virtual const std::string& worker_address() const = 0;
  // The packed remote key of `region` (registered on first use).
  virtual Result<std::string> PackRkey(const Region& region) = 0;
};

// True when this build has the UCX backend.
bool UcxBuilt();
// Unimplemented without UCX.
Result<std::unique_ptr<RmaAgent>> StartUcxAgent();

struct ServerOptions {
  std::string host = "127.0.0.1";  // bind and advertise (MX_WORKER_HOST)
  int port = 0;                    // 0 = any free port
  uint64_t max_rate = 0;           // bytes/s over all connections; 0 = unlimited
  int stall_ms = 30000;            // a send blocked this long drops the connection
  int idle_ms = 300000;            // a connection without a request this long is closed
  int max_connections = 256;
  bool ucx = true;  // also offer UCX RMA reads (when built with UCX)
  // MX_P2P_TOKEN: when set, a connection must prove it knows this secret (HMAC-SHA256 of a
  // per-connection challenge) before any other request is answered. Never logged.
  std::string token;
};

class Server {
 public:
  virtual ~Server() = default;
  // "tcp://HOST:PORT": what peers connect to.
  virtual std::string endpoint() const = 0;
  // Closes the listener and every connection; joins the threads. Idempotent.
  virtual void Stop() = 0;
  virtual uint64_t bytes_served() const = 0;
};

struct ConnectOptions {
  // "tcp", "ucx", "cma", or "auto": cma when the peer is a process on this host (checked,
  // not assumed), else tcp. MX_P2P_TRANSPORT sets it for mx p2p.
  std::string transport = "auto";
  std::string bind_host;  // local address for the outgoing connection (MX_WORKER_HOST)
  int connect_ms = 3000;
  int stall_ms = 10000;
  std::string token;  // MX_P2P_TOKEN, answered to a source that asks for it
};

// MX_P2P_TOKEN, or empty. InvalidArgument for a value that is set but unusable (empty or
// over 4 KiB); the message never contains the value.
Result<std::string> P2pTokenFromEnvironment();

class Connection {
 public:
  virtual ~Connection() = default;
  // Reads [remote_addr, remote_addr+size) of the peer into `dest` and verifies its
  // CRC-32C; `crc`, when not null, receives that CRC. After an Unavailable/DataLoss other
  // than "not verified" the connection is broken (broken() is true) and must be dropped.
  // A mismatch against the peer's remembered CRC is retried once against its memory as it
  // is now (an engine may update weights in place); a second mismatch is DataLoss.
  Status Read(uint64_t remote_addr, uint64_t size, char* dest, uint32_t* crc = nullptr);
  virtual bool broken() const = 0;
  // "tcp" or "ucx".
  virtual const char* transport() const = 0;
  // The control requests UCX reads go through (TCP connections only): `op` with `addr` and
  // `size`; the answer's blob and checksum. Unimplemented elsewhere.
  virtual Status Control(uint32_t op, uint64_t addr, uint64_t size, std::string* blob,
                         uint32_t* crc) {
    return Status::Unimplemented("no control channel");
  }

 protected:
  // One checked read: against the peer's remembered CRC, or (`fresh`) the CRC of its memory
  // as it is now. A mismatch is DataLoss and leaves the connection usable.
  virtual Status ReadChecked(uint64_t remote_addr, uint64_t size, char* dest, bool fresh,
                             uint32_t* crc) = 0;
  virtual void MarkBroken() = 0;
};

// Control operations of the TCP wire (see tcp.cc).
inline constexpr uint32_t kOpUcxAddress = 2;  // blob: the server's UCX worker address
inline constexpr uint32_t kOpUcxRkey = 3;     // blob: region base u64, size u64, packed rkey
inline constexpr uint32_t kOpChecksum = 4;    // crc of a verified range
inline constexpr uint32_t kOpCmaHello = 5;    // blob: pid u64, nonce address u64, nonce
// kOpChecksum computed from the memory as it is now, not remembered (the retry after a
// mismatch: see RegionRegistry::Checksum).
inline constexpr uint32_t kOpFreshChecksum = 6;
// Authentication (ServerOptions::token): the challenge (blob: 16 random bytes, or empty when
// the source needs no token), then the proof (a 32-byte body: HMAC-SHA256(token, context ||
// challenge)). Other requests on an unproven connection are refused and the connection closed.
inline constexpr uint32_t kOpChallenge = 8;
inline constexpr uint32_t kOpProve = 9;

// The CRC a peer gives for a range it has verified (remembered, or with `fresh` of its
// memory as it is now), asked over its TCP control connection: what cma and ucx reads, whose
// bytes travel another way, are checked against.
inline Status PeerChecksum(Connection& control, uint64_t addr, uint64_t size, bool fresh,
                           uint32_t* crc) {
  std::string unused;
  return control.Control(fresh ? kOpFreshChecksum : kOpChecksum, addr, size, &unused, crc);
}

// Same host: reads the peer's memory with process_vm_readv (one kernel copy, no socket),
// after proving the peer is this host's process: it names its pid and the address of a
// random nonce, which must read back identical. Unavailable otherwise (another host, another
// PID namespace, no permission), so callers fall back to TCP.
Result<std::unique_ptr<Connection>> ConnectCma(const std::string& endpoint,
                                               const ConnectOptions& options);

Result<std::unique_ptr<Connection>> ConnectUcx(const std::string& endpoint,
                                               const ConnectOptions& options);

Result<std::unique_ptr<Server>> StartTcpServer(RegionRegistry* regions,
                                               const ServerOptions& options);
Result<std::unique_ptr<Connection>> ConnectTcp(const std::string& endpoint,
                                               const ConnectOptions& options);

// Dispatches on the endpoint's scheme. InvalidArgument for an unknown one.
Result<std::unique_ptr<Connection>> Connect(const std::string& endpoint,
                                            const ConnectOptions& options);

// "tcp://HOST:PORT" -> host, port. InvalidArgument otherwise.
Status ParseTcpEndpoint(const std::string& endpoint, std::string* host, int* port);

}  // namespace mx::transfer
