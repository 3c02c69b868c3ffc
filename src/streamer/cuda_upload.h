// CudaUploader: moves streamed tensors into GPU memory, overlapping host-to-device copies
// with the reads still in flight. Built only when the CUDA toolkit is found (MX_HAVE_CUDA);
// without a CUDA device, Create() fails with a clear error.
//
// Tensors arrive in pageable host memory (the streamer's buffers); copying pageable memory
// makes cudaMemcpyAsync synchronous. So each tensor is copied into one of a few pinned
// staging slots and sent from there on a stream; a slot is reused once its event has
// fired. The host buffer is free as soon as Upload() returns.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "common/status.h"

namespace mx::streamer {

class CudaUploader {
 public:
  // `slot_bytes` x `slots` of pinned memory on `device`.
  static Result<std::unique_ptr<CudaUploader>> Create(int device, size_t slot_bytes = 32u << 20,
                                                      int slots = 4);
  ~CudaUploader();

  // Allocates `len` bytes of device memory and starts copying `data` into it. The device
  // pointer is valid when Synchronize() returns. The caller owns it (FreeDevice).
  Result<void*> Upload(const char* data, size_t len);
  // Waits for every upload so far.
  Status Synchronize();
  // Reads device memory back (for verification).
  Status Download(const void* device_ptr, size_t len, char* host);
  static void FreeDevice(void* device_ptr);

 private:
  struct Impl;
  explicit CudaUploader(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// True when this build has CUDA support compiled in.
bool CudaCompiledIn();

}  // namespace mx::streamer
