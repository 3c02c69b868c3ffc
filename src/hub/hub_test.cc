#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include "common/fs.h"
#include "hub/cache.h"
#include "hub/cache_admin.h"
#include "hub/downloader.h"
#include "hub/hub_client.h"
#include "hub/progress_file.h"

namespace mx::hub {
namespace {

const std::string kOid(40, 'a');
const std::string kSha(64, 'b');

std::string Entry(const std::string& path, const std::string& extra = "") {
  return R"({"type":"file","path":")" + path + R"(","size":5,"oid":")" + kOid + "\"" + extra + "}";
}

TEST(TreeTest, ParsesFilesAndLfs) {
  std::vector<TreeEntry> out;
  std::string page =
      "[" + Entry("config.json") + "," + R"({"type":"directory","path":"sub","oid":")" + kOid +
      R"("},)" +
      Entry("sub/w.safetensors", R"(,"lfs":{"oid":")" + kSha + R"(","size":5,"pointerSize":134})") +
      "]";
  ASSERT_TRUE(ParseTreePage(page, &out).ok());
  ASSERT_EQ(out.size(), 2u);
  EXPECT_FALSE(out[0].is_lfs());
  EXPECT_EQ(out[0].etag(), kOid);
  EXPECT_TRUE(out[1].is_lfs());
  EXPECT_EQ(out[1].etag(), kSha);
}

TEST(TreeTest, RefusesHostileEntries) {
  for (const char* path :
       {"../evil", "/etc/passwd", "a/../../b", "a\\\\b", "a\\u0000b", "", "a//b", "./x"}) {
    std::vector<TreeEntry> out;
    Status st = ParseTreePage("[" + Entry(path) + "]", &out);
    EXPECT_FALSE(st.ok()) << path;
    EXPECT_EQ(st.code(), StatusCode::kDataLoss) << path;
  }
  std::vector<TreeEntry> out;
  // sizes that lie or overflow, malformed oids
  EXPECT_FALSE(
      ParseTreePage(R"([{"type":"file","path":"a","size":-1,"oid":")" + kOid + "\"}]", &out).ok());
  EXPECT_FALSE(
      ParseTreePage(R"([{"type":"file","path":"a","size":1e30,"oid":")" + kOid + "\"}]", &out)
          .ok());
  EXPECT_FALSE(
      ParseTreePage(
          R"([{"type":"file","path":"a","size":18446744073709551615,"oid":")" + kOid + "\"}]", &out)
          .ok());
  EXPECT_FALSE(ParseTreePage(R"([{"type":"file","path":"a","size":1,"oid":"xyz"}])", &out).ok());
  EXPECT_FALSE(
      ParseTreePage("[" + Entry("a", R"(,"lfs":{"oid":")" + kSha + R"(","size":6})") + "]", &out)
          .ok());
  EXPECT_FALSE(ParseTreePage("{}", &out).ok());
  EXPECT_FALSE(ParseTreePage("not json", &out).ok());
}

TEST(CacheTest, FolderNamesAndRepoIds) {
  EXPECT_EQ(RepoFolderName(RepoType::kModel, "org/name"), "models--org--name");
  EXPECT_EQ(RepoFolderName(RepoType::kDataset, "gpt2"), "datasets--gpt2");
  RepoType t;
  std::string id;
  ASSERT_TRUE(ParseRepoFolderName("datasets--a--b", &t, &id).ok());
  EXPECT_EQ(t, RepoType::kDataset);
  EXPECT_EQ(id, "a/b");
  EXPECT_FALSE(ParseRepoFolderName("CACHEDIR.TAG", &t, &id).ok());
  EXPECT_TRUE(ValidateRepoId("meta-llama/Llama-3.1-8B").ok());
  EXPECT_FALSE(ValidateRepoId("../x").ok());
  EXPECT_FALSE(ValidateRepoId("a/b/c").ok());
  EXPECT_FALSE(ValidateRepoId("a b").ok());
}

