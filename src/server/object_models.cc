#include "server/object_models.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "common/fs.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/text.h"
#include "storage/storage.h"

namespace mx::server {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr size_t kMaxBucketBytes = 222;   // GCS's longest (dotted) bucket name
constexpr size_t kMaxPrefixBytes = 1024;  // S3's and GCS's longest key
constexpr size_t kMaxSegmentBytes = 255;  // one path component on Linux
constexpr size_t kMaxObjects = 100000;
constexpr uint64_t kReadChunk = 8ull << 20;

// An incremental OpenSSL digest (MD5 for ETags, SHA-1 for the listing's id).
class Digest {
 public:
  explicit Digest(const EVP_MD* md) : ctx_(EVP_MD_CTX_new()) {
    EVP_DigestInit_ex(ctx_, md, nullptr);
  }
  ~Digest() { EVP_MD_CTX_free(ctx_); }
  Digest(const Digest&) = delete;
  Digest& operator=(const Digest&) = delete;
  void Update(const void* data, size_t len) { EVP_DigestUpdate(ctx_, data, len); }
  std::string FinalHex() {
    unsigned char out[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_DigestFinal_ex(ctx_, out, &len);
    return HexEncode(std::string_view(reinterpret_cast<char*>(out), len));
  }

 private:
  EVP_MD_CTX* ctx_;
};

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

// The scheme a name starts with ("s3" or "gs", any case), or "".
std::string SchemeOf(std::string_view name) {
  if (name.size() >= 5 && EqualsIgnoreCase(name.substr(0, 5), "s3://")) return "s3";
  if (name.size() >= 5 && EqualsIgnoreCase(name.substr(0, 5), "gs://")) return "gs";
  return "";
}

std::string_view DropLeadingSpaces(std::string_view name) {
  while (!name.empty() && name.front() == ' ') name.remove_prefix(1);
  return name;
}

bool ValidBucket(std::string_view b) {
  if (b.empty() || b.size() > kMaxBucketBytes || !std::isalnum(static_cast<unsigned char>(b[0])))
    return false;
  return std::all_of(b.begin(), b.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_';
  });
}

// A relative path that may become a file name under the model's directory.
Status CheckRelativePath(std::string_view path, const std::string& what) {
  if (!IsValidUtf8(path) || !IsSafeRelativePath(path)) {
    return Status::InvalidArgument(what + " '" + Printable(path) +
                                   "' must be a relative path without empty, '.' or '..' "
                                   "segments, backslashes or control characters");
  }
  size_t start = 0;
  while (start < path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string_view::npos) end = path.size();
    if (end - start > kMaxSegmentBytes) {
      return Status::InvalidArgument(what + " '" + Printable(path) +
                                     "' has a segment longer than " +
                                     std::to_string(kMaxSegmentBytes) + " bytes");
    }
    start = end + 1;
  }
  return Status::OK();
}

// An ETag that is the MD5 of the content: 32 hex digits (no '-': not multipart).
bool IsMd5Etag(const std::string& etag) {
  std::string lower = etag;
  std::transform(lower.begin(), lower.end(), lower.begin(), ::tolower);
  return IsLowerHex(lower, 32);
}

struct Wanted {
  storage::ObjectInfo info;
  std::string rel;  // path under the model's directory
};

std::string ListingCommit(const std::vector<Wanted>& all) {
  Digest sha1(EVP_sha1());
  for (const auto& w : all) {
    std::string line = w.rel + "\t" + std::to_string(w.info.size) + "\t" + w.info.etag + "\n";
    sha1.Update(line.data(), line.size());
  }
  return sha1.FinalHex();
}

struct Marker {
  std::string name, commit;
  bool ignore_weights = false;
  struct File {
    std::string path;
    uint64_t size = 0;
  };
  std::vector<File> files;
};

