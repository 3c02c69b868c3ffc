// Internal to src/http: libcurl set-up shared by Fetch and RangeEngine.
#pragma once

#include <curl/curl.h>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace mx::http::internal {

void GlobalInitOnce();
// Options every easy handle gets: user agent, timeouts, stall detection, HTTP/2 via
// ALPN, TCP keepalive, no signals. Proxies come from the usual environment variables.
void ApplyCommonOptions(CURL* easy);
// Splits a raw header line from libcurl into a lowercased name and a trimmed value.
// False for status lines and the blank line that ends the headers.
bool ParseHeaderLine(std::string_view line, std::string* name, std::string_view* value);
// Builds a header list; caller frees with curl_slist_free_all.
curl_slist* MakeHeaderList(const std::vector<std::string>& headers);
// A TLS failure that no retry can fix (plain HTTP on an https:// port, a certificate not
// trusted or for another host, an unreadable CA bundle or client certificate): what to check,
// to be reported at once. nullopt for everything else, transient TLS failures included
// (a reset mid-handshake). `detail` is curl's error buffer.
std::optional<std::string> PermanentTlsFailure(CURLcode rc, std::string_view detail);

}  // namespace mx::http::internal
