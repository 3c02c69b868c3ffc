#include "common/version.h"

namespace mx {

const char* Version() { return MX_VERSION; }
const char* GitCommit() { return MX_GIT_COMMIT; }

std::string BuildDescription(const std::string& program) {
  // CUDA: the streamer's CUDA destination (found toolkit at build time). UCX: the transfer
  // engine's UCX backend (libucx found at build time).
  return program + " " + Version() + " (commit " + GitCommit() + ", CUDA " +
         (MX_HAVE_CUDA ? "yes" : "no") + ", UCX " + (MX_HAVE_UCX ? "yes" : "no") + ")";
}

}  // namespace mx
