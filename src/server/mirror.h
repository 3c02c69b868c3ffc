// Mirror: a Hugging Face Hub-compatible HTTP endpoint over the server's cache, so any HF
// client works with HF_ENDPOINT pointed here. Revision info, the paginated tree and HEAD
// answers come from the cached listing (trees/<commit>.json), fetched from upstream on a
// miss without waiting for any content; a GET of a file not yet cached fetches that one
// file (resumable, one fetch per blob across processes through the downloader's blob
// locks), then serves it (sendfile, Range). A whole repo is pulled only when asked for
// explicitly (gRPC EnsureModelDownloaded). Who may read what: server/access.h.
#pragma once

#include <string>
#include <string_view>

#include "server/access.h"
#include "server/http_server.h"
#include "server/model_manager.h"

namespace mx::server {

// A mirror URL taken apart: /api/models/<repo>[/revision/<rev>], /api/models/<repo>/tree/
// <rev>[/<path>], /<repo>/resolve/<rev>/<path>. Every part is decoded and validated
// (repo id, revision by git's ref rules, path relative without '..'), so nothing that
// reaches the cache or upstream is unchecked.
struct MirrorRoute {
  enum Kind { kRevision, kTree, kResolve };
  Kind kind = kRevision;
  std::string repo_id;
  std::string revision = "main";
  std::string path;  // tree: subdirectory ("" = root); resolve: the file
};
// NotFound for URLs that are not mirror endpoints; InvalidArgument for bad parts.
Result<MirrorRoute> ParseMirrorRoute(std::string_view raw_path);

class Mirror {
 public:
  Mirror(ModelManager* manager, Metrics* metrics)
      : manager_(manager), metrics_(metrics), access_(manager->config()) {}
  // Never throws: the HTTP server turns anything that slips through into a 500.
  HttpResponse Handle(const HttpRequest& request);

 private:
  struct Repo;
  // The listing of repo@revision: from the cache, else from upstream (metadata only).
  Result<Repo> Listing(const std::string& repo_id, const std::string& revision);
  // The cached file, pulling the repo through (single-flight) when it is not there yet.
  Result<LocalFile> Fetch(const Repo& repo, const std::string& path);
  HttpResponse RevisionInfo(const Repo& repo, bool blobs);
  HttpResponse Tree(const Repo& repo, const std::string& subpath, const HttpRequest& request);
  HttpResponse Resolve(const Repo& repo, const std::string& path, const HttpRequest& request);

  // The hub-style error answer: the caller's text (CallerMessage) in the body and
  // X-Error-Message, the full message in log_note.
  HttpResponse Error(const Status& status) const;
  HttpResponse ErrorFor(const Status& status) const;

  ModelManager* manager_;
  Metrics* metrics_;
  AccessPolicy access_;
};

}  // namespace mx::server
