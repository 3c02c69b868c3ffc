// The HTTP/1.1 request edge, as pure functions over bytes (no sockets), so it can be unit
// tested and fuzzed on its own. Everything here treats input as hostile: sizes are bounded,
// every decoded string is valid UTF-8 without control characters, and anything that could
// frame a request two ways (RFC 9112 section 6.3) is refused rather than guessed.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "common/text.h"  // Printable, for echoing client text

namespace mx::server {

struct HttpRequest {
  std::string method;
  std::string path;                            // decoded path, without the query
  std::string raw_path;                        // as sent (still percent-encoded)
  std::map<std::string, std::string> query;    // decoded
  std::map<std::string, std::string> headers;  // names lowercased
  bool http10 = false;
  bool keep_alive = true;    // HTTP/1.1 without "Connection: close"
  uint64_t body_length = 0;  // Content-Length of the request body (read and discarded)
  std::string peer;          // the client's address, for logs

  std::string Header(const std::string& lowercase_name) const;
};

// Why a request head was refused: the status to answer with (the connection is closed
// after it, because the framing of whatever follows cannot be trusted).
struct HeadError {
  int status = 400;
  std::string message;
};

// Limits for one request head.
struct HeadLimits {
  size_t max_head_bytes = 32 << 10;  // request line + headers
  size_t max_headers = 100;
  uint64_t max_body_bytes = 64 << 10;  // bodies are read and discarded; larger ones refused
};

// Parses a request head: the bytes before the blank line (without the final CRLF CRLF).
// Request line "METHOD SP origin-form SP HTTP/1.x", CRLF line ends only, no obs-fold, header
// names are tokens with no space before the colon, header values without control characters,
// one Content-Length at most (RFC 9112: several differing ones are an error), no
// Transfer-Encoding (501: no request bodies are chunked here; with Content-Length it is 400),
// a Host that is a host[:port], a target whose decoded path and query are valid UTF-8 without
// control characters or NUL.
Result<HttpRequest> ParseRequestHead(std::string_view head, const HeadLimits& limits,
                                     HeadError* error);

// Percent-decodes; '+' is kept (paths, not forms). Malformed escapes are kept literally.
std::string UrlDecode(std::string_view s);

// True for a Host header value that is a DNS name, IPv4 address or [IPv6] with an optional
// port: safe to echo into an absolute URL.
bool IsValidHostHeader(std::string_view host);

// True when a header value can be written as-is: no CR, LF, NUL or other control characters
// except horizontal tab.
bool IsSafeHeaderValue(std::string_view value);

// The outcome of a Range header against a representation of `size` bytes (RFC 9110 14.2).
struct ByteRange {
  enum Kind {
    kFull,           // no Range, an unknown unit, or several ranges: send 200 with everything
    kPartial,        // send 206 with [first, last]
    kUnsatisfiable,  // send 416 with Content-Range: bytes */size
  };
  Kind kind = kFull;
  uint64_t first = 0;
  uint64_t last = 0;  // inclusive
};
ByteRange ParseRange(std::string_view header, uint64_t size);

// Constant-time check of an "Authorization: Bearer <token>" value against the configured
// token: the time taken does not depend on where the first wrong byte is.
bool BearerTokenMatches(std::string_view authorization, std::string_view token);

}  // namespace mx::server