Result<Marker> ReadMarker(const std::string& dir) {
  MX_ASSIGN_OR_RETURN(std::string text,
                      ReadFile(dir + "/" + kObjectModelMarker, 64ull << 20, true));
  json j = json::parse(text, nullptr, false);
  Marker m;
  if (j.is_discarded() || !j.is_object() || !j.contains("commit") || !j["commit"].is_string() ||
      !j.contains("files") || !j["files"].is_array()) {
    return Status::DataLoss("the copy's marker is not what this server writes");
  }
  m.commit = j["commit"].get<std::string>();
  if (!IsLowerHex(m.commit, 40)) return Status::DataLoss("the copy's marker has no commit");
  if (j.contains("name") && j["name"].is_string()) m.name = j["name"].get<std::string>();
  if (j.contains("ignore_weights") && j["ignore_weights"].is_boolean())
    m.ignore_weights = j["ignore_weights"].get<bool>();
  for (const auto& f : j["files"]) {
    if (!f.is_object() || !f.contains("path") || !f["path"].is_string() || !f.contains("size") ||
        !f["size"].is_number_unsigned()) {
      return Status::DataLoss("the copy's marker lists a malformed file");
    }
    Marker::File file{f["path"].get<std::string>(), f["size"].get<uint64_t>()};
    MX_RETURN_IF_ERROR(
        CheckRelativePath(file.path, "marker path").WithContext("the copy's marker"));
    m.files.push_back(std::move(file));
  }
  return m;
}

// The files of the copy in `dir` that a request wants, each checked on disk.
Result<std::vector<LocalFile>> CheckCopy(const std::string& dir, const Marker& marker,
                                         bool ignore_weights, const std::string& name) {
  std::error_code ec;
  fs::path root = fs::weakly_canonical(dir, ec);
  if (ec) return Status::IoError("cannot resolve the copy of " + name + ": " + ec.message());
  std::string root_prefix = root.string() + "/";
  std::vector<LocalFile> out;
  for (const auto& f : marker.files) {
    if (ignore_weights && IsWeightFile(f.path)) continue;
    fs::path real = fs::weakly_canonical(fs::path(dir) / f.path, ec);
    struct stat st;
    if (ec || real.string().rfind(root_prefix, 0) != 0 || ::lstat(real.c_str(), &st) != 0 ||
        !S_ISREG(st.st_mode) || static_cast<uint64_t>(st.st_size) != f.size) {
      return Status::NotFound("the copy of " + name + " is incomplete (" + Printable(f.path) +
                              "); call EnsureModelDownloaded again");
    }
    out.push_back({f.path, real.string(), f.size});
  }
  std::sort(out.begin(), out.end(), [](const LocalFile& a, const LocalFile& b) {
    return a.relative_path < b.relative_path;
  });
  return out;
}

