#include "server/model_manager.h"

#include <fnmatch.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <thread>

#include "common/env.h"
#include "common/fs.h"
#include "common/log.h"
#include "hub/cache.h"
#include "hub/cache_admin.h"
#include "hub/downloader.h"
#include "server/object_models.h"

namespace mx::server {

namespace fs = std::filesystem;
using registry::ModelKey;
using registry::ModelRecord;
using registry::ModelState;

namespace {

const std::vector<std::string> kWeightPatterns = {
    "*.safetensors", "*.bin", "*.pt", "*.pth", "*.h5", "*.msgpack", "*.ckpt*", "*.gguf"};

std::string NewClaimId() { return UniqueTempSuffix(); }

template <typename F>
auto Timed(Metrics* m, F&& f) {
  auto start = std::chrono::steady_clock::now();
  auto result = f();
  m->ObserveRegistryOp(static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(
                                                 std::chrono::steady_clock::now() - start)
                                                 .count()));
  return result;
}

}  // namespace

namespace {

void ReplaceAll(std::string* text, const std::string& from, const std::string& to) {
  if (from.empty()) return;
  for (size_t p = text->find(from); p != std::string::npos; p = text->find(from, p + to.size())) {
    text->replace(p, from.size(), to);
  }
}

// Replaces absolute local paths ("/var/cache/x", "'/etc/y'") by "<path>": a '/' that
// starts a word and is followed by a path character. URLs ("https://h/p") and repo ids
// ("org/name") have no '/' at the start of a word.
std::string RedactAbsolutePaths(const std::string& msg) {
  std::string out;
  out.reserve(msg.size());
  for (size_t i = 0; i < msg.size();) {
    char prev = i == 0 ? ' ' : msg[i - 1];
    bool word_start = prev == ' ' || prev == '\'' || prev == '"' || prev == '(' || prev == '=' ||
                      prev == '[' || prev == '<' || prev == '\t';
    bool path_char_next = i + 1 < msg.size() && msg[i + 1] != ' ' && msg[i + 1] != '/' &&
                          msg[i + 1] != '\'' && msg[i + 1] != '"';
    if (msg[i] == '/' && word_start && path_char_next) {
      size_t end = i;
      while (end < msg.size() && msg[end] != ' ' && msg[end] != '\'' && msg[end] != '"' &&
             msg[end] != ')' && msg[end] != ']' && msg[end] != ',' && msg[end] != ';' &&
             !(msg[end] == ':' && (end + 1 == msg.size() || msg[end + 1] == ' '))) {
        ++end;
      }
      out += "<path>";
      i = end;
      continue;
    }
    out += msg[i++];
  }
  return out;
}

bool Mentions(const std::string& text, std::initializer_list<const char*> words) {
  for (const char* w : words) {
    if (text.find(w) != std::string::npos) return true;
  }
  return false;
}

}  // namespace

std::string SafeMessage(std::string msg, const std::string& cache_dir) {
  std::string dir = cache_dir;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  std::error_code ec;
  std::string real = fs::weakly_canonical(dir, ec).string();
  if (!ec && real.size() > 1) ReplaceAll(&msg, real, "<cache>");
  if (dir.size() > 1) ReplaceAll(&msg, dir, "<cache>");
  msg = RedactAbsolutePaths(msg);
  if (msg.size() > kMaxErrorBytes) msg = msg.substr(0, kMaxErrorBytes) + "...";
  for (char& c : msg) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
  }
  return msg;
}

