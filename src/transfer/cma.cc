// Same-host reads with process_vm_readv: one kernel copy from the peer's registered memory
// into the destination. The peer's CRC (asked over the control connection, which is also
// where an unverified range is refused) checks every chunk, as on the other transports.
#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "transfer/crc32c.h"
#include "transfer/transport.h"

namespace mx::transfer {
namespace {

class CmaConnection : public Connection {
 public:
  CmaConnection(std::unique_ptr<Connection> control, std::string peer, pid_t pid)
      : control_(std::move(control)), peer_(std::move(peer)), pid_(pid) {}

  bool broken() const override { return broken_ || control_->broken(); }
  const char* transport() const override { return "cma"; }

  void MarkBroken() override { broken_ = true; }

  Status ReadChecked(uint64_t remote_addr, uint64_t size, char* dest, bool fresh,
                     uint32_t* crc_out) override {
    if (broken()) return Status::Unavailable(peer_ + ": connection already failed");
    uint32_t want = 0;
    MX_RETURN_IF_ERROR(PeerChecksum(*control_, remote_addr, size, fresh, &want));
    // Copied and checked a piece at a time: the CRC reads each piece from the cache.
    uint32_t crc = 0;
    for (uint64_t done = 0; done < size;) {
      uint64_t n = std::min(kCrcPieceBytes, size - done);
      MX_RETURN_IF_ERROR(Copy(remote_addr + done, n, dest + done));
      crc = Crc32c(crc, dest + done, n);
      done += n;
    }
    if (crc != want) return Status::DataLoss(peer_ + ": chunk checksum mismatch (cma)");
    if (crc_out != nullptr) *crc_out = crc;
    return Status::OK();
  }

  Status Copy(uint64_t remote_addr, uint64_t size, char* dest) {
    uint64_t done = 0;
    while (done < size) {
      iovec local{dest + done, size - done};
      iovec remote{reinterpret_cast<void*>(remote_addr + done), size - done};
      ssize_t n = ::process_vm_readv(pid_, &local, 1, &remote, 1, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        broken_ = true;
        return Status::Unavailable(
            peer_ + ": process_vm_readv: " + (n < 0 ? std::strerror(errno) : "no progress"));
      }
      done += static_cast<uint64_t>(n);
    }
    return Status::OK();
  }

 private:
  std::unique_ptr<Connection> control_;
  std::string peer_;
  pid_t pid_;
  bool broken_ = false;
};

}  // namespace

Result<std::unique_ptr<Connection>> ConnectCma(const std::string& endpoint,
                                               const ConnectOptions& options) {
  MX_ASSIGN_OR_RETURN(auto control, ConnectTcp(endpoint, options));
  std::string hello;
  uint32_t crc = 0;
  MX_RETURN_IF_ERROR(control->Control(kOpCmaHello, 0, 0, &hello, &crc));
  if (hello.size() != 32) return Status::Unavailable(endpoint + ": bad CMA hello");
  uint64_t pid = Get64(hello.data()), nonce_addr = Get64(hello.data() + 8);
  if (pid == 0 || pid > (1u << 22)) return Status::Unavailable(endpoint + ": bad pid");
  // The nonce must read back from that pid at that address: a different host's or PID
  // namespace's pid cannot pass by chance (128 random bits).
  auto c = std::make_unique<CmaConnection>(std::move(control), endpoint, static_cast<pid_t>(pid));
  char nonce[16];
  MX_RETURN_IF_ERROR(c->Copy(nonce_addr, sizeof(nonce), nonce));
  if (std::memcmp(nonce, hello.data() + 16, sizeof(nonce)) != 0) {
    return Status::Unavailable(endpoint + ": not a process on this host");
  }
  return std::unique_ptr<Connection>(std::move(c));
}

}  // namespace mx::transfer
