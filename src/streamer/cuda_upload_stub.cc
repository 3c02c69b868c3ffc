// Built when the CUDA toolkit is absent: the uploader reports that clearly.
#include "streamer/cuda_upload.h"

namespace mx::streamer {

struct CudaUploader::Impl {};

bool CudaCompiledIn() { return false; }

CudaUploader::CudaUploader(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CudaUploader::~CudaUploader() = default;

Result<std::unique_ptr<CudaUploader>> CudaUploader::Create(int,
                                                           const CudaUploaderOptions& options) {
  // The same argument check as the CUDA build, so both answer alike.
  if (options.slots < 1 || options.slot_bytes == 0 || options.block_bytes == 0) {
    return Status::InvalidArgument(
        "the CUDA uploader needs at least one staging slot of at "
        "least one byte and a non-empty pool block");
  }
  return Status::Unimplemented(
      "this mx was built without CUDA (no CUDA toolkit was found at build time)");
}
Result<void*> CudaUploader::Upload(const char*, size_t) { return Status::Unimplemented("no CUDA"); }
Status CudaUploader::Synchronize() { return Status::Unimplemented("no CUDA"); }
Status CudaUploader::Download(const void*, size_t, char*) {
  return Status::Unimplemented("no CUDA");
}
uint64_t CudaUploader::device_bytes_reserved() const { return 0; }
uint64_t CudaUploader::bytes_uploaded() const { return 0; }

}  // namespace mx::streamer