TEST(CacheTest, RelativeSymlinksAndRefs) {
  char tmpl[] = "/tmp/mx_hub_test_XXXXXX";
  std::string root = ::mkdtemp(tmpl);
  RepoCache cache(root, RepoType::kModel, "org/m");
  std::string commit(40, 'c');
  ASSERT_TRUE(cache.Prepare(commit).ok());
  ASSERT_TRUE(cache.LinkSnapshot(commit, "a/b/c.bin", kSha).ok());
  char buf[256];
  ssize_t n = ::readlink(cache.snapshot_path(commit, "a/b/c.bin").c_str(), buf, sizeof buf);
  ASSERT_GT(n, 0);
  EXPECT_EQ(std::string(buf, n), "../../../../blobs/" + kSha);
  ASSERT_TRUE(cache.WriteRef("refs/pr/1", commit).ok());
  EXPECT_EQ(*ReadFile(cache.repo_dir() + "/refs/refs/pr/1"), commit);
  EXPECT_EQ(*cache.ResolveLocal("refs/pr/1"), commit);
  EXPECT_FALSE(cache.ResolveLocal("main").ok());
  std::system(("rm -rf " + root).c_str());
}

TEST(PatternTest, HfGlobSemantics) {
  EXPECT_TRUE(MatchesPatterns("a/b.json", {"*.json"}, {}));  // '*' crosses '/'
  EXPECT_FALSE(MatchesPatterns("a/b.json", {"*.bin"}, {}));
  EXPECT_TRUE(MatchesPatterns("sub/x", {"sub/"}, {}));
  EXPECT_FALSE(MatchesPatterns("x.bin", {}, {"*.bin"}));
  EXPECT_TRUE(MatchesPatterns("anything", {}, {}));
  EXPECT_FALSE(MatchesPatterns("A.JSON", {"*.json"}, {}));  // case-sensitive
}

// Progress records are opened O_NOFOLLOW and trusted only when ours and regular; Create
// never writes through whatever held the name.
TEST(ProgressFileTest, RefusesSymlinksAndForeignRecords) {
  char tmpl[] = "/tmp/mx_prog_link_XXXXXX";
  std::string dir = ::mkdtemp(tmpl);
  const uint64_t c = ProgressFile::kMinChunkBytes;
  std::string victim = dir + "/victim";
  ASSERT_TRUE(WriteFileAtomic(victim, "precious").ok());
  {
    auto real = ProgressFile::Create(dir + "/real", 2 * c, c);
    ASSERT_TRUE(real.ok());
  }
  ASSERT_EQ(::symlink((dir + "/real").c_str(), (dir + "/link").c_str()), 0);
  EXPECT_FALSE(ProgressFile::Open(dir + "/link", 2 * c).ok());
  EXPECT_TRUE(ProgressFile::Open(dir + "/real", 2 * c).ok());
  if (::geteuid() == 0) {
    ASSERT_EQ(::chown((dir + "/real").c_str(), 54321, 54321), 0);
    EXPECT_FALSE(ProgressFile::Open(dir + "/real", 2 * c).ok());
  }
  ASSERT_EQ(::symlink(victim.c_str(), (dir + "/planted").c_str()), 0);
  ASSERT_TRUE(ProgressFile::Create(dir + "/planted", 2 * c, c).ok());
  EXPECT_EQ(*ReadFile(victim), "precious");
  std::system(("rm -rf " + dir).c_str());
}

TEST(CacheTest, RefusesSymlinkedBlobsOrSnapshots) {
  char tmpl[] = "/tmp/mx_cache_link_XXXXXX";
  std::string root = ::mkdtemp(tmpl);
  RepoCache cache(root, RepoType::kModel, "org/m");
  const std::string commit(40, 'a');
  ASSERT_TRUE(cache.Prepare(commit).ok());
  EXPECT_TRUE(CheckRepoDirsNotSymlinks(cache.repo_dir()).ok());
  ASSERT_EQ(::rename(cache.blobs_dir().c_str(), (root + "/elsewhere").c_str()), 0);
  ASSERT_EQ(::symlink((root + "/elsewhere").c_str(), cache.blobs_dir().c_str()), 0);
  Status st = cache.Prepare(commit);
  EXPECT_EQ(st.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(st.message().find(cache.blobs_dir()), std::string::npos) << st.message();
  std::system(("rm -rf " + root).c_str());
}

TEST(ProgressFileTest, RecordsAndReopens) {
  char tmpl[] = "/tmp/mx_prog_test_XXXXXX";
  std::string dir = ::mkdtemp(tmpl);
  std::string path = dir + "/p";
  const uint64_t c = ProgressFile::kMinChunkBytes;
  const uint64_t size = 2 * c + 5;
  {
    auto p = ProgressFile::Create(path, size, c);
    ASSERT_TRUE(p.ok());
    EXPECT_EQ(p->chunk_count(), 3u);
    p->Record(1, c + 4);
    p->Record(2, size);
    p->Record(1, c + 2);  // never goes backwards
  }
  auto p = ProgressFile::Open(path, size);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->MissingInChunk(0).begin, 0u);
  EXPECT_EQ(p->MissingInChunk(1).begin, c + 4);
  EXPECT_EQ(p->MissingInChunk(1).end, 2 * c);
  EXPECT_EQ(p->MissingInChunk(2).begin, size);
  EXPECT_EQ(p->BytesDone(), 9u);
  EXPECT_FALSE(ProgressFile::Open(path, size + 1).ok());
  std::system(("rm -rf " + dir).c_str());
}

