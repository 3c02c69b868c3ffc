// The UCX backend: RMA gets from a peer's registered memory, over whatever transport UCX
// picks (shared memory / CMA on one host, TCP or verbs across hosts; UCX_TLS forces one).
//
// The worker address and each region's rkey travel over the peer's TCP control connection
// (kOpUcxAddress, kOpUcxRkey); before each get the peer is asked for the range's CRC-32C
// (kOpChecksum), which is also where it refuses a range it has not verified. The received
// chunk is checked against that CRC, as on TCP.
#include <ucp/api/ucp.h>

#include <chrono>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>

#include "transfer/crc32c.h"
#include "transfer/transport.h"

namespace mx::transfer {
namespace {

std::string UcsError(ucs_status_t s) { return ucs_status_string(s); }

Result<ucp_context_h> NewContext() {
  ucp_config_t* config = nullptr;
  ucs_status_t s = ucp_config_read(nullptr, nullptr, &config);
  if (s != UCS_OK) return Status::Unavailable("ucp_config_read: " + UcsError(s));
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED;
  params.features = UCP_FEATURE_RMA;
  params.mt_workers_shared = 1;
  ucp_context_h ctx = nullptr;
  s = ucp_init(&params, config, &ctx);
  ucp_config_release(config);
  if (s != UCS_OK) return Status::Unavailable("ucp_init: " + UcsError(s));
  return ctx;
}

Result<ucp_worker_h> NewWorker(ucp_context_h ctx, ucs_thread_mode_t mode) {
  ucp_worker_params_t wp{};
  wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  wp.thread_mode = mode;
  ucp_worker_h w = nullptr;
  ucs_status_t s = ucp_worker_create(ctx, &wp, &w);
  if (s != UCS_OK) return Status::Unavailable("ucp_worker_create: " + UcsError(s));
  return w;
}

class UcxAgent : public RmaAgent {
 public:
  ~UcxAgent() override {
    stop_ = true;
    if (progress_.joinable()) progress_.join();
    for (auto& [addr, m] : maps_) {
      ucp_rkey_buffer_release(m.rkey);
      ucp_mem_unmap(ctx_, m.memh);
    }
    if (address_buf_ != nullptr) ucp_worker_release_address(worker_, address_buf_);
    if (worker_ != nullptr) ucp_worker_destroy(worker_);
    if (ctx_ != nullptr) ucp_cleanup(ctx_);
  }

  Status Start() {
    MX_ASSIGN_OR_RETURN(ctx_, NewContext());
    MX_ASSIGN_OR_RETURN(worker_, NewWorker(ctx_, UCS_THREAD_MODE_MULTI));
    size_t len = 0;
    ucs_status_t s = ucp_worker_get_address(worker_, &address_buf_, &len);
    if (s != UCS_OK) return Status::Unavailable("ucp_worker_get_address: " + UcsError(s));
    address_.assign(reinterpret_cast<const char*>(address_buf_), len);
    // Transports without hardware RMA (TCP) need the target's worker to make progress.
    progress_ = std::thread([this] {
      while (!stop_) {
        if (ucp_worker_progress(worker_) == 0)
          std::this_thread::sleep_for(std::chrono::microseconds(50));
      }
    });
    return Status::OK();
  }

  const std::string& worker_address() const override { return address_; }

  Result<std::string> PackRkey(const Region& region) override {
    std::lock_guard<std::mutex> l(mu_);
    auto it = maps_.find(region.addr);
    if (it == maps_.end()) {
      ucp_mem_map_params_t mp{};
      mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
      mp.address = reinterpret_cast<void*>(region.addr);
      mp.length = region.size;
      Mapping m;
      ucs_status_t s = ucp_mem_map(ctx_, &mp, &m.memh);
      if (s != UCS_OK) return Status::Unavailable("ucp_mem_map: " + UcsError(s));
      s = ucp_rkey_pack(ctx_, m.memh, &m.rkey, &m.rkey_size);
      if (s != UCS_OK) {
        ucp_mem_unmap(ctx_, m.memh);
        return Status::Unavailable("ucp_rkey_pack: " + UcsError(s));
      }
      it = maps_.emplace(region.addr, m).first;
    }
    return std::string(static_cast<const char*>(it->second.rkey), it->second.rkey_size);
  }

 private:
  struct Mapping {
    ucp_mem_h memh = nullptr;
    void* rkey = nullptr;
    size_t rkey_size = 0;
  };
  ucp_context_h ctx_ = nullptr;
  ucp_worker_h worker_ = nullptr;
  ucp_address_t* address_buf_ = nullptr;
  std::string address_;
  std::atomic<bool> stop_{false};
  std::thread progress_;
  std::mutex mu_;
  std::map<uint64_t, Mapping> maps_;
};

class UcxConnection : public Connection {
 public:
  UcxConnection(std::unique_ptr<Connection> control, std::string peer, int stall_ms)
      : control_(std::move(control)), peer_(std::move(peer)), stall_ms_(stall_ms) {}
  ~UcxConnection() override {
    for (auto& [base, k] : rkeys_) ucp_rkey_destroy(k.rkey);
    if (ep_ != nullptr) {
      ucp_request_param_t p{};
      p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
      p.flags = UCP_EP_CLOSE_FLAG_FORCE;
      (void)Wait(ucp_ep_close_nbx(ep_, &p), 1000);
    }
    if (worker_ != nullptr) ucp_worker_destroy(worker_);
    if (ctx_ != nullptr) ucp_cleanup(ctx_);
  }

