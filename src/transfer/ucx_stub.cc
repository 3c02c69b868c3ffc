// Builds without libucx: the UCX backend is absent and says so.
#include "transfer/transport.h"

namespace mx::transfer {

bool UcxBuilt() { return false; }

Result<std::unique_ptr<RmaAgent>> StartUcxAgent() {
  return Status::Unimplemented("this build has no UCX (install libucx-dev and rebuild)");
}

Result<std::unique_ptr<Connection>> ConnectUcx(const std::string&, const ConnectOptions&) {
  return Status::Unimplemented("this build has no UCX (install libucx-dev and rebuild)");
}

}  // namespace mx::transfer