std::string CallerMessage(StatusCode code, const std::string& message,
                          const std::string& cache_dir) {
  // Advice only whoever runs the server can follow is replaced, where it stood, by what is
  // true from the caller's side (each replacement at most once).
  const auto token_words = {"HF_TOKEN", "--token", "token was refused"};
  const auto offline_words = {"HF_HUB_OFFLINE", "download it first"};
  const std::string token_text =
      code == StatusCode::kNotFound
          ? "or it is private and the server's HF token cannot read it"
          : "the server's HF token cannot read this repo, or none is configured";
  const std::string offline_text = "the server is offline and does not have this in its cache";
  bool said_token = false, said_offline = false;
  auto replacement = [&](const std::string& text, bool in_parens) -> std::optional<std::string> {
    if (Mentions(text, token_words)) {
      if (said_token) return "";
      said_token = true;
      return in_parens ? "(" + token_text + ")" : token_text;
    }
    if (Mentions(text, offline_words)) {
      if (said_offline || in_parens) return "";
      said_offline = true;
      return offline_text;
    }
    return std::nullopt;
  };
  std::string out;
  for (size_t start = 0; start <= message.size();) {
    size_t end = message.find("; ", start);
    if (end == std::string::npos) end = message.size();
    std::string part = message.substr(start, end - start);
    start = end + 2;
    // Parenthesized advice first: "HTTP 401 (access refused: set HF_TOKEN or --token)".
    std::string kept;
    for (size_t i = 0; i < part.size();) {
      size_t close = part[i] == '(' ? part.find(')', i) : std::string::npos;
      if (close != std::string::npos) {
        if (auto r = replacement(part.substr(i, close + 1 - i), true)) {
          if (r->empty()) {
            while (!kept.empty() && kept.back() == ' ') kept.pop_back();
          } else {
            kept += *r;
          }
          i = close + 1;
          continue;
        }
      }
      kept += part[i++];
    }
    // Then advice that is a whole clause: "this repo needs authentication: set HF_TOKEN".
    if (auto r = replacement(kept, false)) kept = *r;
    if (!kept.empty()) out += (out.empty() ? "" : "; ") + kept;
  }
  // An upstream refusal in words this function does not know still gets the caller's view.
  if (!said_token &&
      (code == StatusCode::kUnauthenticated || code == StatusCode::kPermissionDenied) &&
      Mentions(out, {"HTTP 401", "HTTP 403", "GatedRepo"})) {
    out += "; " + token_text;
  }
  return SafeMessage(out, cache_dir);
}

bool IsWeightFile(const std::string& path) {
  for (const auto& p : kWeightPatterns) {
    if (::fnmatch(p.c_str(), path.c_str(), 0) == 0) return true;
  }
  return false;
}

ModelManager::ModelManager(const ServerConfig& config, registry::MetadataStore* store,
                           Metrics* metrics)
    : config_(config), store_(store), metrics_(metrics) {}

Result<std::string> ModelManager::CopyObjects(const ModelKey& key, uint64_t* bytes) {
  MX_ASSIGN_OR_RETURN(ObjectModelName name, ParseObjectModelName(key.provider, key.name));
  ObjectCopyOptions o;
  o.cache_dir = config_.hub.cache_dir;
  o.ignore_weights = key.ignore_weights;
  o.workers = config_.download_workers > 0 ? config_.download_workers : 16;
  o.cancel = &cancel_downloads_;
  // SSE-KMS / SSE-C (S3) and CMEK (GCS) objects have ETags that are not MD5s.
  auto verify = GetEnv("MX_VERIFY_ETAG");
  o.verify_etag = !verify || verify->empty() || IsTruthy(*verify);
  MX_ASSIGN_OR_RETURN(ObjectCopyReport report, CopyObjectModel(name, o));
  metrics_->bytes_from_upstream += report.bytes_fetched;
  *bytes = report.bytes;
  LogEvent(spdlog::level::info, "copy done",
           {{"model", key.name},
            {"commit", report.commit},
            {"files", report.files},
            {"bytes", report.bytes},
            {"fetched_bytes", report.bytes_fetched},
            {"size_only_checked", report.size_only}});
  return report.commit;
}

