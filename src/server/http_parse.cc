#include "server/http_parse.h"

#include <algorithm>
#include <charconv>

#include "common/text.h"
#include "hub/cache.h"

namespace mx::server {

namespace {

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool IsTokenChar(char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  return std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

bool IsControl(unsigned char c) { return c < 0x20 || c == 0x7f; }

// Decoded text that may reach handlers: valid UTF-8 and no control characters (NUL, CR, LF
// and friends have no business in a path or a query value).
bool IsCleanText(std::string_view s) {
  for (char c : s) {
    if (IsControl(static_cast<unsigned char>(c))) return false;
  }
  return IsValidUtf8(s);
}

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// Digits only, no sign, no overflow.
std::optional<uint64_t> ParseDecimal(std::string_view s) {
  if (s.empty() || s.size() > 20) return std::nullopt;
  uint64_t v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return v;
}

// True when a comma-separated header (Connection) lists `token`, case-insensitively.
bool ListsToken(std::string_view value, std::string_view token) {
  size_t pos = 0;
  while (pos <= value.size()) {
    size_t comma = value.find(',', pos);
    std::string_view item = Trim(
        value.substr(pos, comma == std::string_view::npos ? std::string_view::npos : comma - pos));
    if (Lower(item) == token) return true;
    if (comma == std::string_view::npos) break;
    pos = comma + 1;
  }
  return false;
}

Status Fail(HeadError* error, int status, std::string message) {
  if (error) *error = {status, message};
  return Status::InvalidArgument(std::move(message));
}

Status ParseTarget(std::string_view target, HttpRequest* req, HeadError* error) {
  if (target.empty() || target.front() != '/') {
    return Fail(error, 400, "the request target must be an absolute path");
  }
  for (char c : target) {
    unsigned char u = static_cast<unsigned char>(c);
    if (IsControl(u) || u >= 0x80 || c == ' ') {
      return Fail(error, 400, "the request target holds a byte that must be percent-encoded");
    }
  }
  size_t q = target.find('?');
  req->raw_path = std::string(target.substr(0, q));
  req->path = UrlDecode(req->raw_path);
  if (!IsCleanText(req->path)) {
    return Fail(error, 400, "the decoded path is not UTF-8 or holds control characters");
  }
  if (q == std::string_view::npos) return Status::OK();
  std::string_view qs = target.substr(q + 1);
  size_t pos = 0;
  size_t count = 0;
  while (pos <= qs.size()) {
    size_t amp = qs.find('&', pos);
    std::string_view kv =
        qs.substr(pos, amp == std::string_view::npos ? std::string_view::npos : amp - pos);
    if (!kv.empty()) {
      if (++count > 64) return Fail(error, 400, "too many query parameters");
      size_t eq = kv.find('=');
      std::string key = UrlDecode(kv.substr(0, eq));
      std::string value = eq == std::string_view::npos ? "" : UrlDecode(kv.substr(eq + 1));
      if (!IsCleanText(key) || !IsCleanText(value)) {
        return Fail(error, 400, "a query parameter is not UTF-8 or holds control characters");
      }
      req->query[key] = value;
    }
    if (amp == std::string_view::npos) break;
    pos = amp + 1;
  }
  return Status::OK();
}

Status ParseRequestLine(std::string_view line, HttpRequest* req, HeadError* error) {
  size_t sp1 = line.find(' ');
  size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
  if (sp1 == std::string_view::npos || sp2 == std::string_view::npos ||
      line.find(' ', sp2 + 1) != std::string_view::npos) {
    return Fail(error, 400, "malformed request line");
  }
  std::string_view method = line.substr(0, sp1);
  if (method.empty() || method.size() > 16 ||
      !std::all_of(method.begin(), method.end(), IsTokenChar)) {
    return Fail(error, 400, "malformed method");
  }
  std::string_view version = line.substr(sp2 + 1);
  if (version == "HTTP/1.0") {
    req->http10 = true;
  } else if (version != "HTTP/1.1") {
    return Fail(error, 505, "only HTTP/1.0 and HTTP/1.1 are served");
  }
  req->method = std::string(method);
  return ParseTarget(line.substr(sp1 + 1, sp2 - sp1 - 1), req, error);
}

Status ParseHeaderLine(std::string_view line, HttpRequest* req, HeadError* error) {
  if (line.front() == ' ' || line.front() == '\t') {
    return Fail(error, 400, "obsolete line folding is not accepted");
  }
  size_t colon = line.find(':');
  if (colon == std::string_view::npos || colon == 0) {
    return Fail(error, 400, "malformed header line");
  }
  std::string_view name = line.substr(0, colon);
  if (!std::all_of(name.begin(), name.end(), IsTokenChar)) {
    // Includes "Name : value" (RFC 9112 5.1: whitespace before the colon is an error).
    return Fail(error, 400, "malformed header name");
  }
  std::string_view value = Trim(line.substr(colon + 1));
  for (char c : value) {
    unsigned char u = static_cast<unsigned char>(c);
    if (IsControl(u) && c != '\t') return Fail(error, 400, "control character in a header value");
  }
  std::string key = Lower(name);
  auto [it, inserted] = req->headers.emplace(key, std::string(value));
  if (!inserted) {
    if (key == "content-length" || key == "host" || key == "transfer-encoding" ||
        key == "authorization" || key == "range") {
      // Two of these can be read two ways by two parsers: the stuff of request smuggling.
      return Fail(error, 400, "duplicate " + key + " header");
    }
    it->second += ", " + std::string(value);
  }
  return Status::OK();
}

}  // namespace

std::string HttpRequest::Header(const std::string& name) const {
  auto it = headers.find(name);
  return it == headers.end() ? "" : it->second;
}

std::string UrlDecode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size() && HexValue(s[i + 1]) >= 0 && HexValue(s[i + 2]) >= 0) {
      out.push_back(static_cast<char>(HexValue(s[i + 1]) * 16 + HexValue(s[i + 2])));
      i += 2;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

bool IsValidHostHeader(std::string_view host) {
  if (host.empty() || host.size() > 255) return false;
  std::string_view name = host;
  if (host.front() == '[') {
    size_t close = host.find(']');
    if (close == std::string_view::npos) return false;
    for (char c : host.substr(1, close - 1)) {
      if (HexValue(c) < 0 && c != ':' && c != '.') return false;
    }
    name = {};
    host.remove_prefix(close + 1);
    if (host.empty()) return true;
    if (host.front() != ':') return false;
  } else {
    size_t colon = host.rfind(':');
    name = host.substr(0, colon);
    host = colon == std::string_view::npos ? std::string_view() : host.substr(colon);
    if (name.empty()) return false;
    for (char c : name) {
      bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                c == '-' || c == '.' || c == '_';
      if (!ok) return false;
    }
  }
  if (host.empty()) return true;
  auto port = ParseDecimal(host.substr(1));
  return port && *port <= 65535;
}

bool IsSafeHeaderValue(std::string_view value) {
  for (char c : value) {
    if (IsControl(static_cast<unsigned char>(c)) && c != '\t') return false;
  }
  return true;
}

Result<HttpRequest> ParseRequestHead(std::string_view head, const HeadLimits& limits,
                                     HeadError* error) {
  if (head.size() > limits.max_head_bytes) {
    MX_RETURN_IF_ERROR(Fail(error, 431, "request head too large"));
  }
  HttpRequest req;
  size_t pos = 0;
  size_t lines = 0;
  while (pos <= head.size()) {
    size_t eol = head.find("\r\n", pos);
    std::string_view line =
        head.substr(pos, eol == std::string_view::npos ? std::string_view::npos : eol - pos);
    if (line.find('\r') != std::string_view::npos || line.find('\n') != std::string_view::npos) {
      MX_RETURN_IF_ERROR(Fail(error, 400, "bare CR or LF in the request head"));
    }
    if (lines == 0) {
      MX_RETURN_IF_ERROR(ParseRequestLine(line, &req, error));
    } else {
      if (line.empty()) MX_RETURN_IF_ERROR(Fail(error, 400, "empty header line"));
      if (lines > limits.max_headers) MX_RETURN_IF_ERROR(Fail(error, 431, "too many headers"));
      MX_RETURN_IF_ERROR(ParseHeaderLine(line, &req, error));
    }
    ++lines;
    if (eol == std::string_view::npos) break;
    pos = eol + 2;
  }
  if (req.headers.count("transfer-encoding")) {
    if (req.headers.count("content-length")) {
      MX_RETURN_IF_ERROR(Fail(error, 400, "both Transfer-Encoding and Content-Length"));
    }
    MX_RETURN_IF_ERROR(Fail(error, 501, "request bodies with Transfer-Encoding are not accepted"));
  }
  if (auto it = req.headers.find("content-length"); it != req.headers.end()) {
    auto n = ParseDecimal(it->second);
    if (!n) MX_RETURN_IF_ERROR(Fail(error, 400, "malformed Content-Length"));
    if (*n > limits.max_body_bytes) MX_RETURN_IF_ERROR(Fail(error, 413, "request body too large"));
    req.body_length = *n;
  }
  if (auto it = req.headers.find("host");
      it != req.headers.end() && !IsValidHostHeader(it->second)) {
    MX_RETURN_IF_ERROR(Fail(error, 400, "malformed Host header"));
  }
  std::string connection = req.Header("connection");
  req.keep_alive =
      req.http10 ? ListsToken(connection, "keep-alive") : !ListsToken(connection, "close");
  return req;
}

ByteRange ParseRange(std::string_view header, uint64_t size) {
  ByteRange full;
  std::string_view h = Trim(header);
  size_t eq = h.find('=');
  if (h.empty() || eq == std::string_view::npos) return full;
  if (Lower(Trim(h.substr(0, eq))) != "bytes") return full;  // unknown unit: ignore (RFC 9110)
  std::string_view spec = Trim(h.substr(eq + 1));
  // Several ranges would need multipart/byteranges; RFC 9110 lets a server ignore Range.
  if (spec.find(',') != std::string_view::npos) return full;
  ByteRange bad{ByteRange::kUnsatisfiable, 0, 0};
  size_t dash = spec.find('-');
  if (dash == std::string_view::npos) return bad;
  std::string_view a = Trim(spec.substr(0, dash)), b = Trim(spec.substr(dash + 1));
  if (a.empty()) {  // suffix: the last b bytes
    auto n = ParseDecimal(b);
    if (!n) {
      // A suffix too long for 64 bits still means "everything".
      if (b.empty() ||
          !std::all_of(b.begin(), b.end(), [](char c) { return c >= '0' && c <= '9'; }))
        return bad;
      n = UINT64_MAX;
    }
    if (*n == 0 || size == 0) return bad;
    return {ByteRange::kPartial, size - std::min<uint64_t>(*n, size), size - 1};
  }
  auto first = ParseDecimal(a);
  if (!first || *first >= size) return bad;
  uint64_t last = size - 1;
  if (!b.empty()) {
    auto l = ParseDecimal(b);
    if (!l) {
      // A last-pos beyond 64 bits is still a valid "to the end".
      if (!std::all_of(b.begin(), b.end(), [](char c) { return c >= '0' && c <= '9'; })) return bad;
      l = UINT64_MAX;
    }
    if (*l < *first) return bad;
    last = std::min(*l, size - 1);
  }
  return {ByteRange::kPartial, *first, last};
}

bool BearerTokenMatches(std::string_view authorization, std::string_view token) {
  constexpr std::string_view kScheme = "Bearer ";
  if (token.empty()) return false;
  // Compare over the expected length whatever was sent, so the time depends on neither the
  // position of the first wrong byte nor (beyond one branch) the presented length.
  bool scheme_ok = authorization.size() == kScheme.size() + token.size() &&
                   authorization.substr(0, kScheme.size()) == kScheme;
  std::string_view presented = authorization.size() >= kScheme.size()
                                   ? authorization.substr(kScheme.size())
                                   : std::string_view();
  unsigned char diff = scheme_ok ? 0 : 1;
  for (size_t i = 0; i < token.size(); ++i) {
    unsigned char p = i < presented.size() ? static_cast<unsigned char>(presented[i]) : 0;
    diff |= static_cast<unsigned char>(p ^ static_cast<unsigned char>(token[i]));
  }
  return diff == 0;
}

}  // namespace mx::server
