// CudaUploader: moves streamed tensors into GPU memory, overlapping host-to-device copies
// with the reads still in flight. The CUDA runtime is built in when CMake finds the toolkit
// (else a stub answers "built without CUDA"); without a driver or GPU, Create() fails with
// a clear error ("no usable CUDA device").
//
// Tensors arrive in pageable host memory (the streamer's buffers); copying pageable memory
// makes cudaMemcpyAsync synchronous. So each tensor is copied into one of a few pinned
// staging slots and sent from there on a stream; a slot is reused once its event has
// fired. The host buffer is free as soon as Upload() returns.
//
// Device memory comes from a pool the uploader owns: large blocks (cudaMalloc synchronises
// the device, so never one per tensor) carved into 256-byte aligned pieces. Every block is
// freed by the destructor, so no error path leaks device memory; a device pointer stays
// valid for the uploader's lifetime.
//
// CudaDestination wires an uploader into the streamer: its Add() is the TensorCallback
// body, and it remembers where each tensor landed so a loader (or a test) can find it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "common/status.h"
#include "streamer/streamer.h"

namespace mx::streamer {

struct CudaUploaderOptions {
  size_t slot_bytes = 32u << 20;    // pinned staging per slot
  int slots = 4;                    // staging slots in flight
  size_t block_bytes = 256u << 20;  // device pool block (a bigger tensor gets its own block)
};

class CudaUploader {
 public:
  // InvalidArgument for zero slots or slot bytes (checked before touching CUDA);
  // FailedPrecondition "no usable CUDA device" without a driver or GPU.
  static Result<std::unique_ptr<CudaUploader>> Create(int device,
                                                      const CudaUploaderOptions& options = {});
  ~CudaUploader();
  CudaUploader(const CudaUploader&) = delete;
  CudaUploader& operator=(const CudaUploader&) = delete;

  // Places `len` bytes in pooled device memory and starts copying `data` into it. The
  // bytes are on the device when Synchronize() returns; the pointer is the uploader's.
  Result<void*> Upload(const char* data, size_t len);
  // Waits for every upload so far.
  Status Synchronize();
  // Reads device memory back (for verification). Synchronous.
  Status Download(const void* device_ptr, size_t len, char* host);
  // Device memory taken from CUDA so far (pool blocks), and bytes uploaded.
  uint64_t device_bytes_reserved() const;
  uint64_t bytes_uploaded() const;

 private:
  struct Impl;
  explicit CudaUploader(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The streamer's GPU destination: every tensor delivered goes on to device memory.
class CudaDestination {
 public:
  struct Placed {
    const void* device = nullptr;
    uint64_t bytes = 0;
  };

  static Result<std::unique_ptr<CudaDestination>> Create(int device,
                                                         const CudaUploaderOptions& options = {});
  // Uploads one tensor (the TensorCallback body). Keyed "<file>/<tensor name>".
  Status Add(const Tensor& tensor);
  // Waits until every added tensor is in device memory.
  Status Finish();
  // Where each tensor landed.
  const std::map<std::string, Placed>& tensors() const { return tensors_; }
  // A tensor's bytes read back from the device (after Finish()).
  Result<std::string> ReadBack(const std::string& key);
  CudaUploader& uploader() { return *uploader_; }

 private:
  explicit CudaDestination(std::unique_ptr<CudaUploader> uploader)
      : uploader_(std::move(uploader)) {}
  std::unique_ptr<CudaUploader> uploader_;
  std::map<std::string, Placed> tensors_;
};

// True when this build has CUDA support compiled in.
bool CudaCompiledIn();

}  // namespace mx::streamer