Result<std::string> ModelManager::Download(const ModelKey& key, uint64_t* bytes) {
  if (key.provider == kS3 || key.provider == kGcs) return CopyObjects(key, bytes);
  hub::HubClient client(config_.hub, hub::RepoType::kModel);
  hub::DownloadOptions o;
  o.repo_id = key.name;
  o.revision = key.revision.empty() ? "main" : key.revision;
  o.max_workers = config_.download_workers;
  o.cancel = &cancel_downloads_;
  if (key.ignore_weights) o.exclude = kWeightPatterns;
  MX_ASSIGN_OR_RETURN(hub::DownloadReport report, hub::Download(client, o));
  metrics_->bytes_from_upstream += report.bytes_fetched;
  *bytes = report.bytes;
  LogEvent(spdlog::level::info, "download done",
           {{"model", key.name},
            {"commit", report.commit},
            {"files", report.files},
            {"bytes", report.bytes},
            {"fetched_bytes", report.bytes_fetched},
            {"duration_s", report.seconds}});
  return report.commit;
}

Status ModelManager::RunClaimed(const ModelKey& key, const std::string& claim_id,
                                const std::function<void(const StatusUpdate&)>& send) {
  // Renew the lease while we work, so other replicas know we are alive.
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  std::thread renewer([&] {
    std::unique_lock<std::mutex> l(mu);
    while (
        !cv.wait_for(l, std::chrono::milliseconds(config_.lease_renew_ms), [&] { return done; })) {
      Status st =
          Timed(metrics_, [&] { return store_->RenewLease(key, claim_id, config_.lease_ms); });
      if (!st.ok()) spdlog::warn("lease renewal for {}: {}", key.name, st.message());
    }
  });
  ++metrics_->downloads_in_flight;
  uint64_t bytes = 0;
  auto commit = Download(key, &bytes);
  --metrics_->downloads_in_flight;
  {
    std::lock_guard<std::mutex> l(mu);
    done = true;
  }
  cv.notify_all();
  renewer.join();
  StatusUpdate final;
  if (commit.status().code() == StatusCode::kCancelled && cancel_downloads_) {
    // Shutdown: hand the claim back (its lease ends now) instead of recording an error,
    // so a waiter on another replica takes over at once and resumes the temp files.
    Status st = Timed(metrics_, [&] { return store_->RenewLease(key, claim_id, -1); });
    if (!st.ok()) spdlog::warn("handing back the claim on {}: {}", key.name, st.message());
    spdlog::info("download of {} interrupted by shutdown; partial files kept", key.name);
    final.state = ModelState::kError;
    final.message = "download interrupted: the server is shutting down (partial files are kept)";
    send(final);
    return Status::Unavailable("the server is shutting down; retry on another replica");
  }
  if (commit.ok()) {
    ++metrics_->downloads_done;
    final.state = ModelState::kDownloaded;
    final.resolved_revision = *commit;
    final.message = "model downloaded";
  } else {
    ++metrics_->downloads_failed;
    final.state = ModelState::kError;
    final.message = commit.status().message();
    LogEvent(spdlog::level::err, "download failed",
             {{"model", key.name}, {"error", final.message}});
  }
  Status st = Timed(metrics_, [&] {
    return store_->Finish(key, claim_id, final.state, final.message, final.resolved_revision,
                          bytes);
  });
  if (!st.ok()) spdlog::warn("recording the outcome for {}: {}", key.name, st.message());
  send(final);
  if (commit.ok()) {
    EvictIfNeeded();
    RefreshCacheGauges();
  }
  return Status::OK();
}

