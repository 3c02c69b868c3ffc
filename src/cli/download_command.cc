#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>

#include "cli/commands.h"
#include "cli/progress.h"
#include "common/env.h"
#include "common/log.h"
#include "common/text.h"
#include "hub/cache.h"
#include "hub/downloader.h"

namespace mx::cli {

int ReportError(const Status& status) {
  std::fprintf(stderr, "error: %s\n", EscapeControl(status.message()).c_str());
  return status.code() == StatusCode::kInvalidArgument ? 2 : 1;
}

int RefuseBadRevision(const std::string& revision) {
  Status st = hub::ValidateRevision(revision);
  if (st.ok()) return 0;
  ReportError(st);
  return 2;
}

std::string Shown(const std::string& text) { return EscapeControl(text); }

std::string JsonText(const nlohmann::json& j, int indent) {
  return j.dump(indent, ' ', /*ensure_ascii=*/false, nlohmann::json::error_handler_t::replace);
}

namespace {

struct DownloadArgs {
  std::string repo_id;
  std::vector<std::string> files;
  std::string revision = "main";
  std::vector<std::string> include, exclude;
  std::string repo_type = "model";
  std::string cache_dir, local_dir;
  int max_workers = 0;  // 0: adaptive (see hub::DownloadOptions::max_workers)
  bool force_download = false;
};

// One line redrawn in place on stderr: bytes, rate, ETA, files, connections in use.
void DrawProgress(const hub::DownloadProgress& p) {
  double rate = p.seconds > 0 ? p.bytes_done / p.seconds : 0;
  double frac = p.bytes_total ? std::min(1.0, double(p.bytes_done) / p.bytes_total) : 1.0;
  int filled = static_cast<int>(frac * 24);
  std::string bar(filled, '#');
  bar += std::string(24 - filled, '.');
  std::string eta = "--";
  if (rate > 0 && p.bytes_total > p.bytes_done) {
    eta = std::to_string(static_cast<long>((p.bytes_total - p.bytes_done) / rate)) + "s";
  }
  std::fprintf(stderr, "\r[%s] %s / %s  %s/s  ETA %s  files %zu/%zu  conns %d   ", bar.c_str(),
               FormatBytes(p.bytes_done).c_str(), FormatBytes(p.bytes_total).c_str(),
               FormatBytes(rate).c_str(), eta.c_str(), p.files_done, p.files_total, p.connections);
  std::fflush(stderr);
}

int RunDownload(const DownloadArgs& a, const GlobalFlags& flags) {
  InitLogging(flags.quiet || flags.json ? "warn" : "info");
  if (int code = RefuseBadRevision(a.revision); code != 0) return code;
  auto type = hub::ParseRepoType(a.repo_type);
  if (!type.ok()) return ReportError(type.status());
  hub::HubConfig config = hub::HubConfig::FromEnvironment();
  if (!a.cache_dir.empty()) config.cache_dir = a.cache_dir;
  if (flags.token) config.token = *flags.token;
  hub::HubClient client(config, *type);

  hub::DownloadOptions o;
  o.repo_id = a.repo_id;
  o.revision = a.revision;
  o.files = a.files;
  o.include = a.include;
  o.exclude = a.exclude;
  o.max_workers = a.max_workers;
  if (!a.local_dir.empty()) o.local_dir = a.local_dir;
  o.force = a.force_download;
  o.use_cache_when_unreachable = true;  // as huggingface_hub does
  o.fail_on_empty_selection = true;
  if (!a.files.empty() && (!a.include.empty() || !a.exclude.empty())) {
    spdlog::warn("ignoring --include/--exclude: files were named explicitly (as hf download does)");
  }
  bool tty = ::isatty(STDERR_FILENO) && !flags.quiet && !flags.json;
  std::unique_ptr<PeriodicProgressLine> logger;
  std::mutex progress_mu;
  std::optional<hub::DownloadProgress> last;  // nothing is printed before the listing is known
  if (tty) {
    o.on_progress = DrawProgress;
  } else if (!flags.quiet) {
    Result<int> interval = ProgressIntervalSeconds();
    if (!interval.ok()) return ReportError(interval.status());
    o.on_progress = [&](const hub::DownloadProgress& p) {
      std::lock_guard<std::mutex> l(progress_mu);
      last = p;
    };
    logger = std::make_unique<PeriodicProgressLine>(*interval, [&](double elapsed) {
      std::lock_guard<std::mutex> l(progress_mu);
      return last ? TransferProgressText(last->bytes_done, last->bytes_total, last->files_done,
                                         last->files_total, elapsed)
                  : std::string();
    });
  }

  auto report = hub::Download(client, o);
  logger.reset();
  if (tty) std::fprintf(stderr, "\n");
  if (!report.ok()) return ReportError(report.status());
  if (flags.json) {
    nlohmann::json j;
    j["path"] = report->path;
    j["commit"] = report->commit;
    j["files"] = report->files;
    j["bytes"] = report->bytes;
    j["bytes_fetched"] = report->bytes_fetched;
    j["seconds"] = report->seconds;
    std::printf("%s\n", JsonText(j).c_str());
  } else {
    if (!flags.quiet) {
      double rate = report->seconds > 0 ? report->bytes_fetched / report->seconds : 0;
      std::fprintf(stderr, "%zu files, %s at commit %s (%s fetched in %.1fs, %s/s)\n",
                   report->files, FormatBytes(report->bytes).c_str(), Shown(report->commit).c_str(),
                   FormatBytes(report->bytes_fetched).c_str(), report->seconds,
                   FormatBytes(rate).c_str());
    }
    std::printf("%s\n", Shown(report->path).c_str());
  }
  return 0;
}

}  // namespace

void RegisterDownload(CLI::App& app, GlobalFlags& flags, int& exit_code) {
  auto args = std::make_shared<DownloadArgs>();
  CLI::App* cmd =
      app.add_subcommand("download", "Download a repo (or some files) into the HF cache");
  cmd->add_option("repo_id", args->repo_id, "Repository id, e.g. org/name")->required();
  cmd->add_option("files", args->files, "Only these files (paths in the repo)");
  cmd->add_option("--revision", args->revision, "Branch, tag or commit (default: main)");
  cmd->add_option("--include", args->include, "Only files matching this glob (repeatable)");
  cmd->add_option("--exclude", args->exclude, "Skip files matching this glob (repeatable)");
  cmd->add_option("--repo-type", args->repo_type, "model, dataset or space")
      ->check(CLI::IsMember({"model", "dataset", "space"}));
  cmd->add_option("--cache-dir", args->cache_dir,
                  "Cache root (default: $HF_HUB_CACHE or $HF_HOME/hub)");
  cmd->add_option("--local-dir", args->local_dir, "Write plain files into this directory instead");
  // The value was scrubbed from argv before parsing; this option only keeps CLI11 happy.
  cmd->add_option("--token", "Hub token (prefer HF_TOKEN: argv is visible to other users)");
  cmd->add_option("--max-workers", args->max_workers,
                  "Exactly this many parallel connections (default: adaptive, up to "
                  "MX_MAX_CONNECTIONS or 128)")
      ->check(CLI::Range(1, 256));
  cmd->add_flag("--force-download", args->force_download,
                "Fetch every selected file again even if cached (verified, then replaces the "
                "old copy)");
  cmd->add_flag("--quiet,-q", flags.quiet, "Print only the snapshot path");
  cmd->add_flag("--json", flags.json, "Print one JSON object");
  cmd->callback([args, &flags, &exit_code] { exit_code = RunDownload(*args, flags); });
}

}  // namespace mx::cli
