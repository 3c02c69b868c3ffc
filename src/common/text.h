// Text checks shared by every parser of untrusted bytes (safetensors headers, revisions,
// HTTP paths).
#pragma once

#include <string_view>

namespace mx {

// True when `s` is well-formed UTF-8: no overlong forms, surrogates or code points past
// U+10FFFF.
bool IsValidUtf8(std::string_view s);

}  // namespace mx
