// HubClient: the Hugging Face Hub HTTP protocol (revision -> commit, paginated tree
// listing, resolve URLs) and the mapping of hub errors (X-Error-Code) to clear Statuses.
// Listings are validated here: a hostile entry (absolute path, "..", backslash, NUL,
// malformed oid, impossible size) fails the whole listing, before anything touches disk.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"

namespace mx::hub {

enum class RepoType { kModel, kDataset, kSpace };

Result<RepoType> ParseRepoType(std::string_view text);
// "models", "datasets", "spaces": the plural used in API paths and cache folder names.
const char* RepoTypePlural(RepoType type);

// Settings from the HF environment, overridable by flags.
struct HubConfig {
  std::string endpoint = "https://huggingface.co";  // HF_ENDPOINT, trailing '/' stripped
  std::optional<std::string> token;                 // HF_TOKEN, legacy name, $HF_HOME/token
  std::string hf_home;                              // HF_HOME
  std::string cache_dir;                            // HF_HUB_CACHE, legacy name, $HF_HOME/hub
  bool offline = false;                             // HF_HUB_OFFLINE
  bool disable_symlinks = false;                    // HF_HUB_DISABLE_SYMLINKS

  static HubConfig FromEnvironment();
};

struct TreeEntry {
  std::string path;
  uint64_t size = 0;
  std::string git_oid;                    // 40-hex git blob sha1
  std::optional<std::string> lfs_sha256;  // 64-hex, LFS files only
  uint64_t lfs_pointer_size = 0;

  bool is_lfs() const { return lfs_sha256.has_value(); }
  // The blob name in the cache: sha256 for LFS files, git sha1 otherwise.
  const std::string& etag() const { return is_lfs() ? *lfs_sha256 : git_oid; }
};

class HubClient {
 public:
  HubClient(HubConfig config, RepoType type);

  // GET /api/{type}/{repo}/revision/{revision} -> the 40-hex commit. When `restricted` is
  // given it is set to whether the hub marks the repo private or gated (the hub answers
  // this API for gated repos without a token; their files need one).
  Result<std::string> ResolveRevision(const std::string& repo_id, const std::string& revision,
                                      bool* restricted = nullptr);

  // Every file of the commit (directories dropped), following Link pagination.
  Result<std::vector<TreeEntry>> ListFiles(const std::string& repo_id, const std::string& commit);

  // {endpoint}/[datasets/]{repo}/resolve/{revision}/{path}
  std::string FileUrl(const std::string& repo_id, const std::string& revision,
                      const std::string& path) const;

  // "Authorization: Bearer ..." when a token is configured. Only for the hub's own origin.
  std::vector<std::string> AuthHeaders() const;

  const HubConfig& config() const { return config_; }
  RepoType type() const { return type_; }

 private:
  std::string ApiBase(const std::string& repo_id) const;

  HubConfig config_;
  RepoType type_;
};

// The revision API's answer: the commit, and whether the hub marks the repo private or
// gated. DataLoss for a body without a 40-hex "sha". Exposed for tests/fuzzing.
struct RevisionAnswer {
  std::string commit;
  bool restricted = false;
};
Result<RevisionAnswer> ParseRevisionAnswer(std::string_view body, const std::string& what);

// Parses one page of the tree API into entries, validating each. Exposed for tests/fuzzing.
Status ParseTreePage(std::string_view json, std::vector<TreeEntry>* out);

// A clear Status for a hub error response: names the repo/revision/file and says what to do.
// `server_message` is the response's X-Error-Message (the hub's, or a mirror's, own words):
// when present it is shown, bounded to kMaxServerMessageBytes and with control characters
// escaped, and the client adds no guess that could contradict it (a mirror's 401 "the
// server's HF_TOKEN cannot read this repo" is not reported as "your token was refused").
Status HubErrorStatus(long http_status, const std::string& error_code, const std::string& what,
                      bool have_token, const std::string& server_message = "");
// Longest server message (X-Error-Message) shown, in bytes, before "..." is appended.
constexpr size_t kMaxServerMessageBytes = 300;

}  // namespace mx::hub