// Writes a progress record header (and `entries` zero chunk entries) by hand, as a
// corrupt or hostile file on disk would look.
void WriteRecord(const std::string& path, uint64_t size, uint64_t chunk, size_t entries) {
  std::string rec("MXPROG01", 8);
  rec.append(reinterpret_cast<const char*>(&size), 8);
  rec.append(reinterpret_cast<const char*>(&chunk), 8);
  rec.append(8 * entries, '\0');
  ASSERT_TRUE(WriteFileAtomic(path, rec).ok());
}

TEST(ProgressFileTest, RefusesImplausibleRecordsWithoutAllocating) {
  char tmpl[] = "/tmp/mx_prog_test_XXXXXX";
  std::string dir = ::mkdtemp(tmpl);
  std::string path = dir + "/p";
  const uint64_t four_gb = 4ull << 30;
  // chunk_bytes = 1 on a 4 GB file: a 32 GB chunk table. Must be refused, not allocated.
  WriteRecord(path, four_gb, 1, 0);
  auto tiny = ProgressFile::Open(path, four_gb);
  ASSERT_FALSE(tiny.ok());
  EXPECT_EQ(tiny.status().code(), StatusCode::kDataLoss);
  // chunk_bytes = 0.
  WriteRecord(path, four_gb, 0, 0);
  EXPECT_FALSE(ProgressFile::Open(path, four_gb).ok());
  // A chunk size that made (size + chunk - 1) wrap to zero chunks read as "all written".
  WriteRecord(path, four_gb, std::numeric_limits<uint64_t>::max(), 1);
  auto wrapped = ProgressFile::Open(path, four_gb);
  if (wrapped.ok()) {
    size_t cursor = 0;
    EXPECT_EQ(wrapped->PrefixEnd(&cursor), 0u) << "a wrapped chunk size marked bytes as written";
    EXPECT_EQ(wrapped->BytesDone(), 0u);
  }
  // A plausible chunk size but a table shorter than the file needs.
  WriteRecord(path, four_gb, 1 << 20, 3);
  EXPECT_FALSE(ProgressFile::Open(path, four_gb).ok());
  // Creating one is bounded the same way.
  EXPECT_FALSE(ProgressFile::Create(path, four_gb, 1).ok());
  EXPECT_FALSE(ProgressFile::Create(path, four_gb, 0).ok());
  EXPECT_TRUE(ProgressFile::Create(path, four_gb, 1 << 20).ok());
  std::system(("rm -rf " + dir).c_str());
}

class CacheAdminTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/mx_admin_test_XXXXXX";
    root_ = ::mkdtemp(tmpl);
  }
  void TearDown() override { std::system(("rm -rf " + root_).c_str()); }

  // A blob with its snapshot link; `ref` (if not empty) names the commit.
  std::string AddRevision(RepoCache& cache, const std::string& commit, const std::string& ref,
                          const std::string& contents) {
    EXPECT_TRUE(cache.Prepare(commit).ok());
    std::string etag = std::string(40, 'a' + static_cast<char>(contents.size() % 6));
    EXPECT_TRUE(WriteFileAtomic(cache.blob_path(etag), contents).ok());
    EXPECT_TRUE(cache.LinkSnapshot(commit, "f.txt", etag).ok());
    if (!ref.empty()) {
      EXPECT_TRUE(cache.WriteRef(ref, commit).ok());
    }
    return etag;
  }

  // Sets the mtime of `path` (and of what is below it) an hour back.
  void Age(const std::string& path) {
    std::string cmd = "find " + path + " -exec touch -h -d '1 hour ago' {} +";
    ASSERT_EQ(std::system(cmd.c_str()), 0);
  }

  std::string root_;
};

