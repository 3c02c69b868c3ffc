#include "streamer/streamer.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <random>

#include "safetensors/safetensors.h"
#include "streamer/cuda_upload.h"

namespace mx::streamer {
namespace {

using safetensors::DType;

// Writes a shard with deterministic tensor bytes; returns name -> expected bytes.
std::map<std::string, std::string> WriteShard(const std::string& path,
                                              const std::vector<safetensors::TensorSpec>& specs,
                                              int seed) {
  std::vector<safetensors::TensorInfo> layout;
  std::string image = safetensors::BuildHeader(specs, {{"format", "pt"}}, &layout);
  std::mt19937 rng(seed);
  std::map<std::string, std::string> expected;
  for (const auto& t : layout) {
    std::string bytes(t.bytes(), '\0');
    for (auto& c : bytes) c = static_cast<char>(rng());
    expected[t.name] = bytes;
    image += bytes;
  }
  std::ofstream(path, std::ios::binary) << image;
  return expected;
}

class StreamerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/mx_streamer_test_XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    auto a = WriteShard(dir_ + "/model-00001-of-00002.safetensors",
                        {{"big", DType::kF32, {700, 1000}},
                         {"bias", DType::kBF16, {333}},
                         {"scalar", DType::kI64, {}},
                         {"empty", DType::kF16, {0, 5}}},
                        1);
    auto b = WriteShard(dir_ + "/model-00002-of-00002.safetensors",
                        {{"w2", DType::kF16, {1024, 513}}, {"flag", DType::kBool, {3}}}, 2);
    for (auto& [k, v] : a) expected_["model-00001-of-00002.safetensors/" + k] = v;
    for (auto& [k, v] : b) expected_["model-00002-of-00002.safetensors/" + k] = v;
    std::ofstream(dir_ + "/config.json") << "{}";
  }
  void TearDown() override { std::system(("rm -rf " + dir_).c_str()); }

  // Streams and checks every tensor's bytes; returns the stats.
  StreamStats StreamAndCheck(StreamOptions o) {
    std::map<std::string, std::string> seen;
    auto stats = StreamModel({dir_}, o, [&](const Tensor& t, const std::shared_ptr<void>&) {
      seen[t.file + "/" + t.info.name] = std::string(t.data, t.info.bytes());
      return Status::OK();
    });
    EXPECT_TRUE(stats.ok()) << stats.status().ToString();
    EXPECT_EQ(seen, expected_);
    return stats.ok() ? *stats : StreamStats{};
  }

  std::string dir_;
  std::map<std::string, std::string> expected_;
};

TEST_F(StreamerTest, EveryTensorArrivesIntactWithAnySettings) {
  for (uint64_t chunk : {4096ull, 65536ull + 5, 8ull << 20}) {
    for (int conc : {1, 3, 16}) {
      StreamOptions o;
      o.chunk_bytes = chunk;
      o.concurrency = conc;
      StreamStats s = StreamAndCheck(o);
      EXPECT_EQ(s.files, 2u);
      EXPECT_EQ(s.tensors, 6u);
    }
  }
  StreamOptions direct;
  direct.direct_io = true;
  direct.chunk_bytes = 1 << 20;
  std::map<std::string, std::string> seen;
  auto st = StreamModel({dir_}, direct, [&](const Tensor& t, const std::shared_ptr<void>&) {
    seen[t.file + "/" + t.info.name] = std::string(t.data, t.info.bytes());
    return Status::OK();
  });
  if (st.ok())
    EXPECT_EQ(seen, expected_);  // tmpfs has no O_DIRECT: then the error is clear
  else
    EXPECT_NE(st.status().message().find("O_DIRECT"), std::string::npos) << st.status().message();
}