// Copies one object into `path` (created exclusively), verifying its size and, when the
// ETag is its MD5 and verify_etag holds, its content. Counts the bytes read into *fetched.
Status CopyObject(storage::Storage* store, const Wanted& w, const std::string& path,
                  const ObjectCopyOptions& o, std::atomic<bool>* failed,
                  std::atomic<uint64_t>* fetched, std::atomic<uint64_t>* size_only) {
  MX_RETURN_IF_ERROR(MakeDirs(DirName(path)));
  MX_ASSIGN_OR_RETURN(auto reader, store->Open(w.info));
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, DefaultFileMode());
  if (fd < 0) return Status::FromErrno(errno, "creating " + w.rel);
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  Digest md5(EVP_md5());
  std::string buf;
  for (uint64_t off = 0; off < w.info.size;) {
    if ((o.cancel && *o.cancel) || *failed) return Status::Cancelled("copy cancelled");
    uint64_t len = std::min(kReadChunk, w.info.size - off);
    buf.resize(len);
    MX_RETURN_IF_ERROR(reader->ReadAt(off, len, buf.data()));
    md5.Update(buf.data(), len);
    for (size_t done = 0; done < len;) {
      ssize_t n = ::write(fd, buf.data() + done, len - done);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return Status::FromErrno(errno, "writing " + w.rel);
      done += static_cast<size_t>(n);
    }
    off += len;
    *fetched += len;
  }
  // Size: ReadAt returns exactly the listed bytes; a file that did not end up that long
  // (a full disk that wrote short) is caught here.
  struct stat st = {};
  if (::fstat(fd, &st) != 0 || static_cast<uint64_t>(st.st_size) != w.info.size) {
    return Status::DataLoss(w.info.uri + ": copied " + std::to_string(st.st_size) +
                            " bytes, the listing says " + std::to_string(w.info.size));
  }
  std::string got = md5.FinalHex();
  if (o.verify_etag && IsMd5Etag(w.info.etag)) {
    std::string want = w.info.etag;
    std::transform(want.begin(), want.end(), want.begin(), ::tolower);
    if (got != want) {
      return Status::DataLoss(w.info.uri + ": content MD5 " + got + " does not match its ETag " +
                              want +
                              " (corrupted in transit, or the object is encrypted with SSE-KMS/"
                              "SSE-C or CMEK, whose ETags are not MD5s: then set "
                              "MX_VERIFY_ETAG=0 on the server)");
    }
  } else {
    ++*size_only;
  }
  if (::fsync(fd) != 0) return Status::FromErrno(errno, "fsync " + w.rel);
  return Status::OK();
}

void RemoveQuietly(const std::string& path) {
  std::error_code ec;
  fs::remove_all(path, ec);
  if (ec) spdlog::warn("removing {}: {}", path, ec.message());
}

// Staging, old and deleting directories (".staging-<owner>", ...) of a server on this host
// that died mid-copy: removed before the next copy under the same root.
void RemoveOrphans(const std::string& root) {
  std::error_code ec;
  for (fs::directory_iterator it(root, ec), end; !ec && it != end; it.increment(ec)) {
    std::string name = it->path().filename().string();
    bool ours = name.rfind(".staging-", 0) == 0 || name.rfind(".old-", 0) == 0 ||
                name.rfind(".deleting-", 0) == 0;
    if (!ours) continue;
    auto owner = ParseTempOwner(std::string_view(name).substr(name.find('-') + 1));
    if (owner && TempOwnerIsDead(*owner)) {
      spdlog::info("removing {}, left by a server that died", it->path().string());
      RemoveQuietly(it->path().string());
    }
  }
}

}  // namespace

bool IsObjectModel(int provider, std::string_view name) {
  if (provider == kS3 || provider == kGcs) return true;
  return provider == kHuggingFace && !SchemeOf(DropLeadingSpaces(name)).empty();
}

Result<ObjectModelName> ParseObjectModelName(int provider, std::string_view raw) {
  std::string_view name = DropLeadingSpaces(raw);
  std::string scheme = SchemeOf(name);
  if (provider == kHuggingFace && !scheme.empty()) provider = scheme == "gs" ? kGcs : kS3;
  if (provider != kS3 && provider != kGcs)
    return Status::InvalidArgument("not an S3 or GCS model name");
  ObjectModelName out;
  out.provider = static_cast<Provider>(provider);
  const std::string want = out.scheme();
  const std::string label = provider == kGcs ? "GCS" : "S3";
  if (scheme != want) {
    return Status::InvalidArgument(label + " model name must be a full " + want +
                                   "://<bucket>/<path> URL, got '" + Printable(raw) + "'");
  }
  name.remove_prefix(5);
  if (name.size() > kMaxBucketBytes + 1 + kMaxPrefixBytes + 64)
    return Status::InvalidArgument(label + " model name is too long");
  size_t slash = name.find('/');
  if (slash == std::string_view::npos)
    return Status::InvalidArgument(label + " model URL must include bucket and object path");
  std::string_view bucket = name.substr(0, slash);
  std::string_view prefix = name.substr(slash + 1);
  while (!prefix.empty() && prefix.back() == '/') prefix.remove_suffix(1);
  if (!ValidBucket(bucket)) {
    return Status::InvalidArgument(label + " bucket '" + Printable(bucket) +
                                   "' must be one segment of letters, digits, '.', '-' or '_'");
  }
  if (prefix.empty()) return Status::InvalidArgument(label + " model path must not be empty");
  if (prefix.size() > kMaxPrefixBytes)
    return Status::InvalidArgument(label + " model path is longer than 1024 bytes");
  MX_RETURN_IF_ERROR(CheckRelativePath(prefix, label + " model path"));
  out.bucket = std::string(bucket);
  out.prefix = std::string(prefix);
  return out;
}

