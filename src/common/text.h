// Text checks shared by every parser of untrusted bytes (safetensors headers, revisions,
// HTTP paths).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace mx {

// True when `s` is well-formed UTF-8: no overlong forms, surrogates or code points past
// U+10FFFF.
bool IsValidUtf8(std::string_view s);

// A printable, bounded copy of untrusted text for error messages, logs and headers:
// control characters and invalid UTF-8 bytes become '?', and it is cut at about
// `max_bytes` (then "..." is appended). What comes out can be echoed anywhere.
std::string Printable(std::string_view text, size_t max_bytes = 128);

// A terminal-safe copy of untrusted text, for values printed whole (paths, names, error
// messages): nothing is cut, but C0 controls, DEL, C1 controls (U+0080..U+009F) and invalid
// UTF-8 bytes are written as "\xNN" (byte values), so an ESC sequence from a server or a
// file name shows up as text and cannot drive the terminal.
std::string EscapeControl(std::string_view text);

// `text` without leading and trailing ASCII whitespace (space, \t, \n, \v, \f, \r): token
// files, INI lines, metadata answers.
std::string_view TrimWhitespace(std::string_view text);

}  // namespace mx
