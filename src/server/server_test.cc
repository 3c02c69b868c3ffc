#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "common/log.h"
#include "modelexpress/p2p.pb.h"
#include "server/config.h"
#include "server/model_manager.h"
#include "server/object_models.h"
#include "server/services.h"
#include "server/source_id.h"

namespace mx::server {
namespace {

using model_express::p2p::SourceIdentity;

SourceIdentity Base() {
  SourceIdentity id;
  id.set_mx_version("0.5.0");
  id.set_model_name("deepseek-ai/DeepSeek-V3");
  id.set_backend_framework(model_express::p2p::BACKEND_FRAMEWORK_VLLM);
  id.set_tensor_parallel_size(8);
  id.set_pipeline_parallel_size(1);
  id.set_expert_parallel_size(0);
  id.set_dtype("bfloat16");
  return id;
}

TEST(SourceIdTest, SpecTestVectors) {
  EXPECT_EQ(ComputeSourceId(Base()), "5a5f555570065064");
  SourceIdentity rev = Base();
  rev.set_revision("abc123def4567890");
  EXPECT_EQ(ComputeSourceId(rev), "d0c184b2a9a34c82");
  SourceIdentity extra = Base();
  (*extra.mutable_extra_parameters())["Foo"] = "a";
  (*extra.mutable_extra_parameters())["foo"] = "b";
  EXPECT_EQ(ComputeSourceId(extra), "bf71fb9340cd940a");

  SourceIdentity qwen;
  qwen.set_mx_version("0.5.0");
  qwen.set_model_name("Qwen/Qwen3-0.6B");
  qwen.set_backend_framework(model_express::p2p::BACKEND_FRAMEWORK_VLLM);
  qwen.set_tensor_parallel_size(1);
  qwen.set_pipeline_parallel_size(1);
  qwen.set_expert_parallel_size(1);
  qwen.set_dtype("bfloat16");
  EXPECT_EQ(
      CanonicalIdentityJson(qwen),
      R"({"backend_framework":1,"dtype":"bfloat16","expert_parallel_size":1,"extra_parameters":{},"model_name":"qwen/qwen3-0.6b","mx_source_type":0,"mx_version":"0.5.0","pipeline_parallel_size":1,"quantization":"","revision":"","tensor_parallel_size":1})");
  EXPECT_EQ(ComputeSourceId(qwen), "a222b41983f1f988");

  SourceIdentity llama;
  llama.set_mx_version("0.5.0");
  llama.set_model_name("meta-llama/Llama-3.1-70B-Instruct");
  llama.set_backend_framework(model_express::p2p::BACKEND_FRAMEWORK_VLLM);
  llama.set_tensor_parallel_size(8);
  llama.set_pipeline_parallel_size(1);
  llama.set_expert_parallel_size(1);
  llama.set_dtype("BFloat16");
  llama.set_quantization("FP8");
  llama.set_revision("main");
  (*llama.mutable_extra_parameters())["Max_Model_Len"] = "8192";
  (*llama.mutable_extra_parameters())["max_model_len"] = "4096";
  (*llama.mutable_extra_parameters())["kv"] = "Auto";
  EXPECT_EQ(ComputeSourceId(llama), "12da4ae2a06c392e");

  SourceIdentity triton;
  triton.set_mx_version("0.5.0");
  triton.set_mx_source_type(model_express::p2p::MX_SOURCE_TYPE_TRITON_CACHE);
  triton.set_model_name("Qwen/Qwen3-0.6B");
  triton.set_backend_framework(model_express::p2p::BACKEND_FRAMEWORK_SGLANG);
  triton.set_tensor_parallel_size(2);
  triton.set_pipeline_parallel_size(1);
  triton.set_expert_parallel_size(2);
  triton.set_dtype("float16");
  triton.set_torch_version("2.9.0");
  triton.set_gpu_arch("SM_90");
  EXPECT_EQ(ComputeSourceId(triton), "a7fae157931e1cfe");
}

TEST(ModelManagerTest, WeightFiles) {
  EXPECT_TRUE(IsWeightFile("model-00001-of-00002.safetensors"));
  EXPECT_TRUE(IsWeightFile("sub/pytorch_model.bin"));
  EXPECT_TRUE(IsWeightFile("model.ckpt.index"));
  EXPECT_TRUE(IsWeightFile("x.gguf"));
  EXPECT_FALSE(IsWeightFile("config.json"));
  EXPECT_FALSE(IsWeightFile("tokenizer.model"));
}

model_express::p2p::PublishMetadataRequest GoodPublish() {
  model_express::p2p::PublishMetadataRequest req;
  *req.mutable_identity() = Base();
  req.set_worker_id("worker-0");
  req.mutable_worker()->set_worker_rank(0);
  req.mutable_worker()->set_nixl_metadata(std::string(64 << 10, 'n'));
  return req;
}

TEST(PublishLimitsTest, RefusesOversizedFields) {
  EXPECT_TRUE(ValidatePublish(GoodPublish()).ok());
  auto req = GoodPublish();
  req.set_worker_id(std::string(9 << 20, 'w'));  // the 9 MB worker_id of the report
  Status st = ValidatePublish(req);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_LT(st.message().size(), 200u) << "the refusal must not echo the input";
  req = GoodPublish();
  req.mutable_identity()->set_model_name(std::string(kMaxIdBytes + 1, 'm'));
  EXPECT_EQ(ValidatePublish(req).code(), StatusCode::kInvalidArgument);
  req = GoodPublish();
  req.mutable_identity()->set_gpu_arch(std::string(kMaxIdBytes + 1, 'g'));  // any string field
  EXPECT_EQ(ValidatePublish(req).code(), StatusCode::kInvalidArgument);
  req = GoodPublish();
  for (int i = 0; i <= kMaxExtraParameters; ++i)
    (*req.mutable_identity()->mutable_extra_parameters())["k" + std::to_string(i)] = "v";
  EXPECT_EQ(ValidatePublish(req).code(), StatusCode::kInvalidArgument);
  req = GoodPublish();
  (*req.mutable_identity()->mutable_extra_parameters())["k"] =
      std::string(kMaxExtraValueBytes + 1, 'v');
  EXPECT_EQ(ValidatePublish(req).code(), StatusCode::kInvalidArgument);
  req = GoodPublish();
  req.mutable_worker()->set_nixl_metadata(std::string(kMaxWorkerBytes + 1, 'n'));
  EXPECT_EQ(ValidatePublish(req).code(), StatusCode::kInvalidArgument);
}

TEST(PublishLimitsTest, OwnerIsThePeerHost) {
  EXPECT_EQ(PeerHost("ipv4:10.1.2.3:41234"), "ipv4:10.1.2.3");
  EXPECT_EQ(PeerHost("ipv4:10.1.2.3:5"), PeerHost("ipv4:10.1.2.3:6"));
  EXPECT_EQ(PeerHost("ipv6:[::1]:5000"), "ipv6:[::1]");
  EXPECT_EQ(PeerHost("ipv6:[fe80::1]"), "ipv6:[fe80::1]");
  EXPECT_EQ(PeerHost("unix:/tmp/s"), "unix:/tmp/s");
}

TEST(ErrorTextTest, BoundedPrintableAndWithoutCachePaths) {
  EXPECT_EQ(ClientText("ok"), "ok");
  EXPECT_EQ(ClientText("a\r\nX-Injected: 1"), "a??X-Injected: 1");
  std::string big(5 << 20, 'x');
  EXPECT_EQ(ClientText(big).size(), kMaxEchoBytes + 3);
  grpc::Status g = ToGrpc(Status::DataLoss("read /srv/cache/models--a--b/blobs/x: short\n" + big),
                          "/srv/cache/");
  EXPECT_EQ(g.error_code(), grpc::StatusCode::DATA_LOSS);
  EXPECT_EQ(g.error_message().find("/srv/cache"), std::string::npos) << g.error_message();
  EXPECT_NE(g.error_message().find("<cache>/models--a--b/blobs/x"), std::string::npos);
  EXPECT_EQ(g.error_message().find('\n'), std::string::npos);
  EXPECT_LE(g.error_message().size(), kMaxErrorBytes + 3);
  EXPECT_TRUE(ToGrpc(Status::OK(), "/srv/cache").ok());
}

TEST(ErrorTextTest, NoLocalPathsAnywhere) {
  std::string m =
      SafeMessage("open /var/lib/secret/x.json: Permission denied; see '/etc/mx/y'", "/srv/cache");
  EXPECT_EQ(m, "open <path>: Permission denied; see '<path>'");
  // URLs, repo ids and the cache placeholder are not paths.
  EXPECT_EQ(SafeMessage("GET https://hub.example/api/models/org/m: HTTP 500", "/srv/cache"),
            "GET https://hub.example/api/models/org/m: HTTP 500");
  EXPECT_EQ(SafeMessage("read /srv/cache/models--a--b/x: short", "/srv/cache"),
            "read <cache>/models--a--b/x: short");
}

TEST(ErrorTextTest, CallerMessageDropsTheOperatorsAdvice) {
  std::string m = CallerMessage(
      Status::Unauthenticated("models/acme/gated@main: HTTP 401 (GatedRepo); this repo needs "
                              "authentication: set HF_TOKEN or pass --token"),
      "/c");
  EXPECT_EQ(m,
            "models/acme/gated@main: HTTP 401 (GatedRepo); the server's HF token cannot read "
            "this repo, or none is configured");
  m = CallerMessage(
      Status::PermissionDenied("config.json: HTTP 403 (access refused: set HF_TOKEN or --token)"),
      "/c");
  EXPECT_EQ(m,
            "config.json: HTTP 403 (the server's HF token cannot read this repo, or none is "
            "configured)");
  m = CallerMessage(Status::NotFound("models/a/b@main: HTTP 404 (RepoNotFound); the repository "
                                     "does not exist (or is private: set HF_TOKEN)"),
                    "/c");
  EXPECT_EQ(m,
            "models/a/b@main: HTTP 404 (RepoNotFound); the repository does not exist (or it is "
            "private and the server's HF token cannot read it)");
  m = CallerMessage(Status::FailedPrecondition(
                        "offline mode (HF_HUB_OFFLINE) and a/b@main is not in the cache at "
                        "/c; download it first with network access"),
                    "/c");
  EXPECT_EQ(m,
            "offline mode and a/b@main is not in the cache at <cache>; the server is offline "
            "and does not have this in its cache");
  // Unknown wording of an upstream refusal still gets the caller's view.
  m = CallerMessage(Status::PermissionDenied("x: HTTP 403"), "/c");
  EXPECT_NE(m.find("the server's HF token cannot read"), std::string::npos) << m;
  // Other errors pass unchanged.
  EXPECT_EQ(CallerMessage(Status::NotFound("no such file; try again"), "/c"),
            "no such file; try again");
}

TEST(ConfigTest, NearestWordSuggestsTypos) {
  std::vector<std::string> known = {"port", "mirror_port", "metrics_port", "chunk_size"};
  EXPECT_EQ(NearestWord("mirorr_port", known), "mirror_port");
  EXPECT_EQ(NearestWord("chunksize", known), "chunk_size");
  EXPECT_EQ(NearestWord("completely_else", known), "");
}

TEST(LogTest, JsonQuoteEscapesEverything) {
  EXPECT_EQ(JsonQuote("a\"b\\c\n\x1b[31m"), "\"a\\\"b\\\\c\\n\\u001b[31m\"");
  EXPECT_EQ(JsonQuote("bad \xff utf8"), "\"bad ? utf8\"");
}

// --- S3/GCS model names and copies (server/object_models.h) ---------------------------

TEST(ObjectModelTest, NamesAreCanonicalised) {
  auto n = ParseObjectModelName(kHuggingFace, " S3://bucket/org/model/rev//");
  ASSERT_TRUE(n.ok()) << n.status().message();
  EXPECT_EQ(n->provider, kS3);
  EXPECT_EQ(n->canonical(), "s3://bucket/org/model/rev");
  EXPECT_EQ(n->cache_subdir(), "s3/bucket/org/model/rev");
  auto g = ParseObjectModelName(kGcs, "gs://b-1.x_y/a");
  ASSERT_TRUE(g.ok()) << g.status().message();
  EXPECT_EQ(g->canonical(), "gs://b-1.x_y/a");
  EXPECT_EQ(g->cache_subdir(), "gcs/b-1.x_y/a");
  EXPECT_TRUE(IsObjectModel(kHuggingFace, "gs://b/a"));
  EXPECT_TRUE(IsObjectModel(kS3, "org/model"));
  EXPECT_FALSE(IsObjectModel(kHuggingFace, "org/model"));
  EXPECT_FALSE(IsObjectModel(kNgc, "s3://b/a"));
}

TEST(ObjectModelTest, HostileNamesAreRefused) {
  const std::vector<std::pair<int, std::string>> bad = {
      {kS3, "s3://"},           {kS3, "s3://b"},
      {kS3, "s3://b/"},         {kS3, "s3://b//x"},
      {kS3, "s3://b/a/../x"},   {kS3, "s3://b/./x"},
      {kS3, "s3://../x"},       {kS3, "s3://./x"},
      {kS3, "s3://b/a\x01z"},   {kS3, "s3://b/a\\z"},
      {kS3, "s3:///x"},         {kS3, "s3://.b/x"},
      {kS3, "s3://b c/x"},      {kS3, "b/x"},
      {kS3, "gs://b/x"},        {kGcs, "s3://b/x"},
      {kS3, "s3://b/\xff\xfe"}, {kS3, "s3://b/" + std::string(300, 'a')},
      {kNgc, "s3://b/x"},       {kHuggingFace, "org/model"}};
  for (const auto& [provider, name] : bad) {
    auto n = ParseObjectModelName(provider, name);
    EXPECT_FALSE(n.ok()) << name;
    if (!n.ok()) {
      EXPECT_EQ(n.status().code(), StatusCode::kInvalidArgument) << name;
    }
  }
}

class ObjectSnapshotTest : public ::testing::Test {
 protected:
  void SetUp() override {
    cache_ = std::filesystem::temp_directory_path() /
             ("mx-objsnap-" + std::to_string(::getpid()) + "-" +
              ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(cache_);
    dir_ = cache_ / "s3/b/org/m";
    std::filesystem::create_directories(dir_ / "sub");
    Write("config.json", "{}");
    Write("sub/w.safetensors", "12345");
    name_ = *ParseObjectModelName(kS3, "s3://b/org/m");
  }
  void TearDown() override { std::filesystem::remove_all(cache_); }
  void Write(const std::string& rel, const std::string& data) {
    std::ofstream(dir_ / rel, std::ios::binary) << data;
  }
  void Marker(bool ignore_weights, const std::string& extra_file = "") {
    std::string files = R"({"path":"config.json","size":2},{"path":"sub/w.safetensors","size":5})";
    if (!extra_file.empty()) files += "," + extra_file;
    Write(".mx-model", std::string(R"({"name":"s3://b/org/m","commit":")") + std::string(40, 'a') +
                           R"(","ignore_weights":)" + (ignore_weights ? "true" : "false") +
                           R"(,"files":[)" + files + "]}");
  }
  std::filesystem::path cache_, dir_;
  ObjectModelName name_;
};

TEST_F(ObjectSnapshotTest, ServesWhatTheMarkerRecords) {
  // No marker: not a copy (a half-written one never has one).
  EXPECT_EQ(ObjectModelSnapshot(cache_, name_, std::nullopt, false).status().code(),
            StatusCode::kNotFound);
  Marker(false);
  Write("stray.txt", "not in the marker");
  auto snap = ObjectModelSnapshot(cache_, name_, std::nullopt, false);
  ASSERT_TRUE(snap.ok()) << snap.status().message();
  EXPECT_EQ(snap->commit, std::string(40, 'a'));
  ASSERT_EQ(snap->files.size(), 2u);
  EXPECT_EQ(snap->files[0].relative_path, "config.json");
  EXPECT_EQ(snap->files[1].size, 5u);
  auto meta = ObjectModelSnapshot(cache_, name_, std::nullopt, true);
  ASSERT_TRUE(meta.ok());
  EXPECT_EQ(meta->files.size(), 1u);
  EXPECT_TRUE(ObjectModelSnapshot(cache_, name_, std::string(40, 'a'), false).ok());
  EXPECT_TRUE(ObjectModelSnapshot(cache_, name_, std::string("main"), false).ok());
  EXPECT_EQ(ObjectModelSnapshot(cache_, name_, std::string(40, 'b'), false).status().code(),
            StatusCode::kNotFound);
}

TEST_F(ObjectSnapshotTest, MetadataCopyIsNotTheFullModel) {
  Marker(true);
  EXPECT_TRUE(ObjectModelSnapshot(cache_, name_, std::nullopt, true).ok());
  EXPECT_EQ(ObjectModelSnapshot(cache_, name_, std::nullopt, false).status().code(),
            StatusCode::kNotFound);
}

TEST_F(ObjectSnapshotTest, IncompleteOrEscapingCopiesAreRefused) {
  Marker(false);
  Write("sub/w.safetensors", "123");  // shorter than recorded
  EXPECT_EQ(ObjectModelSnapshot(cache_, name_, std::nullopt, false).status().code(),
            StatusCode::kNotFound);
  Write("sub/w.safetensors", "12345");
  std::ofstream(cache_ / "secret", std::ios::binary) << "xx";
  std::filesystem::create_symlink(cache_ / "secret", dir_ / "link.json");
  Marker(false, R"({"path":"link.json","size":2})");
  EXPECT_FALSE(ObjectModelSnapshot(cache_, name_, std::nullopt, false).ok());
  Marker(false, R"({"path":"../../../../secret","size":2})");
  EXPECT_FALSE(ObjectModelSnapshot(cache_, name_, std::nullopt, false).ok());
  Write(".mx-model", "not json");
  EXPECT_EQ(ObjectModelSnapshot(cache_, name_, std::nullopt, false).status().code(),
            StatusCode::kNotFound);
}

TEST_F(ObjectSnapshotTest, RemoveTakesTheWholeDirectory) {
  Marker(false);
  EXPECT_TRUE(RemoveObjectModel(cache_, name_).ok());
  EXPECT_FALSE(std::filesystem::exists(dir_));
  EXPECT_TRUE(std::filesystem::exists(cache_ / "s3/b/org"));
  EXPECT_EQ(RemoveObjectModel(cache_, name_).code(), StatusCode::kNotFound);
}

}  // namespace
}  // namespace mx::server