Result<ObjectCopyReport> CopyObjectModel(const ObjectModelName& model, const ObjectCopyOptions& o) {
  const std::string uri = model.canonical();
  storage::StorageOptions so;
  so.connections = std::max(4, o.workers * 2);
  MX_ASSIGN_OR_RETURN(auto store, storage::OpenStorage(uri, so));
  MX_ASSIGN_OR_RETURN(std::vector<storage::ObjectInfo> listed, store->List(uri));
  if (listed.size() == 1 && listed[0].uri == uri) {
    return Status::InvalidArgument(uri + " names one object, not a prefix: name the folder");
  }
  if (listed.size() > kMaxObjects) {
    return Status::ResourceExhausted(uri + " holds more than " + std::to_string(kMaxObjects) +
                                     " objects");
  }
  std::vector<Wanted> all;
  for (auto& info : listed) {
    Wanted w{info, info.name};
    if (Status st = CheckRelativePath(w.rel, "listed key"); !st.ok()) {
      return Status::DataLoss(uri + ": " + st.message());
    }
    if (w.rel == kObjectModelMarker) {
      spdlog::warn("{}: skipping the object {} (the name of the copy's marker)", uri, w.rel);
      continue;
    }
    all.push_back(std::move(w));
  }
  std::sort(all.begin(), all.end(), [](const Wanted& a, const Wanted& b) { return a.rel < b.rel; });
  ObjectCopyReport report;
  report.commit = ListingCommit(all);
  std::vector<Wanted> wanted;
  for (const auto& w : all) {
    if (o.ignore_weights && IsWeightFile(w.rel)) continue;
    wanted.push_back(w);
    report.bytes += w.info.size;
  }
  report.files = wanted.size();
  if (wanted.empty()) return Status::NotFound("no files to copy under " + uri);

  const std::string root = o.cache_dir + "/" + (model.provider == kGcs ? "gcs" : "s3");
  const std::string final_dir = o.cache_dir + "/" + model.cache_subdir();
  // Same listing already copied (with the weights, when this request wants them): keep it.
  if (auto m = ReadMarker(final_dir); m.ok() && m->commit == report.commit &&
                                      (o.ignore_weights || !m->ignore_weights) &&
                                      CheckCopy(final_dir, *m, o.ignore_weights, uri).ok()) {
    return report;
  }

  // Staging beside the buckets: a name no bucket can have (buckets start alphanumeric).
  RemoveOrphans(root);
  const std::string suffix = UniqueTempSuffix();
  const std::string stage = root + "/.staging-" + suffix;
  MX_RETURN_IF_ERROR(MakeDirs(stage));
  std::atomic<bool> failed{false};
  std::atomic<uint64_t> fetched{0}, size_only{0};
  std::atomic<size_t> next{0};
  std::mutex mu;
  Status first_error;
  auto work = [&] {
    for (size_t i = next++; i < wanted.size() && !failed; i = next++) {
      Status st = CopyObject(store.get(), wanted[i], stage + "/" + wanted[i].rel, o, &failed,
                             &fetched, &size_only);
      if (!st.ok()) {
        std::lock_guard<std::mutex> l(mu);
        // The first real error wins over the Cancelled it causes in the others.
        if (first_error.ok()) first_error = st;
        failed = true;
      }
    }
  };
  std::vector<std::thread> threads;
  int n = std::max(1, std::min<int>(o.workers, static_cast<int>(wanted.size())));
  for (int t = 0; t < n; ++t) threads.emplace_back(work);
  for (auto& t : threads) t.join();
  report.bytes_fetched = fetched;
  report.size_only = size_only;
  auto fail = [&](Status st) {
    RemoveQuietly(stage);
    ::rmdir(root.c_str());  // only when nothing else is there
    return st;
  };
  if (!first_error.ok()) return fail(first_error);

  json marker = {{"name", uri},
                 {"commit", report.commit},
                 {"ignore_weights", o.ignore_weights},
                 {"files", json::array()}};
  for (const auto& w : wanted) {
    marker["files"].push_back({{"path", w.rel}, {"size", w.info.size}, {"etag", w.info.etag}});
  }
  if (Status st = WriteFileAtomic(stage + "/" + kObjectModelMarker, marker.dump()); !st.ok())
    return fail(st);

  // Into place: an older copy moves aside first and goes once the new one is there.
  if (Status st = MakeDirs(DirName(final_dir)); !st.ok()) return fail(st);
  const std::string old = root + "/.old-" + suffix;
  bool had_old = ::rename(final_dir.c_str(), old.c_str()) == 0;
  if (!had_old && errno != ENOENT) return fail(Status::FromErrno(errno, "moving the old copy"));
  if (::rename(stage.c_str(), final_dir.c_str()) != 0) {
    Status st = Status::FromErrno(errno, "installing the copy of " + uri);
    if (had_old) ::rename(old.c_str(), final_dir.c_str());
    return fail(st);
  }
  if (had_old) RemoveQuietly(old);
  if (report.size_only > 0) {
    spdlog::info("{}: {} object(s) verified by size only (multipart ETag, or ETag checks off)", uri,
                 report.size_only);
  }
  return report;
}

