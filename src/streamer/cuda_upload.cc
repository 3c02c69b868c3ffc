#include "streamer/cuda_upload.h"

#include <cuda_runtime_api.h>

#include <cstring>
#include <vector>

namespace mx::streamer {
namespace {

Status CudaError(cudaError_t err, const std::string& what) {
  return Status::FailedPrecondition(what + ": " + cudaGetErrorName(err) + " (" +
                                    cudaGetErrorString(err) + ")");
}

}  // namespace

struct CudaUploader::Impl {
  int device = 0;
  cudaStream_t stream = nullptr;
  size_t slot_bytes = 0;
  std::vector<char*> slots;        // pinned staging buffers
  std::vector<cudaEvent_t> ready;  // fired when a slot's last copy is done
  size_t next = 0;
};

bool CudaCompiledIn() { return true; }

CudaUploader::CudaUploader(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Result<std::unique_ptr<CudaUploader>> CudaUploader::Create(int device, size_t slot_bytes,
                                                           int slots) {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) return CudaError(err, "no usable CUDA device");
  if (device < 0 || device >= count) {
    return Status::InvalidArgument("CUDA device " + std::to_string(device) + " does not exist (" +
                                   std::to_string(count) + " found)");
  }
  auto impl = std::make_unique<Impl>();
  impl->device = device;
  impl->slot_bytes = slot_bytes;
  if ((err = cudaSetDevice(device)) != cudaSuccess) return CudaError(err, "cudaSetDevice");
  if ((err = cudaStreamCreateWithFlags(&impl->stream, cudaStreamNonBlocking)) != cudaSuccess) {
    return CudaError(err, "cudaStreamCreate");
  }
  std::unique_ptr<CudaUploader> up(new CudaUploader(std::move(impl)));
  for (int i = 0; i < slots; ++i) {
    void* p = nullptr;
    if ((err = cudaMallocHost(&p, slot_bytes)) != cudaSuccess)
      return CudaError(err, "cudaMallocHost (pinned staging)");
    up->impl_->slots.push_back(static_cast<char*>(p));
    cudaEvent_t e;
    if ((err = cudaEventCreateWithFlags(&e, cudaEventDisableTiming)) != cudaSuccess)
      return CudaError(err, "cudaEventCreate");
    up->impl_->ready.push_back(e);
  }
  return up;
}

CudaUploader::~CudaUploader() {
  if (!impl_) return;
  cudaStreamSynchronize(impl_->stream);
  for (char* p : impl_->slots) cudaFreeHost(p);
  for (cudaEvent_t e : impl_->ready) cudaEventDestroy(e);
  if (impl_->stream) cudaStreamDestroy(impl_->stream);
}

Result<void*> CudaUploader::Upload(const char* data, size_t len) {
  Impl& m = *impl_;
  cudaSetDevice(m.device);
  void* dst = nullptr;
  cudaError_t err = cudaMalloc(&dst, len == 0 ? 1 : len);
  if (err != cudaSuccess) return CudaError(err, "cudaMalloc of " + std::to_string(len) + " bytes");
  for (size_t off = 0; off < len; off += m.slot_bytes) {
    size_t n = std::min(m.slot_bytes, len - off);
    size_t slot = m.next++ % m.slots.size();
    // Wait until the slot's previous copy left it, then refill it and send it.
    if ((err = cudaEventSynchronize(m.ready[slot])) != cudaSuccess)
      return CudaError(err, "cudaEventSynchronize");
    std::memcpy(m.slots[slot], data + off, n);
    err = cudaMemcpyAsync(static_cast<char*>(dst) + off, m.slots[slot], n, cudaMemcpyHostToDevice,
                          m.stream);
    if (err != cudaSuccess) return CudaError(err, "cudaMemcpyAsync");
    if ((err = cudaEventRecord(m.ready[slot], m.stream)) != cudaSuccess)
      return CudaError(err, "cudaEventRecord");
  }
  return dst;
}

Status CudaUploader::Synchronize() {
  cudaError_t err = cudaStreamSynchronize(impl_->stream);
  return err == cudaSuccess ? Status::OK() : CudaError(err, "cudaStreamSynchronize");
}

Status CudaUploader::Download(const void* device_ptr, size_t len, char* host) {
  cudaError_t err = cudaMemcpy(host, device_ptr, len, cudaMemcpyDeviceToHost);
  return err == cudaSuccess ? Status::OK() : CudaError(err, "cudaMemcpy device to host");
}

void CudaUploader::FreeDevice(void* device_ptr) { cudaFree(device_ptr); }

}  // namespace mx::streamer