  Status Open() {
    std::string address;
    uint32_t crc = 0;
    MX_RETURN_IF_ERROR(control_->Control(kOpUcxAddress, 0, 0, &address, &crc));
    MX_ASSIGN_OR_RETURN(ctx_, NewContext());
    MX_ASSIGN_OR_RETURN(worker_, NewWorker(ctx_, UCS_THREAD_MODE_SINGLE));
    ucp_ep_params_t ep{};
    ep.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS;
    ep.address = reinterpret_cast<const ucp_address_t*>(address.data());
    ucs_status_t s = ucp_ep_create(worker_, &ep, &ep_);
    if (s != UCS_OK) return Status::Unavailable(peer_ + ": ucp_ep_create: " + UcsError(s));
    return Status::OK();
  }

  bool broken() const override { return broken_ || control_->broken(); }
  const char* transport() const override { return "ucx"; }

  void MarkBroken() override { broken_ = true; }

  Status ReadChecked(uint64_t remote_addr, uint64_t size, char* dest, bool fresh,
                     uint32_t* crc_out) override {
    if (broken()) return Status::Unavailable(peer_ + ": connection already failed");
    // The peer's CRC first: it also refuses a range it has not verified.
    uint32_t want = 0;
    MX_RETURN_IF_ERROR(PeerChecksum(*control_, remote_addr, size, fresh, &want));
    if (size == 0) return Status::OK();
    MX_ASSIGN_OR_RETURN(ucp_rkey_h rkey, RkeyFor(remote_addr, size));
    ucp_request_param_t p{};
    ucs_status_ptr_t req = ucp_get_nbx(ep_, dest, size, remote_addr, rkey, &p);
    // A get completes locally only once the data is in: flush the endpoint to be sure.
    Status st = Wait(req, stall_ms_);
    if (st.ok()) st = Wait(ucp_ep_flush_nbx(ep_, &p), stall_ms_);
    if (!st.ok()) {
      broken_ = true;
      return st;
    }
    if (Crc32c(0, dest, size) != want) {
      return Status::DataLoss(peer_ + ": chunk checksum mismatch (ucx)");
    }
    if (crc_out != nullptr) *crc_out = want;
    return Status::OK();
  }

 private:
  struct Rkey {
    uint64_t size;
    ucp_rkey_h rkey;
  };

  Result<ucp_rkey_h> RkeyFor(uint64_t addr, uint64_t size) {
    auto it = rkeys_.upper_bound(addr);
    if (it != rkeys_.begin()) {
      --it;
      if (addr >= it->first && addr + size <= it->first + it->second.size) return it->second.rkey;
    }
    std::string blob;
    uint32_t crc = 0;
    MX_RETURN_IF_ERROR(control_->Control(kOpUcxRkey, addr, 0, &blob, &crc));
    if (blob.size() < 17) return Status::DataLoss(peer_ + ": short rkey answer");
    uint64_t base = Get64(blob.data()), region = Get64(blob.data() + 8);
    if (addr < base || addr + size > base + region) {
      return Status::DataLoss(peer_ + ": rkey for another region");
    }
    ucp_rkey_h rkey = nullptr;
    ucs_status_t s = ucp_ep_rkey_unpack(ep_, blob.data() + 16, &rkey);
    if (s != UCS_OK) return Status::Unavailable(peer_ + ": ucp_ep_rkey_unpack: " + UcsError(s));
    rkeys_[base] = {region, rkey};
    return rkey;
  }

  Status Wait(ucs_status_ptr_t req, int ms) {
    if (req == nullptr) return Status::OK();
    if (UCS_PTR_IS_ERR(req)) {
      return Status::Unavailable(peer_ + ": ucx: " + UcsError(UCS_PTR_STATUS(req)));
    }
    auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
    ucs_status_t s;
    while ((s = ucp_request_check_status(req)) == UCS_INPROGRESS) {
      if (ucp_worker_progress(worker_) == 0 && std::chrono::steady_clock::now() > until) {
        ucp_request_cancel(worker_, req);
        while (ucp_request_check_status(req) == UCS_INPROGRESS) ucp_worker_progress(worker_);
        ucp_request_free(req);
        return Status::Unavailable(peer_ + ": ucx: stalled (no data within the deadline)");
      }
    }
    ucp_request_free(req);
    if (s != UCS_OK) return Status::Unavailable(peer_ + ": ucx: " + UcsError(s));
    return Status::OK();
  }

  std::unique_ptr<Connection> control_;
  std::string peer_;
  int stall_ms_;
  ucp_context_h ctx_ = nullptr;
  ucp_worker_h worker_ = nullptr;
  ucp_ep_h ep_ = nullptr;
  std::map<uint64_t, Rkey> rkeys_;
  bool broken_ = false;
};

}  // namespace

bool UcxBuilt() { return true; }

Result<std::unique_ptr<RmaAgent>> StartUcxAgent() {
  auto agent = std::make_unique<UcxAgent>();
  MX_RETURN_IF_ERROR(agent->Start());
  return std::unique_ptr<RmaAgent>(std::move(agent));
}

Result<std::unique_ptr<Connection>> ConnectUcx(const std::string& endpoint,
                                               const ConnectOptions& options) {
  MX_ASSIGN_OR_RETURN(auto control, ConnectTcp(endpoint, options));
  auto c = std::make_unique<UcxConnection>(std::move(control), endpoint, options.stall_ms);
  MX_RETURN_IF_ERROR(c->Open());
  return std::unique_ptr<Connection>(std::move(c));
}

}  // namespace mx::transfer
