// What this build is: version, the commit it was built from, and the optional features
// compiled in. `mx --version` and `mx-server --version` print BuildDescription().
#pragma once

#include <string>

namespace mx {

// "0.1.0".
const char* Version();
// The short git commit of the source tree at configure time, "+dirty" when it had local
// changes; "unknown" outside a git checkout.
const char* GitCommit();
// "mx 0.1.0 (commit 1a2b3c4, CUDA yes, UCX no)": `program` first.
std::string BuildDescription(const std::string& program);

}  // namespace mx
