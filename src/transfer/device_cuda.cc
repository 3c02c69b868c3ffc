// The CUDA copier (built when CMake finds the CUDA toolkit). Untested on a GPU: no machine
// this project has run on had one; without a driver or device CudaCopier() says so.
#include <cuda_runtime_api.h>

#include <mutex>
#include <string>

#include "transfer/device.h"

namespace mx::transfer {
namespace {

Status CudaFailure(cudaError_t err, const std::string& what) {
  return Status::FailedPrecondition(what + ": " + cudaGetErrorString(err));
}

class Copier : public DeviceCopier {
 public:
  Status ToHost(int device, uint64_t src, size_t n, char* dst) override {
    cudaError_t err = cudaSetDevice(device);
    if (err == cudaSuccess) {
      err = cudaMemcpy(dst, reinterpret_cast<const void*>(src), n, cudaMemcpyDeviceToHost);
    }
    return err == cudaSuccess ? Status::OK() : CudaFailure(err, "copying device memory to host");
  }

  // One stream per calling thread and device, so the copies of different pulling threads
  // overlap each other and the network; the ticket is an event recorded after the copy.
  Result<uint64_t> ToDeviceAsync(int device, const char* src, size_t n, uint64_t dst) override {
    cudaError_t err = cudaSetDevice(device);
    thread_local cudaStream_t stream = nullptr;
    thread_local int stream_device = -1;
    if (err == cudaSuccess && stream_device != device) {
      err = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
      stream_device = err == cudaSuccess ? device : -1;
    }
    cudaEvent_t done = nullptr;
    if (err == cudaSuccess) {
      err = cudaMemcpyAsync(reinterpret_cast<void*>(dst), src, n, cudaMemcpyHostToDevice, stream);
    }
    if (err == cudaSuccess) err = cudaEventCreateWithFlags(&done, cudaEventDisableTiming);
    if (err == cudaSuccess) err = cudaEventRecord(done, stream);
    if (err != cudaSuccess) {
      if (done != nullptr) cudaEventDestroy(done);
      return CudaFailure(err, "copying to device memory");
    }
    return reinterpret_cast<uint64_t>(done);
  }

  Status Wait(uint64_t ticket) override {
    auto done = reinterpret_cast<cudaEvent_t>(ticket);
    cudaError_t err = cudaEventSynchronize(done);
    cudaEventDestroy(done);
    return err == cudaSuccess ? Status::OK() : CudaFailure(err, "waiting for a device copy");
  }

  Result<char*> AllocateStaging() override {
    void* p = nullptr;
    cudaError_t err = cudaMallocHost(&p, kStagingBytes);
    if (err != cudaSuccess) return CudaFailure(err, "cudaMallocHost (pinned staging)");
    return static_cast<char*>(p);
  }

  void FreeStaging(char* buffer) override { cudaFreeHost(buffer); }
};

}  // namespace

Result<DeviceCopier*> CudaCopier() {
  static Copier copier;
  static std::once_flag once;
  static Status usable;
  std::call_once(once, [] {
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess) {
      usable = CudaFailure(err, "no usable CUDA device");
    } else if (count == 0) {
      usable = Status::FailedPrecondition("no usable CUDA device: none found");
    }
  });
  if (!usable.ok()) return usable;
  return static_cast<DeviceCopier*>(&copier);
}

}  // namespace mx::transfer
