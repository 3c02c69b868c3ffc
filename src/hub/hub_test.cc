#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#include "common/fs.h"
#include "hub/cache.h"
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
  for (const std::string& path :
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

TEST(ProgressFileTest, RecordsAndReopens) {
  char tmpl[] = "/tmp/mx_prog_test_XXXXXX";
  std::string dir = ::mkdtemp(tmpl);
  std::string path = dir + "/p";
  {
    auto p = ProgressFile::Create(path, 25, 10);
    ASSERT_TRUE(p.ok());
    EXPECT_EQ(p->chunk_count(), 3u);
    p->Record(1, 14);
    p->Record(2, 25);
    p->Record(1, 12);  // never goes backwards
  }
  auto p = ProgressFile::Open(path, 25);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->MissingInChunk(0).begin, 0u);
  EXPECT_EQ(p->MissingInChunk(1).begin, 14u);
  EXPECT_EQ(p->MissingInChunk(1).end, 20u);
  EXPECT_EQ(p->MissingInChunk(2).begin, 25u);
  EXPECT_EQ(p->BytesDone(), 9u);
  EXPECT_FALSE(ProgressFile::Open(path, 26).ok());
  std::system(("rm -rf " + dir).c_str());
}

TEST(HubErrorTest, NamesTheCauseAndTheFix) {
  Status gated = HubErrorStatus(401, "GatedRepo", "models/a/b@main", false);
  EXPECT_NE(gated.message().find("HF_TOKEN"), std::string::npos);
  EXPECT_EQ(HubErrorStatus(404, "RevisionNotFound", "x", false).code(), StatusCode::kNotFound);
  EXPECT_EQ(HubErrorStatus(503, "", "x", false).code(), StatusCode::kUnavailable);
}

}  // namespace
}  // namespace mx::hub
