#include <cstring>
#include <future>

#include "common/env.h"
#include "storage/backends.h"

namespace mx::storage {
namespace {

class RemoteReader : public RangeReader {
 public:
  RemoteReader(ObjectInfo info, std::string url, RangeSigner signer, std::string auth_hint,
               http::RangeEngine* engine, std::function<bool()> on_auth_failure)
      : info_(std::move(info)),
        url_(std::move(url)),
        signer_(std::move(signer)),
        auth_hint_(std::move(auth_hint)),
        engine_(engine),
        on_auth_failure_(std::move(on_auth_failure)) {}

  const ObjectInfo& info() const override { return info_; }

  Status ReadAt(uint64_t offset, uint64_t len, char* dst) override {
    if (len == 0) return Status::OK();
    if (offset > info_.size || len > info_.size - offset)
      return Status::InvalidArgument(info_.uri + ": read past the end");
    std::promise<Status> done;
    std::future<Status> result = done.get_future();
    http::FetchJob job;
    job.url = url_;
    job.size = info_.size;
    job.ranges = {{offset, offset + len}};
    job.display_name = info_.uri;
    job.auth_hint = auth_hint_;
    job.headers_for_range = signer_;
    job.on_auth_failure = on_auth_failure_;
    // A retried range resumes at its cursor; `at` is always the absolute offset.
    job.sink = [dst, offset](uint64_t at, const char* data, size_t n) {
      std::memcpy(dst + (at - offset), data, n);
      return Status::OK();
    };
    job.on_done = [&done](const Status& st) { done.set_value(st); };
    engine_->Add(std::move(job));
    return result.get();
  }

 private:
  ObjectInfo info_;
  std::string url_;
  RangeSigner signer_;
  std::string auth_hint_;
  http::RangeEngine* engine_;
  std::function<bool()> on_auth_failure_;
};

}  // namespace

std::unique_ptr<RangeReader> MakeRemoteReader(ObjectInfo info, std::string url, RangeSigner signer,
                                              std::string auth_hint, http::RangeEngine* engine,
                                              std::function<bool()> on_auth_failure) {
  return std::make_unique<RemoteReader>(std::move(info), std::move(url), std::move(signer),
                                        std::move(auth_hint), engine, std::move(on_auth_failure));
}

std::unique_ptr<http::RangeEngine> StartEngine(int connections) {
  http::EngineOptions o;
  o.max_connections = connections;  // the ceiling: the engine adapts below it
  auto engine = std::make_unique<http::RangeEngine>(o);
  engine->StartBackground();
  return engine;
}

bool NextXmlElement(const std::string& xml, const std::string& tag, size_t* pos,
                    std::string* text) {
  std::string open = "<" + tag + ">", close = "</" + tag + ">";
  size_t a = xml.find(open, *pos);
  if (a == std::string::npos) return false;
  size_t b = xml.find(close, a + open.size());
  if (b == std::string::npos) return false;
  std::string raw = xml.substr(a + open.size(), b - a - open.size());
  text->clear();
  for (size_t i = 0; i < raw.size(); ++i) {
    if (raw[i] != '&') {
      text->push_back(raw[i]);
      continue;
    }
    static const std::pair<const char*, char> kEntities[] = {
        {"&amp;", '&'}, {"&lt;", '<'}, {"&gt;", '>'}, {"&quot;", '"'}, {"&apos;", '\''}};
    bool matched = false;
    for (const auto& [e, c] : kEntities) {
      if (raw.compare(i, std::strlen(e), e) == 0) {
        text->push_back(c);
        i += std::strlen(e) - 1;
        matched = true;
        break;
      }
    }
    if (!matched) text->push_back('&');
  }
  *pos = b + close.size();
  return true;
}

Result<uint64_t> ParseObjectSize(std::string_view text) {
  MX_ASSIGN_OR_RETURN(uint64_t n, ParseUint64(text));
  if (n > kMaxObjectBytes) {
    return Status::DataLoss("object size " + std::to_string(n) + " exceeds the " +
                            std::to_string(kMaxObjectBytes >> 40) + " TiB bound");
  }
  return n;
}

Status CheckInMemorySize(const ObjectInfo& object) {
  if (object.size <= kMaxInMemoryObjectBytes) return Status::OK();
  return Status::ResourceExhausted(
      object.uri + ": " + std::to_string(object.size) + " bytes is over the " +
      std::to_string(kMaxInMemoryObjectBytes >> 20) + " MiB limit for a file read into memory");
}

bool HasDotSegment(std::string_view key) {
  size_t start = 0;
  while (start <= key.size()) {
    size_t end = key.find('/', start);
    if (end == std::string_view::npos) end = key.size();
    std::string_view seg = key.substr(start, end - start);
    if (seg == "." || seg == "..") return true;
    start = end + 1;
  }
  return false;
}

Status CheckListedKey(const std::string& key, const std::string& prefix, const std::string& where) {
  if (key.rfind(prefix, 0) != 0 || HasDotSegment(key)) {
    return Status::DataLoss(where + ": the listing names key '" + key.substr(0, 200) +
                            "', which leaves the listed prefix or has a '.'/'..' segment");
  }
  return Status::OK();
}

Status SplitBucketKey(const std::string& uri, size_t scheme_len, std::string* bucket,
                      std::string* key) {
  std::string rest = uri.substr(scheme_len);
  size_t slash = rest.find('/');
  *bucket = rest.substr(0, slash);
  *key = slash == std::string::npos ? "" : rest.substr(slash + 1);
  if (bucket->empty()) return Status::InvalidArgument("no bucket/container in '" + uri + "'");
  // Servers and libcurl normalise "." and ".." segments into another object's path.
  if (HasDotSegment(*key)) {
    return Status::InvalidArgument("'" + uri + "': keys with '.' or '..' segments are refused");
  }
  return Status::OK();
}

}  // namespace mx::storage
