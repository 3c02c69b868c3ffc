// `mx health`, `mx model ...`, `mx api send`: thin wrappers around mx::client.
#include <malloc.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>

#include "cli/model_commands.h"
#include "cli/progress.h"
#include "client/client.h"
#include "client/fetch.h"
#include "client/loader_chain.h"
#include "common/env.h"
#include "common/fs.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/text.h"
#include "hub/cache_admin.h"
#include "streamer/streamer.h"
#include "transfer/p2p.h"

namespace mx::cli {

namespace {

using nlohmann::json;

// modelexpress-cli's shared options.
struct WorkerFlags {
  std::string endpoint;
  double timeout_s = 30;
  std::string format = "human";
  std::string cache_path;
  bool no_shared_storage = false;
  std::string chunk_size;
  std::string tls_ca;
  bool quiet = false;
  int verbose = 0;

  bool json_out() const { return format != "human"; }
  int indent() const { return format == "json-pretty" ? 2 : -1; }
  int timeout_ms() const { return static_cast<int>(timeout_s * 1000); }
};

void AddWorkerFlags(CLI::App* cmd, WorkerFlags* f) {
  cmd->add_option("-e,--endpoint", f->endpoint,
                  "mx-server address: HOST:PORT, http://HOST:PORT or https://HOST:PORT "
                  "(default: $MODEL_EXPRESS_URL, $MODEL_EXPRESS_ENDPOINT, localhost:8001)");
  cmd->add_option("-t,--timeout", f->timeout_s, "Seconds for each unary call (default 30)")
      ->check(CLI::Range(0.1, 86400.0));
  cmd->add_option("-f,--format", f->format, "Output: human, json or json-pretty")
      ->check(CLI::IsMember({"human", "json", "json-pretty"}));
  cmd->add_option("--cache-path", f->cache_path,
                  "Local cache root (default: $MODEL_EXPRESS_CACHE_DIRECTORY, $HF_HUB_CACHE, "
                  "$HF_HOME/hub)");
  cmd->add_flag("--no-shared-storage", f->no_shared_storage,
                "Stream the files from the server into the local cache (also "
                "MODEL_EXPRESS_NO_SHARED_STORAGE=1)");
  cmd->add_option(
      "--transfer-chunk-size", f->chunk_size,
      "Stream chunk size, e.g. 4MiB (default: $MODEL_EXPRESS_TRANSFER_CHUNK_SIZE, else 1 MiB)");
  cmd->add_option("--tls-ca", f->tls_ca, "PEM CA bundle for https:// endpoints (or MX_TLS_CA)");
  cmd->add_flag("-q,--quiet", f->quiet, "No progress, only results and errors");
  cmd->add_flag(
      "-v,--verbose",
      [f](int64_t n) {
        f->verbose = static_cast<int>(n);
        ::setenv("MX_LOG_LEVEL", n > 1 ? "trace" : "debug", 1);
      },
      "More logging (-vv: even more)");
}

void Init(const WorkerFlags& f) {
  std::string level = GetEnv("MX_LOG_LEVEL").value_or(f.quiet ? "error" : "warn");
  InitLogging(level);
}

void Print(const WorkerFlags& f, const json& j) {
  std::printf("%s\n", JsonText(j, f.indent()).c_str());
}

int Fail(const WorkerFlags& f, const Status& st) {
  if (f.json_out()) {
    // One object on stdout too, so scripts parse the outcome either way.
    Print(f, json{{"success", false}, {"error", st.message()}});
  }
  return ReportError(st);
}

Result<std::unique_ptr<client::MxClient>> NewClient(const WorkerFlags& f) {
  client::ClientOptions o;
  o.endpoint = f.endpoint;
  o.tls_ca = f.tls_ca;
  return client::MxClient::Create(o);
}

// --- mx health --------------------------------------------------------------------------

int RunHealth(const WorkerFlags& f) {
  Init(f);
  auto c = NewClient(f);
  if (!c.ok()) return Fail(f, c.status());
  if (Status st = (*c)->Connect(); !st.ok()) return Fail(f, st);
  auto h = (*c)->GetHealth(f.timeout_ms());
  if (!h.ok()) return Fail(f, h.status());
  std::string status = Printable(h->status(), 64), version = Printable(h->version(), 64);
  if (f.json_out()) {
    Print(f, json{{"endpoint", (*c)->endpoint().target},
                  {"status", status},
                  {"version", version},
                  {"uptime", h->uptime()}});
  } else {
    std::printf("%s: %s (version %s, up %llus)\n", Shown((*c)->endpoint().target).c_str(),
                Shown(status).c_str(), Shown(version).c_str(),
                static_cast<unsigned long long>(h->uptime()));
  }
  return h->status() == "ok" ? 0 : 1;
}

// --- mx model download ------------------------------------------------------------------

struct DownloadArgs {
  std::string name;
  std::string provider = "hugging-face";
  std::string revision;
  std::string strategy = "smart-fallback";
  std::string phase = "all";
  std::string expect_commit;
  int streams = 4;
};

void ShowProgress(const client::FetchProgress& p) {
  if (p.bytes_total > 0) {
    std::fprintf(stderr, "\r[%s] %s / %s  files %zu/%zu        ", p.stage.c_str(),
                 FormatBytes(static_cast<double>(p.bytes_done)).c_str(),
                 FormatBytes(static_cast<double>(p.bytes_total)).c_str(), p.files_done,
                 p.files_total);
  } else {
    std::fprintf(stderr, "\r[%s] %s        ", p.stage.c_str(),
                 EscapeControl(p.message.substr(0, 60)).c_str());
  }
}

int RunDownload(const WorkerFlags& f, const DownloadArgs& a) {
  Init(f);
  // Streamed chunks are ~1 MiB messages: without this, glibc maps fresh (zeroed, faulted-in)
  // pages for every one of them, which cost more CPU than the sha256 of the bytes did in a
  // perf profile of an install (the server does the same).
  ::mallopt(M_MMAP_THRESHOLD, 64 << 20);
  ::mallopt(M_TRIM_THRESHOLD, 256 << 20);
  client::FetchOptions o;
  o.model = a.name;
  o.revision = a.revision;
  o.streams = a.streams;
  o.cache_root = client::ResolveCacheRoot(f.cache_path);
  o.shared_storage = !f.no_shared_storage && !EnvIsTruthy("MODEL_EXPRESS_NO_SHARED_STORAGE");
  auto provider = client::ParseProvider(a.provider);
  if (!provider.ok()) return ReportError(provider.status());
  o.provider = *provider;
  auto strategy = client::ParseStrategy(a.strategy);
  if (!strategy.ok()) return ReportError(strategy.status());
  o.strategy = *strategy;
  o.phase = a.phase == "metadata"  ? client::Phase::kMetadata
            : a.phase == "weights" ? client::Phase::kWeights
                                   : client::Phase::kAll;
  if (!a.expect_commit.empty()) {
    if (!IsLowerHex(a.expect_commit, 40)) {
      return ReportError(Status::InvalidArgument("--expect-commit must be a 40-hex commit"));
    }
    o.expect_commit = a.expect_commit;
  }
  std::string chunk = f.chunk_size;
  if (chunk.empty()) chunk = GetEnv("MODEL_EXPRESS_TRANSFER_CHUNK_SIZE").value_or("");
  if (!chunk.empty()) {
    auto n = ParseByteSizeInRange(
        f.chunk_size.empty() ? "MODEL_EXPRESS_TRANSFER_CHUNK_SIZE" : "--transfer-chunk-size", chunk,
        4096, 64u << 20);
    if (!n.ok()) return ReportError(n.status());
    o.chunk_size = static_cast<uint32_t>(*n);
  }
  bool tty = ::isatty(STDERR_FILENO) && !f.quiet && !f.json_out();
  // Off a terminal (pod logs): a plain line every few seconds from the latest numbers.
  std::mutex progress_mu;
  std::optional<client::FetchProgress> last;
  std::unique_ptr<PeriodicProgressLine> logger;
  if (tty) {
    o.on_progress = ShowProgress;
  } else if (!f.quiet) {
    Result<int> interval = ProgressIntervalSeconds();
    if (!interval.ok()) return ReportError(interval.status());
    o.on_progress = [&](const client::FetchProgress& p) {
      std::lock_guard<std::mutex> l(progress_mu);
      last = p;
    };
    logger = std::make_unique<PeriodicProgressLine>(*interval, [&](double elapsed) {
      std::lock_guard<std::mutex> l(progress_mu);
      if (!last) return std::string();
      return "[" + last->stage + "] " +
             TransferProgressText(last->bytes_done, last->bytes_total, last->files_done,
                                  last->files_total, elapsed);
    });
  }
  o.on_warning = [tty](const std::string& text) {
    if (tty) std::fprintf(stderr, "\n");
    std::fprintf(stderr, "warning: %s\n", EscapeControl(text).c_str());
  };
  std::unique_ptr<client::MxClient> c;
  if (o.strategy != client::Strategy::kDirect) {
    auto made = NewClient(f);
    if (!made.ok()) return ReportError(made.status());
    c = std::move(*made);
  }
  auto r = client::FetchModel(c.get(), o);
  logger.reset();
  if (tty) std::fprintf(stderr, "\n");
  if (!r.ok()) return Fail(f, r.status());
  if (f.json_out()) {
    Print(f, json{{"success", true},
                  {"model", a.name},
                  {"path", r->path},
                  {"commit", r->commit},
                  {"files", r->files},
                  {"bytes", r->bytes},
                  {"bytes_streamed", r->bytes_streamed},
                  {"seconds", r->seconds},
                  {"strategy", r->strategy}});
  } else {
    if (!f.quiet) {
      std::fprintf(stderr, "%s: %zu files, %s in %.1fs via %s\n", Shown(a.name).c_str(), r->files,
                   FormatBytes(static_cast<double>(r->bytes)).c_str(), r->seconds,
                   r->strategy.c_str());
    }
    std::printf("%s\n", Shown(r->path).c_str());
  }
  return 0;
}

// --- local cache commands ---------------------------------------------------------------

json RepoJson(const hub::CachedRepo& repo, bool detailed) {
  json j{{"model", repo.repo_id}, {"size", repo.size_on_disk}, {"path", repo.dir}};
  if (detailed) {
    json revs = json::array();
    for (const auto& r : repo.revisions) {
      revs.push_back(
          {{"commit", r.commit}, {"refs", r.refs}, {"files", r.files}, {"bytes", r.bytes}});
    }
    j["revisions"] = revs;
    j["last_modified"] = repo.last_modified;
  }
  return j;
}

Result<std::vector<hub::CachedRepo>> LocalModels(const std::string& root) {
  struct stat st;
  if (::stat(root.c_str(), &st) != 0) return std::vector<hub::CachedRepo>();
  MX_ASSIGN_OR_RETURN(auto repos, hub::ScanCache(root));
  std::vector<hub::CachedRepo> out;
  for (auto& r : repos) {
    if (r.type == hub::RepoType::kModel) out.push_back(std::move(r));
  }
  return out;
}

int RunList(const WorkerFlags& f, bool detailed) {
  Init(f);
  std::string root = client::ResolveCacheRoot(f.cache_path);
  auto repos = LocalModels(root);
  if (!repos.ok()) return Fail(f, repos.status());
  if (f.json_out()) {
    json arr = json::array();
    for (const auto& r : *repos) arr.push_back(RepoJson(r, detailed));
    Print(f, json{{"cache_path", root}, {"models", arr}});
    return 0;
  }
  for (const auto& r : *repos) {
    std::printf("%-50s %10s\n", Shown(r.repo_id).c_str(),
                FormatBytes(static_cast<double>(r.size_on_disk)).c_str());
    if (detailed) {
      for (const auto& rev : r.revisions) {
        std::string refs;
        for (const auto& x : rev.refs) refs += (refs.empty() ? "" : ",") + x;
        std::printf("  %s %s %zu files %s\n", rev.commit.substr(0, 12).c_str(), Shown(refs).c_str(),
                    rev.files, FormatBytes(static_cast<double>(rev.bytes)).c_str());
      }
    }
  }
  return 0;
}

int RunStats(const WorkerFlags& f, bool detailed) {
  Init(f);
  std::string root = client::ResolveCacheRoot(f.cache_path);
  auto repos = LocalModels(root);
  if (!repos.ok()) return Fail(f, repos.status());
  uint64_t total = 0;
  size_t revisions = 0;
  for (const auto& r : *repos) total += r.size_on_disk, revisions += r.revisions.size();
  if (f.json_out()) {
    json j{{"cache_path", root},
           {"models", repos->size()},
           {"revisions", revisions},
           {"total_size", total}};
    if (detailed) {
      json arr = json::array();
      for (const auto& r : *repos) arr.push_back(RepoJson(r, true));
      j["details"] = arr;
    }
    Print(f, j);
    return 0;
  }
  std::printf("cache: %s\nmodels: %zu\nrevisions: %zu\ntotal size: %s\n", Shown(root).c_str(),
              repos->size(), revisions, FormatBytes(static_cast<double>(total)).c_str());
  if (detailed) {
    for (const auto& r : *repos) {
      std::printf("  %-50s %10s\n", Shown(r.repo_id).c_str(),
                  FormatBytes(static_cast<double>(r.size_on_disk)).c_str());
    }
  }
  return 0;
}

int RunValidate(const WorkerFlags& f, const std::string& name) {
  Init(f);
  std::string root = client::ResolveCacheRoot(f.cache_path);
  std::vector<std::string> names;
  if (!name.empty()) {
    if (Status st = hub::ValidateRepoId(name); !st.ok()) return ReportError(st);
    names.push_back(name);
  } else {
    auto repos = LocalModels(root);
    if (!repos.ok()) return Fail(f, repos.status());
    for (const auto& r : *repos) names.push_back(r.repo_id);
  }
  json arr = json::array();
  bool all_ok = true;
  for (const auto& n : names) {
    auto v = hub::VerifyRepo(root, hub::RepoType::kModel, n, std::nullopt);
    bool exists = v.ok() || v.status().code() != StatusCode::kNotFound;
    bool valid = v.ok() && v->problems.empty();
    all_ok = all_ok && valid;
    json j{{"model", n}, {"exists", exists}, {"valid", valid}};
    if (v.ok()) {
      j["files_checked"] = v->files_checked;
      j["problems"] = v->problems;
    } else if (exists) {
      j["problems"] = json::array({v.status().message()});
    }
    arr.push_back(j);
    if (!f.json_out()) {
      std::printf("%s: %s\n", Shown(n).c_str(),
                  !exists ? "not in the cache"
                  : valid ? "valid"
                          : "INVALID");
      if (v.ok()) {
        for (const auto& p : v->problems) std::printf("  %s\n", Shown(p).c_str());
      } else if (exists) {
        std::printf("  %s\n", Shown(v.status().message()).c_str());
      }
    }
  }
  if (f.json_out()) {
    if (!name.empty()) {
      Print(f, arr[0]);
    } else {
      Print(f, json{{"models", arr}});
    }
  }
  return all_ok ? 0 : 1;
}

int RunStatus(const WorkerFlags& f, const std::string& name, const std::string& provider_text) {
  Init(f);
  std::string root = client::ResolveCacheRoot(f.cache_path);
  json j{{"cache_path", root}};
  auto made = NewClient(f);
  if (!made.ok()) return Fail(f, made.status());
  client::MxClient& c = **made;
  Status conn = c.Connect();
  j["endpoint"] = c.endpoint().target;
  j["server_reachable"] = conn.ok();
  if (!name.empty()) {
    if (Status st = hub::ValidateRepoId(name); !st.ok()) return ReportError(st);
    auto provider = client::ParseProvider(provider_text);
    if (!provider.ok()) return ReportError(provider.status());
    j["model"] = name;
    hub::RepoCache cache(root, hub::RepoType::kModel, name);
    auto commit = cache.ResolveLocal("main");
    j["local"] = commit.ok() ? json{{"commit", *commit}, {"path", cache.snapshot_dir(*commit)}}
                             : json(nullptr);
    if (conn.ok()) {
      model_express::model::ModelFilesRequest req;
      req.set_model_name(name);
      req.set_provider(static_cast<model_express::model::ModelProvider>(*provider));
      auto list = c.ListFiles(req, f.timeout_ms());
      if (list.ok()) {
        j["server"] = {
            {"status", "DOWNLOADED"}, {"files", list->files_size()}, {"bytes", list->total_size()}};
      } else {
        j["server"] = {
            {"status", list.status().code() == StatusCode::kNotFound ? "NOT_FOUND" : "ERROR"},
            {"message", list.status().message()}};
      }
    }
  } else if (conn.ok()) {
    auto h = c.GetHealth(f.timeout_ms());
    if (h.ok())
      j["server"] = {{"status", Printable(h->status(), 64)},
                     {"version", Printable(h->version(), 64)}};
  }
  if (f.json_out()) {
    Print(f, j);
  } else {
    std::printf("server %s: %s\n", Shown(c.endpoint().target).c_str(),
                conn.ok() ? "reachable" : "NOT reachable");
    if (j.contains("server")) std::printf("  %s\n", Shown(JsonText(j["server"])).c_str());
    if (j.contains("local")) {
      std::printf("local (%s): %s\n", Shown(root).c_str(),
                  j["local"].is_null() ? "not in the cache" : Shown(JsonText(j["local"])).c_str());
    }
  }
  return conn.ok() ? 0 : 1;
}

// An object-store model's local copy (its directory), as hub::RemoveFromCache reports.
Result<hub::RemoveReport> RemoveObjectCopy(const std::string& dir) {
  struct stat st {};
  if (::lstat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return Status::NotFound(dir + " is not in the cache");
  }
  hub::RemoveReport report;
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    if (it->is_regular_file(ec)) report.bytes_freed += it->file_size(ec);
  }
  std::filesystem::remove_all(dir, ec);
  if (ec) return Status::IoError("removing " + dir + ": " + ec.message());
  return report;
}

int RunClear(const WorkerFlags& f, const std::string& name, const std::string& provider_text) {
  Init(f);
  auto provider = client::ParseProvider(provider_text);
  if (!provider.ok()) return ReportError(provider.status());
  std::string root = client::ResolveCacheRoot(f.cache_path);
  auto object_dir = client::ObjectModelDir(root, *provider, name);
  if (!object_dir.ok()) return ReportError(object_dir.status());
  if (!*object_dir) {
    if (Status st = hub::ValidateRepoId(name); !st.ok()) return ReportError(st);
  }
  json j{{"model", name}};
  auto local = *object_dir ? RemoveObjectCopy(**object_dir)
                           : hub::RemoveFromCache(root, hub::RepoType::kModel, name, std::nullopt);
  bool local_ok = local.ok() || local.status().code() == StatusCode::kNotFound;
  j["local_removed"] = local.ok();
  if (!local_ok) j["local_error"] = local.status().message();
  if (local.ok()) j["bytes_freed"] = local->bytes_freed;
  bool server_ok = true;
  auto made = NewClient(f);
  if (!made.ok()) return Fail(f, made.status());
  if (Status conn = (*made)->Connect(); !conn.ok()) {
    std::fprintf(stderr, "warning: %s; the server's record of %s was not removed\n",
                 EscapeControl(conn.message()).c_str(), Shown(name).c_str());
    j["server_removed"] = false;
    j["server_error"] = conn.message();
  } else {
    auto d = (*made)->Delete(name, *provider, f.timeout_ms());
    if (!d.ok()) {
      server_ok = false;
      j["server_removed"] = false;
      j["server_error"] = d.status().message();
    } else {
      j["server_removed"] = d->success();
      std::string msg = Printable(d->message(), 1024);
      // A model the server never had is not a failure of `clear`.
      if (!d->success() && msg.find("not in the cache") == std::string::npos) server_ok = false;
      j["server_message"] = msg;
    }
  }
  j["success"] = local_ok && server_ok;
  if (f.json_out()) {
    Print(f, j);
  } else {
    if (!local_ok) {
      std::fprintf(stderr, "error: %s\n", EscapeControl(local.status().message()).c_str());
    }
    if (!server_ok && j.contains("server_error")) {
      std::fprintf(stderr, "error: %s\n", Shown(j["server_error"].get<std::string>()).c_str());
    } else if (!server_ok) {
      std::fprintf(stderr, "error: %s\n", Shown(j["server_message"].get<std::string>()).c_str());
    }
    if (!f.quiet) {
      std::printf("%s: local files %s, server record %s\n", Shown(name).c_str(),
                  local.ok() ? "removed"
                  : local_ok ? "not present"
                             : "NOT removed",
                  j["server_removed"].get<bool>() ? "removed" : "not removed");
    }
  }
  return local_ok && server_ok ? 0 : 1;
}

int RunClearAll(const WorkerFlags& f, bool yes) {
  Init(f);
  std::string root = client::ResolveCacheRoot(f.cache_path);
  auto repos = LocalModels(root);
  if (!repos.ok()) return Fail(f, repos.status());
  if (!yes) {
    if (!::isatty(STDIN_FILENO)) {
      return ReportError(Status::InvalidArgument("clear-all removes " +
                                                 std::to_string(repos->size()) + " models from " +
                                                 root + "; pass --yes to confirm"));
    }
    std::fprintf(stderr, "Remove all %zu models from %s? [y/N] ", repos->size(),
                 Shown(root).c_str());
    std::string answer;
    std::getline(std::cin, answer);
    if (answer != "y" && answer != "yes") return 1;
  }
  size_t removed = 0;
  json failed = json::array();
  for (const auto& r : *repos) {
    auto rm = hub::RemoveFromCache(root, hub::RepoType::kModel, r.repo_id, std::nullopt);
    if (rm.ok()) {
      ++removed;
    } else {
      failed.push_back({{"model", r.repo_id}, {"error", rm.status().message()}});
      std::fprintf(stderr, "error: %s\n", EscapeControl(rm.status().message()).c_str());
    }
  }
  if (f.json_out()) {
    Print(f, json{{"removed", removed}, {"failed", failed}, {"success", failed.empty()}});
  } else if (!f.quiet) {
    std::printf("removed %zu models from %s\n", removed, Shown(root).c_str());
  }
  return failed.empty() ? 0 : 1;
}

// --- mx api send ------------------------------------------------------------------------

int RunApiSend(const WorkerFlags& f, const std::string& action, const std::string& payload,
               const std::string& payload_file) {
  Init(f);
  std::optional<std::string> body;
  if (!payload.empty() && !payload_file.empty()) {
    return ReportError(Status::InvalidArgument("give --payload or --payload-file, not both"));
  }
  if (payload == "-") {
    std::string text((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
    body = text;
  } else if (!payload.empty()) {
    body = payload;
  } else if (!payload_file.empty()) {
    auto text = ReadFile(payload_file, 16 << 20);
    if (!text.ok()) return ReportError(text.status());
    body = *text;
  }
  if (body) {
    json parsed = json::parse(*body, nullptr, false);
    if (parsed.is_discarded()) {
      return ReportError(Status::InvalidArgument("the payload is not valid JSON"));
    }
  }
  auto made = NewClient(f);
  if (!made.ok()) return Fail(f, made.status());
  if (Status conn = (*made)->Connect(); !conn.ok()) return Fail(f, conn);
  auto r = (*made)->SendApi(action, body, f.timeout_ms());
  if (!r.ok()) return Fail(f, r.status());
  json data = nullptr;
  if (r->has_data()) {
    data = json::parse(r->data(), nullptr, false);
    if (data.is_discarded()) data = Printable(r->data(), 4096);
  }
  if (f.json_out()) {
    json j{{"success", r->success()}, {"data", data}};
    if (r->has_error()) j["error"] = Printable(r->error(), 4096);
    Print(f, j);
  } else if (r->success()) {
    std::printf("%s\n", Shown(data.is_null() ? "" : JsonText(data, 2)).c_str());
  } else {
    std::fprintf(stderr, "error: %s\n", Shown(Printable(r->error(), 4096)).c_str());
  }
  return r->success() ? 0 : 1;
}

// --- mx load ----------------------------------------------------------------------------

struct LoadArgs {
  std::string name;
  std::string provider = "hugging-face";
  std::string revision;
  std::string uri;
  bool digest = false;
};

// A server is asked only when one is named (flag or environment): a worker without one
// should not pay a connect timeout on every start.
bool ServerConfigured(const WorkerFlags& f) {
  return !f.endpoint.empty() || GetEnv("MODEL_EXPRESS_URL").has_value() ||
         GetEnv("MODEL_EXPRESS_ENDPOINT").has_value();
}

json StepsJson(const std::vector<client::LoadStep>& steps) {
  json out = json::array();
  for (const auto& s : steps) {
    out.push_back({{"strategy", s.strategy},
                   {"outcome", s.outcome},
                   {"reason", s.reason},
                   {"seconds", s.seconds},
                   {"tensors", s.tensors},
                   {"bytes", s.bytes}});
  }
  return out;
}

int RunLoad(const WorkerFlags& f, const LoadArgs& a) {
  Init(f);
  client::LoadRequest r;
  r.model = a.name;
  r.revision = a.revision;
  r.cache_root = client::ResolveCacheRoot(f.cache_path);
  r.shared_storage = !f.no_shared_storage && !EnvIsTruthy("MODEL_EXPRESS_NO_SHARED_STORAGE");
  r.model_uri = a.uri.empty() ? GetEnv("MX_MODEL_URI").value_or("") : a.uri;
  auto provider = client::ParseProvider(a.provider);
  if (!provider.ok()) return ReportError(provider.status());
  r.provider = *provider;
  auto stream = streamer::StreamOptions::FromEnvironment();
  if (!stream.ok()) return ReportError(stream.status());
  r.stream = *stream;
  r.on_warning = [](const std::string& text) {
    std::fprintf(stderr, "warning: %s\n", EscapeControl(text).c_str());
  };
  std::unique_ptr<client::MxClient> c;
  if (ServerConfigured(f)) {
    auto made = NewClient(f);
    if (!made.ok()) return ReportError(made.status());
    c = std::move(*made);
  }
  // --digest: one sha256 per tensor, combined in name order, so a caller can compare what
  // reached memory with the files (tensors arrive in any order).
  std::map<std::string, std::string> digests;
  // p2p first: it skips itself at once without a server or without READY sources.
  client::LoaderChain chain =
      client::MakeDefaultChain(c.get(), transfer::MakeP2pStrategy(c.get(), transfer::Identity{}));
  client::LoadReport report;
  auto loaded = chain.Load(
      r,
      [&](const streamer::Tensor& t, const std::shared_ptr<void>&) {
        if (a.digest) {
          digests[t.info.name] = Sha256Hex(std::string_view(t.data, t.info.bytes()));
        }
        return Status::OK();
      },
      &report);
  if (!f.json_out() && !f.quiet) {
    for (const auto& s : report.steps) {
      std::fprintf(stderr, "%-6s %-7s %6.2fs %s\n", s.strategy.c_str(), s.outcome.c_str(),
                   s.seconds, EscapeControl(s.reason).c_str());
    }
  }
  if (!loaded.ok()) {
    if (f.json_out()) {
      Print(f, json{{"success", false},
                    {"error", loaded.status().message()},
                    {"steps", StepsJson(report.steps)}});
      return 1;
    }
    return ReportError(loaded.status());
  }
  json out{{"success", true},
           {"model", a.name},
           {"served_by", report.served_by},
           {"path", report.path},
           {"tensors", report.tensors},
           {"bytes", report.bytes},
           {"seconds", report.seconds},
           {"steps", StepsJson(report.steps)}};
  if (a.digest) {
    std::string lines;
    for (const auto& [name, hex] : digests) lines += name + " " + hex + "\n";
    out["digest"] = Sha256Hex(lines);
  }
  if (f.json_out()) {
    Print(f, out);
  } else {
    std::printf("%s: %zu tensors, %s in %.2fs, served by %s\n", Shown(a.name).c_str(),
                report.tensors, FormatBytes(static_cast<double>(report.bytes)).c_str(),
                report.seconds, report.served_by.c_str());
  }
  return 0;
}

}  // namespace

void RegisterHealth(CLI::App& app, int& exit_code) {
  auto f = std::make_shared<WorkerFlags>();
  CLI::App* cmd = app.add_subcommand("health", "Ask mx-server (HealthService) whether it is up");
  AddWorkerFlags(cmd, f.get());
  cmd->callback([f, &exit_code] { exit_code = RunHealth(*f); });
}

void RegisterModel(CLI::App& app, int& exit_code) {
  auto f = std::make_shared<WorkerFlags>();
  CLI::App* model = app.add_subcommand(
      "model", "Get models onto this worker through mx-server, and manage the local cache");
  model->require_subcommand(1);
  AddWorkerFlags(model, f.get());
  // Each command accepts the group's options after its own name too.
  auto sub = [&](const char* name, const char* help) {
    CLI::App* s = model->add_subcommand(name, help);
    s->fallthrough();
    return s;
  };

  auto d = std::make_shared<DownloadArgs>();
  CLI::App* dl = sub("download",
                     "Install a model from mx-server (shared storage or streamed), falling back "
                     "to the hub; the last stdout line is the local snapshot path");
  dl->add_option("name", d->name, "Model name, e.g. org/name")->required();
  dl->add_option("-p,--provider", d->provider, "hugging-face, s3, gcs or ngc");
  dl->add_option("-r,--revision", d->revision, "Branch, tag or commit (default main)");
  dl->add_option("-s,--strategy", d->strategy, "smart-fallback, server-only or direct")
      ->check(CLI::IsMember({"smart-fallback", "server-only", "direct"}));
  dl->add_option("--phase", d->phase,
                 "all, metadata (config/tokenizer only: ignore_weights) or weights")
      ->check(CLI::IsMember({"all", "metadata", "weights"}));
  dl->add_option("--expect-commit", d->expect_commit,
                 "Refuse any other commit (pin a second phase to the first one's)");
  dl->add_option("--streams", d->streams, "Parallel StreamModelFiles calls (default 4)")
      ->check(CLI::Range(1, 16));
  dl->callback([f, d, &exit_code] { exit_code = RunDownload(*f, *d); });

  auto detailed = std::make_shared<bool>(false);
  CLI::App* ls = sub("list", "List the models in the local cache");
  ls->add_flag("--detailed", *detailed, "Revisions, refs and file counts too");
  ls->callback([f, detailed, &exit_code] { exit_code = RunList(*f, *detailed); });

  auto name = std::make_shared<std::string>();
  auto provider = std::make_shared<std::string>("hugging-face");
  CLI::App* st = sub("status", "The server's and the local cache's view of a model (or of both)");
  st->add_option("name", *name, "Model name");
  st->add_option("-p,--provider", *provider, "hugging-face, s3, gcs or ngc");
  st->callback([f, name, provider, &exit_code] { exit_code = RunStatus(*f, *name, *provider); });

  CLI::App* clear = sub("clear", "Remove a model's local files and the server's record of it");
  clear->add_option("name", *name, "Model name")->required();
  clear->add_option("-p,--provider", *provider, "hugging-face, s3, gcs or ngc");
  clear->callback([f, name, provider, &exit_code] { exit_code = RunClear(*f, *name, *provider); });

  auto yes = std::make_shared<bool>(false);
  CLI::App* all = sub("clear-all", "Remove every model from the local cache");
  all->add_flag("-y,--yes", *yes, "Do not ask");
  all->callback([f, yes, &exit_code] { exit_code = RunClearAll(*f, *yes); });

  CLI::App* val = sub("validate", "Re-hash a model's (or every model's) local files");
  val->add_option("name", *name, "Model name");
  val->callback([f, name, &exit_code] { exit_code = RunValidate(*f, *name); });

  CLI::App* stats = sub("stats", "Local cache totals");
  stats->add_flag("--detailed", *detailed, "Per model too");
  stats->callback([f, detailed, &exit_code] { exit_code = RunStats(*f, *detailed); });
}

void RegisterLoad(CLI::App& app, int& exit_code) {
  auto f = std::make_shared<WorkerFlags>();
  auto a = std::make_shared<LoadArgs>();
  CLI::App* cmd = app.add_subcommand(
      "load",
      "Load a model's weights into memory through the loader chain (p2p, server, "
      "MX_MODEL_URI, local cache, hub) and report which strategy served them");
  AddWorkerFlags(cmd, f.get());
  cmd->add_option("name", a->name, "Model name, e.g. org/name")->required();
  cmd->add_option("-p,--provider", a->provider, "hugging-face, s3, gcs or ngc");
  cmd->add_option("-r,--revision", a->revision, "Branch, tag or commit (default main)");
  cmd->add_option("--uri", a->uri, "Where the uri step streams from (default: $MX_MODEL_URI)");
  cmd->add_flag("--digest", a->digest,
                "Hash every tensor as it lands; json gets one digest over all of them");
  cmd->add_flag_callback(
      "--json", [f] { f->format = "json"; }, "Same as -f json");
  cmd->callback([f, a, &exit_code] { exit_code = RunLoad(*f, *a); });
}

void RegisterApi(CLI::App& app, int& exit_code) {
  auto f = std::make_shared<WorkerFlags>();
  CLI::App* api = app.add_subcommand("api", "Raw ApiService requests");
  api->require_subcommand(1);
  AddWorkerFlags(api, f.get());
  auto action = std::make_shared<std::string>();
  auto payload = std::make_shared<std::string>();
  auto payload_file = std::make_shared<std::string>();
  CLI::App* send = api->add_subcommand("send", "SendRequest(ACTION, payload JSON)");
  send->fallthrough();
  send->add_option("action", *action, "e.g. ping")->required();
  send->add_option("--payload", *payload, "JSON text, or - to read it from stdin");
  send->add_option("--payload-file", *payload_file, "A file holding the JSON payload");
  send->callback([f, action, payload, payload_file, &exit_code] {
    exit_code = RunApiSend(*f, *action, *payload, *payload_file);
  });
}

}  // namespace mx::cli
