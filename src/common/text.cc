#include "common/text.h"

#include <cstddef>
#include <cstdint>
#include <string>

namespace mx {

bool IsValidUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t n;
    uint32_t cp;
    if ((c >> 5) == 6) {
      n = 1, cp = c & 0x1f;
    } else if ((c >> 4) == 14) {
      n = 2, cp = c & 0x0f;
    } else if ((c >> 3) == 30) {
      n = 3, cp = c & 0x07;
    } else {
      return false;
    }
    if (i + n >= s.size()) return false;
    for (size_t k = 1; k <= n; ++k) {
      unsigned char cc = static_cast<unsigned char>(s[i + k]);
      if ((cc >> 6) != 2) return false;
      cp = (cp << 6) | (cc & 0x3f);
    }
    // Overlong forms, surrogates and code points past U+10FFFF are not UTF-8.
    if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) ||
        cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
      return false;
    }
    i += n + 1;
  }
  return true;
}

namespace {

size_t SequenceLength(unsigned char c) {
  return c < 0x80             ? 1
         : (c & 0xE0) == 0xC0 ? 2
         : (c & 0xF0) == 0xE0 ? 3
         : (c & 0xF8) == 0xF0 ? 4
                              : 0;
}

// Calls emit(piece, clean) for each UTF-8 sequence of `text`, or for each single byte that
// is not part of one; clean is false for such bytes and for control characters (C0, DEL,
// and C1, U+0080..U+009F, which some terminals act on). Stops when emit returns false;
// returns the bytes consumed.
template <typename Emit>
size_t WalkUtf8(std::string_view text, Emit&& emit) {
  size_t i = 0;
  while (i < text.size()) {
    unsigned char c = static_cast<unsigned char>(text[i]);
    size_t len = SequenceLength(c);
    bool valid = len != 0 && i + len <= text.size() && IsValidUtf8(text.substr(i, len));
    if (!valid) len = 1;
    bool control = (len == 1 && (c < 0x20 || c == 0x7f)) ||
                   (len == 2 && c == 0xC2 && static_cast<unsigned char>(text[i + 1]) < 0xA0);
    if (!emit(text.substr(i, len), valid && !control)) break;
    i += len;
  }
  return i;
}

}  // namespace

std::string Printable(std::string_view text, size_t max_bytes) {
  std::string out;
  size_t used = WalkUtf8(text, [&](std::string_view piece, bool clean) {
    if (out.size() >= max_bytes) return false;
    if (clean) {
      out.append(piece);
    } else {
      out.push_back('?');
    }
    return true;
  });
  if (used < text.size()) out += "...";
  return out;
}

std::string EscapeControl(std::string_view text) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(text.size());
  WalkUtf8(text, [&](std::string_view piece, bool clean) {
    if (clean) {
      out.append(piece);
      return true;
    }
    for (char ch : piece) {
      unsigned char b = static_cast<unsigned char>(ch);
      out += "\\x";
      out.push_back(kHex[b >> 4]);
      out.push_back(kHex[b & 0xf]);
    }
    return true;
  });
  return out;
}

std::string_view TrimWhitespace(std::string_view text) {
  auto space = [](char c) { return c == ' ' || (c >= '\t' && c <= '\r'); };
  while (!text.empty() && space(text.front())) text.remove_prefix(1);
  while (!text.empty() && space(text.back())) text.remove_suffix(1);
  return text;
}

}  // namespace mx