TEST_F(StreamerTest, MemoryLimitIsHonouredAndHeldMemoryIsNotReused) {
  StreamOptions o;
  o.memory_limit = 0;  // the largest tensor (2.8 MB)
  o.chunk_bytes = 1 << 20;
  StreamAndCheck(o);
  // Holding a tensor keeps its bytes valid while others stream.
  std::vector<std::pair<std::shared_ptr<void>, std::pair<const char*, std::string>>> held;
  o.memory_limit = 8 << 20;
  auto stats = StreamModel({dir_}, o, [&](const Tensor& t, const std::shared_ptr<void>& hold) {
    if (t.info.name == "bias")
      held.push_back({hold, {t.data, std::string(t.data, t.info.bytes())}});
    return Status::OK();
  });
  ASSERT_TRUE(stats.ok());
  ASSERT_EQ(held.size(), 1u);
  EXPECT_EQ(std::string(held[0].second.first, held[0].second.second.size()), held[0].second.second);
  o.memory_limit = 1 << 20;  // smaller than the largest tensor
  auto too_small = StreamModel(
      {dir_}, o, [](const Tensor&, const std::shared_ptr<void>&) { return Status::OK(); });
  ASSERT_FALSE(too_small.ok());
  EXPECT_NE(too_small.status().message().find("RUNAI_STREAMER_MEMORY_LIMIT"), std::string::npos);
}

TEST_F(StreamerTest, CallerOwnedDestination) {
  std::map<std::string, std::string> dest;
  auto stats = StreamModel(
      {dir_}, StreamOptions{},
      [](const Tensor&, const std::shared_ptr<void>&) { return Status::OK(); },
      [&](const std::string& file, const safetensors::TensorInfo& t) {
        std::string& s = dest[file + "/" + t.name];
        s.resize(t.bytes());
        return s.data();
      });
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_EQ(dest, expected_);
}

TEST_F(StreamerTest, BadFilesGiveClearErrors) {
  std::ofstream(dir_ + "/model-00002-of-00002.safetensors", std::ios::binary)
      << std::string("\x05\0\0\0\0\0\0\0{}", 10);
  auto st = StreamModel({dir_}, StreamOptions{},
                        [](const Tensor&, const std::shared_ptr<void>&) { return Status::OK(); });
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.status().message().find("model-00002-of-00002.safetensors"), std::string::npos);
  EXPECT_NE(st.status().message().find("header past end"), std::string::npos);
  auto missing =
      StreamModel({dir_ + "/nope"}, StreamOptions{},
                  [](const Tensor&, const std::shared_ptr<void>&) { return Status::OK(); });
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
}

TEST(CudaUploaderTest, RoundTripsBytesOrSaysWhyNot) {
  auto up = CudaUploader::Create(0, 1 << 20, 2);
  if (!up.ok()) {
    // Without a CUDA build or device: a clear error, never a crash.
    EXPECT_NE(up.status().message().find(CudaCompiledIn() ? "CUDA device" : "without CUDA"),
              std::string::npos)
        << up.status().message();
    GTEST_SKIP() << up.status().message();
  }
  std::string data((3 << 20) + 5, '\0');
  std::mt19937 rng(7);
  for (auto& c : data) c = static_cast<char>(rng());
  auto dev = (*up)->Upload(data.data(), data.size());  // spans several staging slots
  ASSERT_TRUE(dev.ok()) << dev.status().message();
  ASSERT_TRUE((*up)->Synchronize().ok());
  std::string back(data.size(), '\0');
  ASSERT_TRUE((*up)->Download(*dev, back.size(), back.data()).ok());
  EXPECT_EQ(back, data);
  CudaUploader::FreeDevice(*dev);
}

TEST(StreamOptionsTest, RunaiEnvironment) {
  ::setenv("RUNAI_STREAMER_CONCURRENCY", "7", 1);
  ::setenv("RUNAI_STREAMER_MEMORY_LIMIT", "-1", 1);
  auto o = StreamOptions::FromEnvironment();
  ASSERT_TRUE(o.ok());
  EXPECT_EQ(o->concurrency, 7);
  ::setenv("RUNAI_STREAMER_CONCURRENCY", "lots", 1);
  EXPECT_FALSE(StreamOptions::FromEnvironment().ok());
  ::unsetenv("RUNAI_STREAMER_CONCURRENCY");
  ::unsetenv("RUNAI_STREAMER_MEMORY_LIMIT");
}

}  // namespace
}  // namespace mx::streamer
