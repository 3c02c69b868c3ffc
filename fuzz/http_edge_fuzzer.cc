// libFuzzer target for the HTTP edge of mx-server: request head parsing (request line,
// headers, framing, percent-decoding), the mirror's routing and validation (repo id,
// revision, path), Range, and the text that gets echoed into headers. Crashes, sanitizer
// reports and broken invariants (checked with __builtin_trap) are findings.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/text.h"
#include "hub/cache.h"
#include "server/http_parse.h"
#include "server/mirror.h"

using namespace mx::server;
using mx::Printable;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  HeadError error;
  auto request = ParseRequestHead(input, HeadLimits{}, &error);
  if (!request.ok()) {
    if (error.status < 400 || error.status > 599) __builtin_trap();
  } else {
    // What reaches handlers is clean: valid UTF-8, no control characters.
    if (!mx::IsValidUtf8(request->path)) __builtin_trap();
    for (char c : request->path) {
      if (static_cast<unsigned char>(c) < 0x20) __builtin_trap();
    }
    auto route = ParseMirrorRoute(request->raw_path);
    if (route.ok()) {
      if (!mx::hub::ValidateRevision(route->revision).ok()) __builtin_trap();
      if (!mx::hub::ValidateRepoId(route->repo_id).ok()) __builtin_trap();
      if (route->path.find("..") != std::string::npos && route->kind == MirrorRoute::kResolve &&
          (route->path == ".." || route->path.rfind("../", 0) == 0 ||
           route->path.find("/../") != std::string::npos)) {
        __builtin_trap();
      }
    }
    uint64_t sizes[] = {0, 1, 100, UINT64_MAX};
    for (uint64_t n : sizes) {
      ByteRange r = ParseRange(request->Header("range"), n);
      if (r.kind == ByteRange::kPartial && (r.first > r.last || r.last >= n)) __builtin_trap();
    }
  }
  // Anything may be echoed into a header once it went through Printable.
  if (!IsSafeHeaderValue(Printable(input, 256))) __builtin_trap();
  (void)mx::hub::ValidateRevision(std::string(input.substr(0, 300)));
  (void)UrlDecode(input);
  return 0;
}