TEST_F(CacheAdminTest, PruneKeepsWhatChangedWithinTheGracePeriod) {
  RepoCache cache(root_, RepoType::kModel, "org/m");
  std::string detached(40, 'd');
  std::string blob = AddRevision(cache, detached, "", "x");
  // Just written (a download that has not written its ref yet): kept.
  auto kept = PruneCache(root_, 600);
  ASSERT_TRUE(kept.ok()) << kept.status().message();
  EXPECT_EQ(kept->revisions_removed, 0u);
  EXPECT_TRUE(::access(cache.blob_path(blob).c_str(), F_OK) == 0);
  // An hour old and detached: gone.
  Age(cache.repo_dir());
  auto pruned = PruneCache(root_, 600);
  ASSERT_TRUE(pruned.ok()) << pruned.status().message();
  EXPECT_EQ(pruned->revisions_removed, 1u);
  EXPECT_EQ(pruned->blobs_removed, 1u);
}

TEST_F(CacheAdminTest, CleanersLeaveAReposInUseAlone) {
  RepoCache cache(root_, RepoType::kModel, "org/m");
  std::string detached(40, 'd');
  std::string blob = AddRevision(cache, detached, "", "x");
  Age(cache.repo_dir());
  {
    auto use = cache.LockForUse(0);  // a stream or a download, maybe in another process
    ASSERT_TRUE(use.ok()) << use.status().message();
    auto rm = RemoveFromCache(root_, RepoType::kModel, "org/m", std::nullopt);
    ASSERT_FALSE(rm.ok());
    EXPECT_EQ(rm.status().code(), StatusCode::kFailedPrecondition);
    auto pruned = PruneCache(root_, 0);
    ASSERT_TRUE(pruned.ok()) << pruned.status().message();
    EXPECT_EQ(pruned->repos_in_use, 1u);
    EXPECT_EQ(pruned->revisions_removed, 0u);
    EXPECT_TRUE(::access(cache.blob_path(blob).c_str(), F_OK) == 0);
    // A cleaner holding it makes a user wait, then give up.
  }
  {
    auto clean = cache.LockForCleanup();
    ASSERT_TRUE(clean.ok());
    auto use = cache.LockForUse(50);
    EXPECT_FALSE(use.ok());
  }
  auto rm = RemoveFromCache(root_, RepoType::kModel, "org/m", std::nullopt);
  ASSERT_TRUE(rm.ok()) << rm.status().message();
  EXPECT_NE(::access(cache.repo_dir().c_str(), F_OK), 0);
  // The repo lock file survives: deleting it would let two holders lock two inodes.
  EXPECT_EQ(::access(cache.repo_lock_path().c_str(), F_OK), 0);
}

TEST_F(CacheAdminTest, WithoutLocksALiveTempFileProtectsTheRepo) {
  ::setenv("MX_TEST_DISABLE_FLOCK", "1", 1);
  RepoCache cache(root_, RepoType::kModel, "org/m");
  std::string detached(40, 'd');
  std::string blob = AddRevision(cache, detached, "", "x");
  Age(cache.repo_dir());
  // A download of this process is writing a temp file (as on NFS, where flock is a no-op).
  std::string temp =
      cache.blobs_dir() + "/" + std::string(64, 'e') + "." + UniqueTempSuffix() + ".incomplete";
  ASSERT_TRUE(WriteFileAtomic(temp, "partial").ok());
  {
    OwnedTempFile owned(temp);
    auto pruned = PruneCache(root_, 0);
    ASSERT_TRUE(pruned.ok()) << pruned.status().message();
    EXPECT_EQ(pruned->revisions_removed, 0u);
    EXPECT_EQ(::access(cache.blob_path(blob).c_str(), F_OK), 0);
    EXPECT_EQ(::access(temp.c_str(), F_OK), 0);
    auto rm = RemoveFromCache(root_, RepoType::kModel, "org/m", std::nullopt);
    EXPECT_EQ(rm.status().code(), StatusCode::kFailedPrecondition);
  }
  // The writer is gone (no thread of ours owns it any more): an orphan, pruned.
  auto pruned = PruneCache(root_, 0);
  ASSERT_TRUE(pruned.ok()) << pruned.status().message();
  EXPECT_EQ(pruned->revisions_removed, 1u);
  EXPECT_NE(::access(temp.c_str(), F_OK), 0);
  ::unsetenv("MX_TEST_DISABLE_FLOCK");
}

