#include <cstdio>
#include <ctime>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "cli/commands.h"
#include "common/env.h"
#include "common/log.h"
#include "hub/cache.h"
#include "hub/cache_admin.h"
#include "hub/downloader.h"

namespace mx::cli {
namespace {

struct CacheArgs {
  std::string cache_dir;
  std::string repo_type = "model";
  std::string repo;  // REPO or REPO@REV
  std::string revision;
  bool revisions = false;
  bool repair = false;                              // verify: fetch the bad files again
  int64_t grace_seconds = hub::kCacheGraceSeconds;  // prune
};

std::string CacheRoot(const CacheArgs& a) {
  return a.cache_dir.empty() ? hub::HubConfig::FromEnvironment().cache_dir : a.cache_dir;
}

std::string Age(std::time_t t) {
  if (t == 0) return "-";
  long s = static_cast<long>(std::time(nullptr) - t);
  if (s < 120) return std::to_string(s) + "s ago";
  if (s < 7200) return std::to_string(s / 60) + "m ago";
  if (s < 172800) return std::to_string(s / 3600) + "h ago";
  return std::to_string(s / 86400) + "d ago";
}

int RunLs(const CacheArgs& a, const GlobalFlags& flags) {
  auto repos = hub::ScanCache(CacheRoot(a));
  if (!repos.ok()) return ReportError(repos.status());
  if (flags.json) {
    nlohmann::json out = nlohmann::json::array();
    for (const auto& r : *repos) {
      nlohmann::json j{{"repo_id", r.repo_id},
                       {"repo_type", hub::RepoTypePlural(r.type)},
                       {"path", r.dir},
                       {"size_on_disk", r.size_on_disk},
                       {"last_modified", r.last_modified}};
      j["revisions"] = nlohmann::json::array();
      for (const auto& rev : r.revisions) {
        j["revisions"].push_back({{"commit", rev.commit},
                                  {"refs", rev.refs},
                                  {"files", rev.files},
                                  {"size", rev.bytes},
                                  {"path", r.dir + "/snapshots/" + rev.commit}});
      }
      out.push_back(std::move(j));
    }
    std::printf("%s\n", JsonText(out, 2).c_str());
    return 0;
  }
  if (a.revisions) {
    std::printf("%-40s %-8s %-40s %10s %6s %-12s %s\n", "REPO ID", "TYPE", "REVISION", "SIZE",
                "FILES", "MODIFIED", "REFS");
  } else {
    std::printf("%-40s %-8s %10s %5s %-12s %s\n", "REPO ID", "TYPE", "SIZE", "REVS", "MODIFIED",
                "REFS");
  }
  for (const auto& r : *repos) {
    std::string type = hub::RepoTypePlural(r.type);
    type.pop_back();
    if (a.revisions) {
      for (const auto& rev : r.revisions) {
        std::string refs;
        for (const auto& n : rev.refs) refs += (refs.empty() ? "" : ",") + n;
        std::printf("%-40s %-8s %-40s %10s %6zu %-12s %s\n", Shown(r.repo_id).c_str(), type.c_str(),
                    Shown(rev.commit).c_str(), FormatBytes(rev.bytes).c_str(), rev.files,
                    Age(rev.last_modified).c_str(), Shown(refs).c_str());
      }
      continue;
    }
    std::string refs;
    for (const auto& rev : r.revisions) {
      for (const auto& n : rev.refs) refs += (refs.empty() ? "" : ",") + n;
    }
    std::printf("%-40s %-8s %10s %5zu %-12s %s\n", Shown(r.repo_id).c_str(), type.c_str(),
                FormatBytes(r.size_on_disk).c_str(), r.revisions.size(),
                Age(r.last_modified).c_str(), Shown(refs).c_str());
  }
  return 0;
}

// Splits "org/name@rev" into repo and revision.
void SplitRepoRevision(const std::string& spec, std::string* repo,
                       std::optional<std::string>* rev) {
  size_t at = spec.find('@');
  *repo = spec.substr(0, at);
  if (at != std::string::npos) *rev = spec.substr(at + 1);
}

int RunPath(const CacheArgs& a) {
  auto type = hub::ParseRepoType(a.repo_type);
  if (!type.ok()) return ReportError(type.status());
  std::string repo;
  std::optional<std::string> rev;
  SplitRepoRevision(a.repo, &repo, &rev);  // REPO@REV, as verify and rm take it
  if (!a.revision.empty()) rev = a.revision;
  std::string revision = rev.value_or("main");
  if (Status st = hub::ValidateRepoId(repo); !st.ok()) return ReportError(st);
  if (int code = RefuseBadRevision(revision); code != 0) return code;
  hub::RepoCache cache(CacheRoot(a), *type, repo);
  auto commit = cache.ResolveLocal(revision);
  if (!commit.ok()) return ReportError(commit.status());
  std::string snap = cache.snapshot_dir(*commit);
  if (::access(snap.c_str(), F_OK) != 0) {
    return ReportError(
        Status::NotFound("snapshot " + snap + " is missing; run mx download " + repo));
  }
  std::printf("%s\n", Shown(snap).c_str());
  return 0;
}

// Fetches the bad files of `report` again from the hub (each blob once, verified as every
// download is, replacing the bad copy by rename) and returns the ones repaired.
Result<std::vector<std::string>> RepairBadFiles(const CacheArgs& a, hub::RepoType type,
                                                const std::string& repo,
                                                const hub::VerifyReport& report) {
  hub::HubConfig config = hub::HubConfig::FromEnvironment();
  config.cache_dir = CacheRoot(a);
  if (config.offline) {
    return Status::FailedPrecondition("--repair fetches from the hub, and HF_HUB_OFFLINE is set");
  }
  hub::HubClient client(config, type);
  // One download per commit; a blob shared by several paths or commits is fetched once.
  std::map<std::string, std::vector<std::string>> paths_of_commit;
  std::set<std::string> etags;
  std::vector<std::string> repaired;
  for (const auto& b : report.bad) {
    if (!etags.insert(b.etag).second) continue;
    paths_of_commit[b.commit].push_back(b.path);
  }
  for (const auto& [commit, paths] : paths_of_commit) {
    hub::DownloadOptions o;
    o.repo_id = repo;
    o.revision = commit;
    o.files = paths;
    o.force = true;
    auto done = hub::Download(client, o);
    if (!done.ok()) return done.status().WithContext("repairing " + repo + "@" + commit);
    for (const auto& p : paths) repaired.push_back(commit.substr(0, 8) + "/" + p);
  }
  return repaired;
}

int RunVerify(const CacheArgs& a, const GlobalFlags& flags) {
  auto type = hub::ParseRepoType(a.repo_type);
  if (!type.ok()) return ReportError(type.status());
  std::string repo;
  std::optional<std::string> rev;
  SplitRepoRevision(a.repo, &repo, &rev);
  if (!a.revision.empty()) rev = a.revision;
  if (rev) {
    if (int code = RefuseBadRevision(*rev); code != 0) return code;
  }
  auto report = hub::VerifyRepo(CacheRoot(a), *type, repo, rev);
  if (!report.ok()) return ReportError(report.status());
  for (const auto& p : report->problems) std::fprintf(stderr, "bad: %s\n", Shown(p).c_str());
  std::vector<std::string> repaired;
  size_t bad = report->problems.size();
  if (a.repair && !report->bad.empty()) {
    auto fixed = RepairBadFiles(a, *type, repo, *report);
    if (!fixed.ok()) return ReportError(fixed.status());
    repaired = *fixed;
    for (const auto& r : repaired) std::fprintf(stderr, "repaired: %s\n", Shown(r).c_str());
    // Check again: what is still bad after the repair decides the exit code.
    auto again = hub::VerifyRepo(CacheRoot(a), *type, repo, rev);
    if (!again.ok()) return ReportError(again.status());
    for (const auto& p : again->problems) {
      std::fprintf(stderr, "still bad: %s\n", Shown(p).c_str());
    }
    bad = again->problems.size();
  }
  if (flags.json) {
    nlohmann::json j{{"files_checked", report->files_checked},
                     {"bytes_checked", report->bytes_checked},
                     {"problems", report->problems}};
    if (a.repair) {
      j["repaired"] = repaired;
      j["bad_after_repair"] = bad;
    }
    std::printf("%s\n", JsonText(j).c_str());
  } else if (a.repair) {
    std::printf("%zu files checked (%s), %zu bad, %zu repaired, %zu still bad\n",
                report->files_checked, FormatBytes(report->bytes_checked).c_str(),
                report->problems.size(), repaired.size(), bad);
  } else {
    std::printf("%zu files checked (%s), %zu bad\n", report->files_checked,
                FormatBytes(report->bytes_checked).c_str(), report->problems.size());
    if (!report->bad.empty()) {
      std::fprintf(stderr,
                   "repair with `mx cache verify --repair %s%s` (fetches exactly the bad files "
                   "again)\n",
                   Shown(a.repo).c_str(),
                   a.repo_type == "model" ? "" : (" --repo-type " + a.repo_type).c_str());
    }
  }
  return bad == 0 ? 0 : 1;
}

void PrintRemoved(const hub::RemoveReport& r) {
  std::printf("removed %zu revision(s), %zu blob(s), freed %s\n", r.revisions_removed,
              r.blobs_removed, FormatBytes(r.bytes_freed).c_str());
}

// Entries of `dir` (0 when it does not exist).
size_t CountEntries(const std::string& dir) {
  std::error_code ec;
  size_t n = 0;
  for (auto it = std::filesystem::directory_iterator(dir, ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    ++n;
  }
  return n;
}

// Blobs (names of 40 or 64 lowercase hex) in a repo folder: what removing it frees.
size_t CountBlobs(const std::string& repo_dir) {
  std::error_code ec;
  size_t n = 0;
  for (auto it = std::filesystem::directory_iterator(repo_dir + "/blobs", ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    std::string name = it->path().filename().string();
    bool hex = (name.size() == 40 || name.size() == 64) &&
               name.find_first_not_of("0123456789abcdef") == std::string::npos;
    if (hex && it->is_regular_file(ec)) ++n;
  }
  return n;
}

// A repo folder with no snapshot and nothing in blobs/ (not even a download's temp file)
// holds nothing a user can read: it is removed, through RemoveFromCache and so under the
// cache protocol (refused while a download or a stream holds the repo), so that
// `mx cache ls` no longer lists it.
void RemoveIfEmpty(const std::string& root, hub::RepoType type, const std::string& repo_id) {
  hub::RepoCache cache(root, type, repo_id);
  if (CountEntries(cache.repo_dir() + "/snapshots") > 0) return;
  if (CountEntries(cache.repo_dir() + "/blobs") > 0) return;
  auto removed = hub::RemoveFromCache(root, type, repo_id, std::nullopt);
  if (removed.ok()) {
    spdlog::debug("removed {}: nothing left in it", repo_id);
  } else {
    spdlog::debug("left empty {} in place: {}", repo_id, removed.status().message());
  }
}

int RunRm(const CacheArgs& a) {
  auto type = hub::ParseRepoType(a.repo_type);
  if (!type.ok()) return ReportError(type.status());
  std::string repo;
  std::optional<std::string> rev;
  SplitRepoRevision(a.repo, &repo, &rev);
  if (rev) {
    if (int code = RefuseBadRevision(*rev); code != 0) return code;
  }
  if (Status st = hub::ValidateRepoId(repo); !st.ok()) return ReportError(st);
  std::string root = CacheRoot(a);
  // Removing the whole repo removes every blob in it; RemoveFromCache counts only bytes.
  size_t blobs_before = rev ? 0 : CountBlobs(hub::RepoCache(root, *type, repo).repo_dir());
  auto report = hub::RemoveFromCache(root, *type, repo, rev);
  if (!report.ok()) return ReportError(report.status());
  if (!rev) report->blobs_removed = std::max(report->blobs_removed, blobs_before);
  if (rev) RemoveIfEmpty(root, *type, repo);
  PrintRemoved(*report);
  return 0;
}

int RunPrune(const CacheArgs& a) {
  std::string root = CacheRoot(a);
  auto report = hub::PruneCache(root, a.grace_seconds);
  if (!report.ok()) return ReportError(report.status());
  if (auto left = hub::ScanCache(root); left.ok()) {
    for (const auto& r : *left) {
      if (r.revisions.empty()) RemoveIfEmpty(root, r.type, r.repo_id);
    }
  }
  PrintRemoved(*report);
  if (report->repos_in_use > 0) {
    std::printf("left %zu repo(s) in use (a download or a stream) alone\n", report->repos_in_use);
  }
  return 0;
}

}  // namespace

void RegisterCache(CLI::App& app, GlobalFlags& flags, int& exit_code) {
  auto args = std::make_shared<CacheArgs>();
  CLI::App* cache = app.add_subcommand("cache", "Inspect and manage the HF cache");
  cache->require_subcommand(1);
  auto common = [&](CLI::App* c) {
    c->add_option("--cache-dir", args->cache_dir, "Cache root (default: $HF_HUB_CACHE)");
    c->add_option("--repo-type", args->repo_type,
                  "model, dataset or space (plural as `cache ls --json` prints it, too)")
        ->check(CLI::IsMember({"model", "dataset", "space"}));
  };
  CLI::App* ls = cache->add_subcommand("ls", "List cached repos");
  common(ls);
  ls->add_flag("--revisions", args->revisions, "One line per revision");
  ls->add_flag("--json", flags.json, "JSON output");
  ls->callback([args, &flags, &exit_code] { exit_code = RunLs(*args, flags); });

  CLI::App* path = cache->add_subcommand("path", "Print a repo's snapshot directory");
  common(path);
  path->add_option("repo", args->repo, "Repository id (REPO or REPO@REV)")->required();
  path->add_option("--revision", args->revision, "Branch, tag or commit (default: main)");
  path->callback([args, &exit_code] { exit_code = RunPath(*args); });

  CLI::App* verify = cache->add_subcommand("verify", "Re-hash every cached file of a repo");
  common(verify);
  verify->add_option("repo", args->repo, "Repository id (REPO or REPO@REV)")->required();
  verify->add_option("--revision", args->revision, "Only this revision");
  verify->add_flag("--json", flags.json, "JSON output");
  verify->add_flag("--repair", args->repair,
                   "Fetch the bad files again from the hub (HF_ENDPOINT, HF_TOKEN), verified");
  verify->callback([args, &flags, &exit_code] { exit_code = RunVerify(*args, flags); });

  CLI::App* rm = cache->add_subcommand("rm", "Remove a repo, or one revision (REPO@REV)");
  common(rm);
  rm->add_option("repo", args->repo, "REPO or REPO@REV")->required();
  rm->callback([args, &exit_code] { exit_code = RunRm(*args); });

  CLI::App* prune =
      cache->add_subcommand("prune", "Remove unreferenced revisions, blobs and stale temp files");
  common(prune);
  prune
      ->add_option("--grace", args->grace_seconds,
                   "Keep revisions and blobs changed in the last SECONDS (default 600): a "
                   "download may be adding them where file locks do not work")
      ->check(CLI::NonNegativeNumber);
  prune->callback([args, &exit_code] { exit_code = RunPrune(*args); });
}

}  // namespace mx::cli
