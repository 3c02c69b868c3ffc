// Built when the CUDA toolkit is absent: the uploader reports that clearly.
#include "streamer/cuda_upload.h"

namespace mx::streamer {

struct CudaUploader::Impl {};

bool CudaCompiledIn() { return false; }

CudaUploader::CudaUploader(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CudaUploader::~CudaUploader() = default;

Result<std::unique_ptr<CudaUploader>> CudaUploader::Create(int, size_t, int) {
  return Status::Unimplemented(
      "this mx was built without CUDA (no CUDA toolkit was found at build time)");
}
Result<void*> CudaUploader::Upload(const char*, size_t) { return Status::Unimplemented("no CUDA"); }
Status CudaUploader::Synchronize() { return Status::Unimplemented("no CUDA"); }
Status CudaUploader::Download(const void*, size_t, char*) {
  return Status::Unimplemented("no CUDA");
}
void CudaUploader::FreeDevice(void*) {}

}  // namespace mx::streamer