TEST_F(CacheAdminTest, FilesystemErrorsAreStatusesNotExceptions) {
  RepoCache cache(root_, RepoType::kModel, "org/m");
  std::string commit(40, 'c');
  AddRevision(cache, commit, "main", "x");
  // Symlink loops: stat gives ELOOP, which the throwing std::filesystem calls turn into
  // an exception.
  ASSERT_EQ(::symlink("loop", (cache.repo_dir() + "/refs/loop").c_str()), 0);
  ASSERT_EQ(::symlink("loop", (cache.snapshot_dir(commit) + "/loop").c_str()), 0);
  EXPECT_NO_THROW({
    auto repos = ScanCache(root_);
    ASSERT_TRUE(repos.ok());
    ASSERT_EQ(repos->size(), 1u);
    EXPECT_EQ((*repos)[0].revisions.size(), 1u);
  });
  EXPECT_NO_THROW({
    auto report = VerifyRepo(root_, RepoType::kModel, "org/m", std::nullopt);
    ASSERT_TRUE(report.ok());
    EXPECT_FALSE(report->problems.empty());  // the loop is reported, not thrown
  });
  EXPECT_NO_THROW({ (void)PruneCache(root_, 0); });
  // A path component that is a file where a directory belongs.
  ASSERT_TRUE(WriteFileAtomic(root_ + "/models--org--x", "not a dir").ok());
  EXPECT_NO_THROW({
    auto repos = ScanCache(root_);
    EXPECT_TRUE(repos.ok());
  });
  EXPECT_NO_THROW({ (void)RemoveFromCache(root_, RepoType::kModel, "org/x", std::nullopt); });
  // The referenced blob survived all of it.
  EXPECT_TRUE(cache.SnapshotFileOk(commit, "f.txt", 1));
}

TEST(HubErrorTest, NamesTheCauseAndTheFix) {
  Status gated = HubErrorStatus(401, "GatedRepo", "models/a/b@main", false);
  EXPECT_NE(gated.message().find("HF_TOKEN"), std::string::npos);
  EXPECT_EQ(HubErrorStatus(404, "RevisionNotFound", "x", false).code(), StatusCode::kNotFound);
  EXPECT_EQ(HubErrorStatus(503, "", "x", false).code(), StatusCode::kUnavailable);
}

TEST(HubErrorTest, ShowsTheServersMessageInsteadOfAGuess) {
  // A mirror whose own HF_TOKEN cannot read the repo: its words, not "token was refused".
  Status st = HubErrorStatus(401, "GatedRepo", "models/a/b@main", /*have_token=*/true,
                             "the server's HF_TOKEN cannot read this repo");
  EXPECT_NE(st.message().find("the server's HF_TOKEN cannot read this repo"), std::string::npos);
  EXPECT_EQ(st.message().find("refused"), std::string::npos);
  // Control characters are escaped, the length is bounded, UTF-8 is not cut in half.
  std::string hostile =
      "\x1b[2J\r\n" + std::string(kMaxServerMessageBytes - 7, 'x') + "\xc3\xa9tail";
  st = HubErrorStatus(500, "", "x", false, hostile);
  EXPECT_EQ(st.code(), StatusCode::kUnavailable);
  EXPECT_EQ(st.message().find('\x1b'), std::string::npos);
  EXPECT_NE(st.message().find("\\x1b[2J\\x0d\\x0a"), std::string::npos);
  EXPECT_EQ(st.message().find("tail"), std::string::npos);
  EXPECT_EQ(st.message().find("\\xc3"), std::string::npos);
  EXPECT_EQ(st.message().substr(st.message().size() - 3), "...");
  EXPECT_LT(st.message().size(), kMaxServerMessageBytes + 100);
}

