// Mirror: a Hugging Face Hub-compatible HTTP endpoint over the server's cache, so any HF
// client works with HF_ENDPOINT pointed here. Revision info, the paginated tree and HEAD
// answers come from the cached listing (trees/<commit>.json), fetched from upstream on a
// miss without waiting for any content; a GET of a file not yet cached pulls the repo
// through once, with the same claims as EnsureModelDownloaded, then serves it
// (sendfile, Range).
#pragma once

#include <string>

#include "server/http_server.h"
#include "server/model_manager.h"

namespace mx::server {

class Mirror {
 public:
  Mirror(ModelManager* manager, Metrics* metrics) : manager_(manager), metrics_(metrics) {}
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

  ModelManager* manager_;
  Metrics* metrics_;
};

}  // namespace mx::server