Result<LocalSnapshot> ObjectModelSnapshot(const std::string& cache_dir,
                                          const ObjectModelName& model,
                                          const std::optional<std::string>& revision,
                                          bool ignore_weights) {
  const std::string uri = model.canonical();
  const std::string dir = cache_dir + "/" + model.cache_subdir();
  auto marker = ReadMarker(dir);
  if (!marker.ok()) {
    if (marker.status().code() != StatusCode::kNotFound)
      spdlog::warn("{}: {}", uri, marker.status().message());
    return Status::NotFound(uri +
                            " is not in the server's cache; call EnsureModelDownloaded first");
  }
  if (!ignore_weights && marker->ignore_weights) {
    return Status::NotFound("only the metadata of " + uri +
                            " is in the server's cache; call EnsureModelDownloaded first");
  }
  if (revision && !revision->empty() && *revision != "main" && *revision != marker->commit) {
    return Status::NotFound("the server's copy of " + uri + " is " + marker->commit + ", not " +
                            Printable(*revision));
  }
  LocalSnapshot snap;
  snap.commit = marker->commit;
  snap.dir = dir;
  MX_ASSIGN_OR_RETURN(snap.files, CheckCopy(dir, *marker, ignore_weights, uri));
  return snap;
}

Status RemoveObjectModel(const std::string& cache_dir, const ObjectModelName& model) {
  const std::string dir = cache_dir + "/" + model.cache_subdir();
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(dir, ec))) {
    return Status::NotFound(model.canonical() + " is not in the server's cache");
  }
  // Moved aside first, so no reader ever sees half a directory under the model's name.
  const std::string root = cache_dir + "/" + (model.provider == kGcs ? "gcs" : "s3");
  const std::string gone = root + "/.deleting-" + UniqueTempSuffix();
  if (::rename(dir.c_str(), gone.c_str()) != 0) return Status::FromErrno(errno, "removing " + dir);
  fs::remove_all(gone, ec);
  if (ec) return Status::IoError("removing " + model.canonical() + ": " + ec.message());
  return Status::OK();
}

}  // namespace mx::server