TEST(TreeJsonTest, RoundTripsWithExtraFieldsAndRefusesHostileEtags) {
  TreeEntry a{"w.safetensors", 5, std::string(40, 'a'), std::string(64, 'b'), 0};
  TreeEntry b{"sub/c.json", 3, std::string(40, 'c'), std::nullopt, 0};
  std::string text = TreeJson({a, b}, {{"revision", "main"}, {"commit", std::string(40, 'd')}});
  auto back = ParseTreeJson(text, "t");
  ASSERT_TRUE(back.ok()) << back.status().message();
  ASSERT_EQ(back->size(), 2u);
  EXPECT_EQ(TreeJsonField(text, "revision"), "main");
  EXPECT_EQ(TreeJsonField(text, "absent"), std::nullopt);
  b.git_oid = "../../../etc/passwd";
  EXPECT_EQ(ParseTreeJson(TreeJson({b}), "t").status().code(), StatusCode::kDataLoss);
}

TEST(RevisionAnswerTest, CommitAndVisibility) {
  const std::string sha(40, 'a');
  auto open = ParseRevisionAnswer(R"({"sha":")" + sha + R"(","private":false,"gated":false})", "r");
  ASSERT_TRUE(open.ok());
  EXPECT_EQ(open->commit, sha);
  EXPECT_FALSE(open->restricted);
  for (const char* flags : {R"("gated":"manual")", R"("gated":"auto")", R"("private":true)"}) {
    auto gated = ParseRevisionAnswer(R"({"sha":")" + sha + R"(",)" + flags + "}", "r");
    ASSERT_TRUE(gated.ok()) << flags;
    EXPECT_TRUE(gated->restricted) << flags;
  }
  const std::vector<std::string> bad = {"{}", "[]", "not json", R"({"sha":"../../x"})",
                                        R"({"sha":")" + std::string(1 << 20, 'z') + R"(\u001b"})"};
  for (const std::string& body : bad) {
    auto r = ParseRevisionAnswer(body, "r");
    EXPECT_EQ(r.status().code(), StatusCode::kDataLoss);
    EXPECT_LT(r.status().message().size(), 256u);  // a hostile sha is not echoed whole
  }
}

TEST(ValidateRevisionTest, GitRefRulesOrACommit) {
  for (const char* good : {"main", "v1.0", "refs/pr/1", "release/2024-01", "caf\xc3\xa9",
                           "0123456789abcdef0123456789abcdef01234567"}) {
    EXPECT_TRUE(ValidateRevision(good).ok()) << good;
  }
  for (const char* bad : {"",       "..",         "../x", "a/../b",  "../../../../../../dev/zero",
                          "/etc",   "a/",         "a//b", ".hidden", "a/.b",
                          "x.lock", "a/b.lock/c", "a.",   "@",       "a@{1}",
                          "a b",    "a~1",        "a^",   "a:b",     "a?",
                          "a*",     "a[",         "a\\b", "a\nb",    "a\x7f",
                          "\xff",   "\xc0\x80"}) {
    auto st = ValidateRevision(bad);
    EXPECT_FALSE(st.ok()) << bad;
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_EQ(st.message().find('\n'), std::string::npos);
  }
  EXPECT_FALSE(ValidateRevision(std::string(256, 'a')).ok());
}

TEST(ValidateRevisionTest, CacheRefusesUncheckedRevisions) {
  std::string root = ::testing::TempDir() + "/mx-rev-" + std::to_string(::getpid());
  RepoCache cache(root, RepoType::kModel, "acme/m");
  auto r = cache.ResolveLocal("../../../../../../../../dev/zero");
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(cache.WriteRef("../../x", std::string(40, 'a')).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(cache.WriteRef("main", "../../x").code(), StatusCode::kInvalidArgument);
  // A ref that is not a small file is refused, not read to the end.
  ASSERT_TRUE(MakeDirs(cache.repo_dir() + "/refs").ok());
  ASSERT_EQ(::symlink("/dev/zero", (cache.repo_dir() + "/refs/main").c_str()), 0);
  auto zero = cache.ResolveLocal("main");
  EXPECT_FALSE(zero.ok());
}

}  // namespace
}  // namespace mx::hub
