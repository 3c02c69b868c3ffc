// Built when the CUDA toolkit is absent: device memory is refused clearly.
#include "transfer/device.h"

namespace mx::transfer {

Result<DeviceCopier*> CudaCopier() {
  return Status::FailedPrecondition(
      "this mx was built without CUDA (no CUDA toolkit was found at build time)");
}

}  // namespace mx::transfer