Status ModelManager::Ensure(const ModelKey& requested,
                            const std::function<void(const StatusUpdate&)>& send,
                            const std::function<bool()>& cancelled) {
  if (requested.provider == kNgc) {
    return Status::Unimplemented(
        "the NGC provider is not supported by this server (use HUGGING_FACE, S3 or GCS)");
  }
  ModelKey key = requested;
  if (IsObjectModel(key.provider, key.name)) {
    // One key per object model however it was spelled ("S3://b/p/", provider S3 or the
    // default), so equal requests share one claim.
    MX_ASSIGN_OR_RETURN(ObjectModelName name, ParseObjectModelName(key.provider, key.name));
    if (!key.revision.empty() && key.revision != "main") {
      return Status::InvalidArgument(
          "S3/GCS models have no revisions: leave the revision empty (the copy's id comes back "
          "as resolved_revision)");
    }
    key = ModelKey{name.provider, name.canonical(), "", key.ignore_weights};
  } else {
    if (key.provider != kHuggingFace) return Status::InvalidArgument("unknown provider");
    MX_RETURN_IF_ERROR(hub::ValidateRepoId(key.name));
    // Before the key reaches the registry or a path (every entry, gRPC and mirror alike).
    if (!key.revision.empty()) MX_RETURN_IF_ERROR(hub::ValidateRevision(key.revision));
  }
  std::string claim_id = NewClaimId();
  bool sent_initial = false;
  auto initial = [&](const StatusUpdate& u) {
    if (!sent_initial) send(u);
    sent_initial = true;
  };
  auto shutting_down = [this] {
    return cancel_downloads_ ? Status::Unavailable("the server is shutting down") : Status::OK();
  };
  // Sleeps `ms` in short steps; false when the call was cancelled or the server stops.
  auto wait = [&](int ms) {
    for (int waited = 0; waited < ms; waited += 50) {
      if (cancel_downloads_ || (cancelled && cancelled())) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return !cancel_downloads_ && !(cancelled && cancelled());
  };
  for (;;) {
    MX_RETURN_IF_ERROR(shutting_down());
    auto claim =
        Timed(metrics_, [&] { return store_->TryClaim(key, claim_id, config_.lease_ms, true); });
    if (!claim.ok()) return claim.status();
    if (claim->won) {
      StatusUpdate u;
      u.message = claim->previous == ModelState::kError ? "previous download failed, retrying"
                  : claim->previous == ModelState::kDownloading
                      ? "taking over an abandoned download"
                      : "download started";
      initial(u);
      return RunClaimed(key, claim_id, send);
    }
    const ModelRecord& rec = claim->record;
    if (rec.state == ModelState::kDownloaded) {
      // The registry may outlive the files (a wiped volume): check before answering.
      if (Snapshot(key.provider, key.name,
                   key.revision.empty() ? std::nullopt : std::optional(key.revision),
                   key.ignore_weights)
              .ok()) {
        StatusUpdate u{ModelState::kDownloaded, "model already downloaded", rec.resolved_revision};
        initial(u);
        send(u);
        (void)store_->TouchModel(key);
        return Status::OK();
      }
      spdlog::warn("{} is registered as downloaded but missing from the cache; downloading again",
                   key.name);
      (void)store_->DeleteModel(key);
      continue;
    }
    initial({ModelState::kDownloading, "download in progress", ""});
    // Wait for the owner's outcome; take over if its lease runs out.
    for (;;) {
      if (!wait(200)) {
        MX_RETURN_IF_ERROR(shutting_down());
        // This caller left; the download goes on for the others.
        return Status::Cancelled("call cancelled while waiting for the download");
      }
      auto now = Timed(metrics_, [&] { return store_->GetModel(key); });
      if (!now.ok()) return now.status();
      if (!*now) break;  // deleted meanwhile: claim again
      const ModelRecord& r = **now;
      if (r.state == ModelState::kDownloading && r.claim_id == rec.claim_id &&
          r.lease_expiry_ms >= registry::NowMs()) {
        continue;
      }
      if (r.state == ModelState::kDownloaded ||
          (r.state == ModelState::kError && r.claim_id == rec.claim_id)) {
        send({r.state, r.state == ModelState::kDownloaded ? "model downloaded" : r.message,
              r.resolved_revision});
        return Status::OK();
      }
      break;  // lease expired or a new claim: go around and claim
    }
  }
}

Result<LocalSnapshot> ModelManager::Snapshot(int provider, const std::string& model,
                                             const std::optional<std::string>& revision,
                                             bool ignore_weights) const {
  if (provider == kNgc) {
    return Status::Unimplemented("the NGC provider is not supported by this server");
  }
  if (IsObjectModel(provider, model)) {
    MX_ASSIGN_OR_RETURN(ObjectModelName name, ParseObjectModelName(provider, model));
    return ObjectModelSnapshot(config_.hub.cache_dir, name, revision, ignore_weights);
  }
  MX_RETURN_IF_ERROR(hub::ValidateRepoId(model));
  hub::RepoCache cache(config_.hub.cache_dir, hub::RepoType::kModel, model);
  MX_ASSIGN_OR_RETURN(std::string commit, cache.ResolveLocal(revision.value_or("main")));
  LocalSnapshot snap;
  snap.commit = commit;
  snap.dir = cache.snapshot_dir(commit);
  // error_code overloads only: EACCES, ELOOP and friends become a Status, never an
  // exception escaping into a gRPC or mirror handler.
  std::error_code ec;
  if (!fs::is_directory(snap.dir, ec)) {
    return Status::NotFound(model +
                            " is not in the server's cache; call EnsureModelDownloaded first");
  }
  fs::path root = fs::weakly_canonical(config_.hub.cache_dir, ec);
  if (ec) return Status::IoError("cannot resolve the cache directory: " + ec.message());
  std::string root_prefix = root.string() + "/";
  fs::recursive_directory_iterator it(snap.dir, ec);
  for (; !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    std::error_code entry_ec;
    if (it->is_directory(entry_ec) && !it->is_symlink(entry_ec)) continue;
    std::string rel = it->path().lexically_relative(snap.dir).string();
    if (ignore_weights && IsWeightFile(rel)) continue;
    fs::path real = fs::weakly_canonical(it->path(), entry_ec);
    if (entry_ec || real.string().rfind(root_prefix, 0) != 0) {
      spdlog::warn("refusing {}: it does not resolve inside the cache", rel);
      continue;
    }
    struct stat st;
    if (::stat(real.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
    snap.files.push_back({rel, real.string(), static_cast<uint64_t>(st.st_size)});
  }
  // A listing cut short by an error is not a snapshot: the caller would serve part of it.
  if (ec) return Status::IoError("listing the snapshot of " + model + ": " + ec.message());
  std::sort(snap.files.begin(), snap.files.end(), [](const LocalFile& a, const LocalFile& b) {
    return a.relative_path < b.relative_path;
  });
  return snap;
}

Status ModelManager::Delete(int provider, const std::string& model) {
  if (provider == kNgc) {
    return Status::Unimplemented("the NGC provider is not supported by this server");
  }
  if (!IsObjectModel(provider, model)) return Delete(model);
  MX_ASSIGN_OR_RETURN(ObjectModelName name, ParseObjectModelName(provider, model));
  const std::string canonical = name.canonical();
  {
    std::lock_guard<std::mutex> l(pin_mu_);
    if (pins_.count(canonical)) {
      return Status::FailedPrecondition(canonical +
                                        " is being streamed; delete it when no client reads it");
    }
  }
  Status removed = RemoveObjectModel(config_.hub.cache_dir, name);
  if (!removed.ok() && removed.code() != StatusCode::kNotFound) return removed;
  auto records = store_->ListModels();
  if (records.ok()) {
    for (const auto& r : *records) {
      if (r.key.name == canonical) (void)store_->DeleteModel(r.key);
    }
  }
  return removed;
}

std::string ModelManager::PinName(const std::string& model) {
  if (!IsObjectModel(kHuggingFace, model)) return model;
  auto name = ParseObjectModelName(kHuggingFace, model);
  return name.ok() ? name->canonical() : model;
}

Status ModelManager::Delete(const std::string& model) {
  MX_RETURN_IF_ERROR(hub::ValidateRepoId(model));
  {
    std::lock_guard<std::mutex> l(pin_mu_);
    if (pins_.count(model)) {
      return Status::FailedPrecondition(model +
                                        " is being streamed; delete it when no client "
                                        "reads it");
    }
  }
  // Files first, under the repo lock: when a stream or download (on any replica) uses the
  // model this fails and the registry keeps its record.
  auto removed =
      hub::RemoveFromCache(config_.hub.cache_dir, hub::RepoType::kModel, model, std::nullopt);
  if (!removed.ok() && removed.status().code() != StatusCode::kNotFound) {
    return removed.status();
  }
  auto records = store_->ListModels();
  if (records.ok()) {
    for (const auto& r : *records) {
      if (r.key.name == model) (void)store_->DeleteModel(r.key);
    }
  }
  RefreshCacheGauges();
  return removed.ok() ? Status::OK() : removed.status();
}

void ModelManager::Pin(const std::string& requested) {
  const std::string model = PinName(requested);
  std::lock_guard<std::mutex> l(pin_mu_);
  PinState& pin = pins_[model];
  if (pin.count++ > 0) return;
  if (!hub::ValidateRepoId(model).ok()) return;
  hub::RepoCache cache(config_.hub.cache_dir, hub::RepoType::kModel, model);
  // Short wait: a cleaner holding it exclusively is removing the files anyway.
  auto lock = cache.LockForUse(2000);
  if (lock.ok()) {
    pin.repo_lock = std::move(*lock);
  } else {
    spdlog::warn("pinning {}: {}; other replicas may remove it while it is streamed", model,
                 lock.status().message());
  }
}

void ModelManager::Unpin(const std::string& requested) {
  const std::string model = PinName(requested);
  std::lock_guard<std::mutex> l(pin_mu_);
  auto it = pins_.find(model);
  if (it == pins_.end()) return;
  if (--it->second.count <= 0) pins_.erase(it);  // releases the repo lock
}

void ModelManager::RefreshCacheGauges() {
  auto repos = hub::ScanCache(config_.hub.cache_dir);
  if (!repos.ok()) return;
  uint64_t bytes = 0;
  for (const auto& r : *repos) bytes += r.size_on_disk;
  metrics_->cache_bytes = bytes;
  metrics_->cache_models = repos->size();
}

int ModelManager::EvictIfNeeded() {
  if (config_.max_models <= 0 && config_.max_bytes == 0 && config_.unused_after_s <= 0) return 0;
  auto repos = hub::ScanCache(config_.hub.cache_dir);
  auto records = store_->ListModels();
  if (!repos.ok() || !records.ok()) return 0;
  struct Candidate {
    std::string name;
    uint64_t bytes;
    int64_t last_used;
    bool busy;
  };
  std::vector<Candidate> models;
  uint64_t total = 0;
  for (const auto& r : *repos) {
    if (r.type != hub::RepoType::kModel) continue;
    Candidate c{r.repo_id, r.size_on_disk, static_cast<int64_t>(r.last_modified) * 1000, false};
    for (const auto& rec : *records) {
      if (rec.key.name != r.repo_id) continue;
      c.last_used = std::max(c.last_used, rec.last_used_ms);
      if (rec.state == ModelState::kDownloading) c.busy = true;
    }
    {
      std::lock_guard<std::mutex> l(pin_mu_);
      if (pins_.count(r.repo_id)) c.busy = true;
    }
    total += c.bytes;
    models.push_back(c);
  }
  std::sort(models.begin(), models.end(),
            [](const Candidate& a, const Candidate& b) { return a.last_used < b.last_used; });
  int evicted = 0;
  int64_t now = registry::NowMs();
  size_t count = models.size();
  for (const auto& c : models) {
    bool too_many = config_.max_models > 0 && count > static_cast<size_t>(config_.max_models);
    bool too_big = config_.max_bytes > 0 && total > config_.max_bytes;
    bool too_old = config_.unused_after_s > 0 && now - c.last_used > config_.unused_after_s * 1000;
    if (!too_many && !too_big && !too_old) continue;
    if (c.busy) continue;  // never evict what is being downloaded or streamed
    if (Delete(c.name).ok()) {
      spdlog::info("evicted {} ({} bytes, unused for {}s)", c.name, c.bytes,
                   (now - c.last_used) / 1000);
      ++metrics_->evictions;
      ++evicted;
      total -= std::min(total, c.bytes);
      --count;
    }
  }
  return evicted;
}

}  // namespace mx::server
