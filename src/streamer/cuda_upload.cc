#include "streamer/cuda_upload.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace mx::streamer {
namespace {

Status CudaError(cudaError_t err, const std::string& what) {
  return Status::FailedPrecondition(what + ": " + cudaGetErrorName(err) + " (" +
                                    cudaGetErrorString(err) + ")");
}

constexpr size_t kDeviceAlignment = 256;  // what cudaMalloc guarantees; enough for any dtype

}  // namespace

struct CudaUploader::Impl {
  int device = 0;
  cudaStream_t stream = nullptr;
  CudaUploaderOptions options;
  std::vector<char*> slots;        // pinned staging buffers
  std::vector<cudaEvent_t> ready;  // fired when a slot's last copy is done
  size_t next = 0;
  // The device pool: blocks from cudaMalloc, the last one filled up to `block_used`.
  std::vector<void*> blocks;
  size_t block_size = 0, block_used = 0;
  uint64_t reserved = 0, uploaded = 0;

  ~Impl() {
    if (stream) cudaStreamSynchronize(stream);  // no copy may still read a slot or block
    for (char* p : slots) cudaFreeHost(p);
    for (cudaEvent_t e : ready) cudaEventDestroy(e);
    for (void* b : blocks) cudaFree(b);
    if (stream) cudaStreamDestroy(stream);
  }

  // `len` bytes of pooled device memory.
  Result<char*> Allocate(size_t len) {
    size_t need = std::max<size_t>(len, 1);
    if (blocks.empty() || block_size - block_used < need) {
      size_t size = std::max(options.block_bytes, need);
      void* block = nullptr;
      cudaError_t err = cudaMalloc(&block, size);
      if (err != cudaSuccess)
        return CudaError(err, "cudaMalloc of " + std::to_string(size) + " bytes");
      blocks.push_back(block);
      block_size = size;
      block_used = 0;
      reserved += size;
    }
    char* p = static_cast<char*>(blocks.back()) + block_used;
    block_used = std::min(block_size, (block_used + need + kDeviceAlignment - 1) /
                                          kDeviceAlignment * kDeviceAlignment);
    return p;
  }
};

bool CudaCompiledIn() { return true; }

CudaUploader::CudaUploader(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CudaUploader::~CudaUploader() = default;

Result<std::unique_ptr<CudaUploader>> CudaUploader::Create(int device,
                                                           const CudaUploaderOptions& options) {
  // Checked first: Upload picks a slot modulo their count, and needs room in each.
  if (options.slots < 1 || options.slot_bytes == 0 || options.block_bytes == 0) {
    return Status::InvalidArgument(
        "the CUDA uploader needs at least one staging slot of at "
        "least one byte and a non-empty pool block");
  }
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) return CudaError(err, "no usable CUDA device");
  if (count == 0) return Status::FailedPrecondition("no usable CUDA device: none found");
  if (device < 0 || device >= count) {
    return Status::InvalidArgument("CUDA device " + std::to_string(device) + " does not exist (" +
                                   std::to_string(count) + " found)");
  }
  // The Impl owns every resource as soon as it exists: a failure below frees what was made.
  auto impl = std::make_unique<Impl>();
  impl->device = device;
  impl->options = options;
  if ((err = cudaSetDevice(device)) != cudaSuccess) return CudaError(err, "cudaSetDevice");
  if ((err = cudaStreamCreateWithFlags(&impl->stream, cudaStreamNonBlocking)) != cudaSuccess) {
    impl->stream = nullptr;
    return CudaError(err, "cudaStreamCreate");
  }
  for (int i = 0; i < options.slots; ++i) {
    void* p = nullptr;
    if ((err = cudaMallocHost(&p, options.slot_bytes)) != cudaSuccess)
      return CudaError(err, "cudaMallocHost (pinned staging)");
    impl->slots.push_back(static_cast<char*>(p));
    cudaEvent_t e;
    if ((err = cudaEventCreateWithFlags(&e, cudaEventDisableTiming)) != cudaSuccess)
      return CudaError(err, "cudaEventCreate");
    impl->ready.push_back(e);
  }
  return std::unique_ptr<CudaUploader>(new CudaUploader(std::move(impl)));
}

Result<void*> CudaUploader::Upload(const char* data, size_t len) {
  Impl& m = *impl_;
  cudaError_t err = cudaSetDevice(m.device);
  if (err != cudaSuccess) return CudaError(err, "cudaSetDevice");
  MX_ASSIGN_OR_RETURN(char* dst, m.Allocate(len));
  for (size_t off = 0; off < len; off += m.options.slot_bytes) {
    size_t n = std::min(m.options.slot_bytes, len - off);
    size_t slot = m.next++ % m.slots.size();  // Create() guarantees at least one slot
    // Wait until the slot's previous copy left it, then refill it and send it.
    if ((err = cudaEventSynchronize(m.ready[slot])) != cudaSuccess)
      return CudaError(err, "cudaEventSynchronize");
    std::memcpy(m.slots[slot], data + off, n);
    err = cudaMemcpyAsync(dst + off, m.slots[slot], n, cudaMemcpyHostToDevice, m.stream);
    if (err != cudaSuccess) return CudaError(err, "cudaMemcpyAsync");
    if ((err = cudaEventRecord(m.ready[slot], m.stream)) != cudaSuccess)
      return CudaError(err, "cudaEventRecord");
  }
  m.uploaded += len;
  return static_cast<void*>(dst);
}

Status CudaUploader::Synchronize() {
  cudaError_t err = cudaStreamSynchronize(impl_->stream);
  return err == cudaSuccess ? Status::OK() : CudaError(err, "cudaStreamSynchronize");
}

Status CudaUploader::Download(const void* device_ptr, size_t len, char* host) {
  cudaError_t err = cudaSetDevice(impl_->device);
  if (err != cudaSuccess) return CudaError(err, "cudaSetDevice");
  err = cudaMemcpy(host, device_ptr, len, cudaMemcpyDeviceToHost);
  return err == cudaSuccess ? Status::OK() : CudaError(err, "cudaMemcpy device to host");
}

uint64_t CudaUploader::device_bytes_reserved() const { return impl_->reserved; }
uint64_t CudaUploader::bytes_uploaded() const { return impl_->uploaded; }

}  // namespace mx::streamer
