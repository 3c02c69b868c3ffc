// CudaDestination: built with or without CUDA; it only uses the uploader's interface.
#include "streamer/cuda_upload.h"

namespace mx::streamer {

Result<std::unique_ptr<CudaDestination>> CudaDestination::Create(
    int device, const CudaUploaderOptions& options) {
  MX_ASSIGN_OR_RETURN(auto uploader, CudaUploader::Create(device, options));
  return std::unique_ptr<CudaDestination>(new CudaDestination(std::move(uploader)));
}

Status CudaDestination::Add(const Tensor& tensor) {
  std::string key = tensor.file + "/" + tensor.info.name;
  MX_ASSIGN_OR_RETURN(void* device, uploader_->Upload(tensor.data, tensor.info.bytes()));
  tensors_[key] = Placed{device, tensor.info.bytes()};
  return Status::OK();
}

Status CudaDestination::Finish() { return uploader_->Synchronize(); }

Result<std::string> CudaDestination::ReadBack(const std::string& key) {
  auto it = tensors_.find(key);
  if (it == tensors_.end()) return Status::NotFound("no tensor '" + key + "' on the device");
  std::string host(it->second.bytes, '\0');
  MX_RETURN_IF_ERROR(uploader_->Download(it->second.device, host.size(), host.data()));
  return host;
}

}  // namespace mx::streamer
