// Mirror: a Hugging Face Hub-compatible HTTP endpoint over the server's cache, so any HF
// client works with HF_ENDPOINT pointed here. Serves revision info, the paginated tree,
// and resolve (HEAD/GET/Range, hub headers) from the cache; a miss pulls the repo through
// from the upstream hub once, with the same claims as EnsureModelDownloaded.
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
  Result<Repo> Pull(const std::string& repo_id, const std::string& revision);
  HttpResponse RevisionInfo(const Repo& repo);
  HttpResponse Tree(const Repo& repo, const std::string& subpath, const HttpRequest& request);
  HttpResponse Resolve(const Repo& repo, const std::string& path, const HttpRequest& request);

  ModelManager* manager_;
  Metrics* metrics_;
};

}  // namespace mx::server
