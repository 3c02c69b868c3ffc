#include "streamer/streamer.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/magic.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <random>

#include "common/hash.h"
#include "safetensors/safetensors.h"
#include "storage/storage.h"
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

// A directory on a filesystem where O_DIRECT reads work (not tmpfs/ramfs, whose pages
// are the storage): $MX_TEST_DIRECT_DIR, /var/tmp, the working directory (the build tree),
// /tmp. Empty when none is, with the reasons in *why.
std::string FindDirectIoDir(std::string* why) {
  std::vector<std::string> candidates;
  if (const char* env = std::getenv("MX_TEST_DIRECT_DIR")) candidates.push_back(env);
  candidates.push_back("/var/tmp");
  char cwd[4096];
  if (::getcwd(cwd, sizeof cwd) != nullptr) candidates.push_back(cwd);
  candidates.push_back("/tmp");
  for (const auto& dir : candidates) {
    struct statfs fs;
    if (::statfs(dir.c_str(), &fs) != 0) {
      *why += dir + ": statfs failed; ";
      continue;
    }
    if (fs.f_type == TMPFS_MAGIC || fs.f_type == RAMFS_MAGIC) {
      *why += dir + ": tmpfs/ramfs; ";
      continue;
    }
    // Probe: one aligned O_DIRECT read of a 4 KiB file.
    std::string probe = dir + "/.mx_direct_probe_" + std::to_string(::getpid());
    std::ofstream(probe, std::ios::binary) << std::string(4096, 'x');
    int fd = ::open(probe.c_str(), O_RDONLY | O_DIRECT);
    bool works = false;
    if (fd >= 0) {
      void* buf = nullptr;
      if (::posix_memalign(&buf, 4096, 4096) == 0) {
        works = ::pread(fd, buf, 4096, 0) == 4096;
        std::free(buf);
      }
      ::close(fd);
    }
    ::unlink(probe.c_str());
    if (works) return dir;
    *why += dir + ": O_DIRECT open/read failed; ";
  }
  return "";
}

class StreamerTest : public ::testing::Test {
 protected:
  void SetUp() override { MakeModel("/tmp"); }

  // The test model in a new directory under `parent`.
  void MakeModel(const std::string& parent) {
    if (!dir_.empty()) std::system(("rm -rf " + dir_).c_str());
    expected_.clear();
    std::string tmpl = parent + "/mx_streamer_test_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr) << parent;
    dir_ = tmpl;
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
}

TEST_F(StreamerTest, DirectIoOnARealFilesystem) {
  std::string why;
  std::string parent = FindDirectIoDir(&why);
  if (parent.empty()) GTEST_SKIP() << "SKIPPED: no O_DIRECT-capable filesystem found: " << why;
  MakeModel(parent);
  // The reader really is O_DIRECT: aligned reads, and no mapping of the page cache.
  storage::StorageOptions so;
  so.direct_io = true;
  auto store = storage::OpenStorage(dir_, so);
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  auto objects = (*store)->List(dir_);
  ASSERT_TRUE(objects.ok());
  auto reader = (*store)->Open(objects->front());
  ASSERT_TRUE(reader.ok()) << reader.status().ToString();
  EXPECT_EQ((*reader)->alignment(), 4096u);
  void* base = nullptr;
  size_t len = 0;
  EXPECT_FALSE((*reader)->Map(0, 8, &base, &len).ok());
  // Unaligned chunk sizes exercise the bounce-buffer path as well as the aligned one.
  for (uint64_t chunk : {1ull << 20, 65536ull + 5}) {
    StreamOptions direct;
    direct.direct_io = true;
    direct.chunk_bytes = chunk;
    std::map<std::string, std::string> seen;
    auto st = StreamModel({dir_}, direct, [&](const Tensor& t, const std::shared_ptr<void>&) {
      seen[t.file + "/" + t.info.name] = std::string(t.data, t.info.bytes());
      return Status::OK();
    });
    ASSERT_TRUE(st.ok()) << "O_DIRECT under " << parent << ": " << st.status().ToString();
    EXPECT_EQ(seen, expected_);
  }
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

// Without a CUDA build, or without a driver/GPU: a clear error, never a crash. Returns
// true when a GPU is usable; otherwise checks the error it gave.
bool GpuUsableOrClearError(const Status& create_status) {
  if (create_status.ok()) return true;
  const std::string& m = create_status.message();
  if (CudaCompiledIn()) {
    EXPECT_NE(m.find("no usable CUDA device"), std::string::npos) << m;
    EXPECT_EQ(create_status.code(), StatusCode::kFailedPrecondition) << m;
  } else {
    EXPECT_NE(m.find("without CUDA"), std::string::npos) << m;
  }
  return false;
}

TEST(CudaUploaderTest, BadOptionsAreRefusedBeforeTouchingCuda) {
  // Zero slots made Upload take a slot modulo zero.
  const std::vector<std::pair<int, size_t>> bad = {{0, 1 << 20}, {-1, 1 << 20}, {2, 0}};
  for (auto [slots, slot_bytes] : bad) {
    CudaUploaderOptions o;
    o.slots = slots;
    o.slot_bytes = slot_bytes;
    auto up = CudaUploader::Create(0, o);
    ASSERT_FALSE(up.ok());
    EXPECT_EQ(up.status().code(), StatusCode::kInvalidArgument) << up.status().ToString();
  }
}

TEST(CudaUploaderTest, RoundTripsBytesOrSaysWhyNot) {
  CudaUploaderOptions o;
  o.slot_bytes = 1 << 20;
  o.slots = 2;
  o.block_bytes = 2 << 20;  // smaller than the data: a block of its own
  auto up = CudaUploader::Create(0, o);
  if (!GpuUsableOrClearError(up.status())) {
    GTEST_SKIP() << "SKIPPED: no GPU present: " << up.status().message();
  }
  std::string data((3 << 20) + 5, '\0');
  std::mt19937 rng(7);
  for (auto& c : data) c = static_cast<char>(rng());
  auto dev = (*up)->Upload(data.data(), data.size());  // spans several staging slots
  ASSERT_TRUE(dev.ok()) << dev.status().message();
  auto small = (*up)->Upload(data.data(), 1000);
  ASSERT_TRUE(small.ok()) << small.status().message();
  ASSERT_TRUE((*up)->Synchronize().ok());
  std::string back(data.size(), '\0');
  ASSERT_TRUE((*up)->Download(*dev, back.size(), back.data()).ok());
  EXPECT_EQ(back, data);
  std::string small_back(1000, '\0');
  ASSERT_TRUE((*up)->Download(*small, small_back.size(), small_back.data()).ok());
  EXPECT_EQ(small_back, data.substr(0, 1000));
  EXPECT_EQ((*up)->bytes_uploaded(), data.size() + 1000);
}

// The streamer's GPU destination: every tensor is read back from device memory and its
// digest compared with the host's, so nothing uploaded (or the wrong bytes) fails.
TEST_F(StreamerTest, CudaDestinationHoldsEveryTensorOnTheDevice) {
  CudaUploaderOptions o;
  o.block_bytes = 1 << 20;  // several pool blocks; the 2.8 MB tensor gets its own
  o.slot_bytes = 256 << 10;
  auto dest = CudaDestination::Create(0, o);
  if (!GpuUsableOrClearError(dest.status())) {
    GTEST_SKIP() << "SKIPPED: no GPU present: " << dest.status().message();
  }
  StreamOptions so;
  so.chunk_bytes = 1 << 20;
  auto stats = StreamModel(
      {dir_}, so, [&](const Tensor& t, const std::shared_ptr<void>&) { return (*dest)->Add(t); });
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  ASSERT_TRUE((*dest)->Finish().ok());
  ASSERT_EQ((*dest)->tensors().size(), expected_.size());
  uint64_t total = 0;
  for (const auto& [key, bytes] : expected_) {
    auto back = (*dest)->ReadBack(key);
    ASSERT_TRUE(back.ok()) << key << ": " << back.status().ToString();
    EXPECT_EQ(Sha256Hex(*back), Sha256Hex(bytes)) << key;
    total += bytes.size();
  }
  EXPECT_EQ((*dest)->uploader().bytes_uploaded(), total);
  // Pooled: a few blocks, not one allocation per tensor.
  EXPECT_LE((*dest)->uploader().device_bytes_reserved(), total + 4 * (1 << 20));
}

TEST(ResolveModelUriTest, PathsPassAndHubIdsResolveOrSayHow) {
  EXPECT_EQ(*ResolveModelUri("/data/model"), "/data/model");
  EXPECT_EQ(*ResolveModelUri("./m"), "./m");
  EXPECT_EQ(*ResolveModelUri("s3://b/k"), "s3://b/k");
  char tmpl[] = "/tmp/mx_resolve_test_XXXXXX";
  std::string cache = ::mkdtemp(tmpl);
  ::setenv("HF_HUB_CACHE", cache.c_str(), 1);
  auto missing = ResolveModelUri("org/m");
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("mx download org/m"), std::string::npos);
  EXPECT_EQ(ResolveModelUri("org/m@../../../etc").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ResolveModelUri("../x/../../y/z").ok(), true);  // a path: storage's business
  // A cached snapshot resolves to its directory.
  std::string commit(40, 'c');
  std::system(("mkdir -p " + cache + "/models--org--m/refs " + cache +
               "/models--org--m/snapshots/" + commit)
                  .c_str());
  std::ofstream(cache + "/models--org--m/refs/main") << commit;
  auto found = ResolveModelUri("org/m");
  ASSERT_TRUE(found.ok()) << found.status().ToString();
  EXPECT_EQ(*found, cache + "/models--org--m/snapshots/" + commit);
  ::unsetenv("HF_HUB_CACHE");
  std::system(("rm -rf " + cache).c_str());
}

TEST(ResolveModelUriTest, ExistingRelativePathWinsOverHubId) {
  char tmpl[] = "/tmp/mx_resolve_path_XXXXXX";
  std::string dir = ::mkdtemp(tmpl);
  std::string cache = dir + "/cache";
  std::string commit(40, 'd');
  std::system(("mkdir -p " + dir + "/acme/m " + cache + "/models--acme--m/refs " + cache +
               "/models--acme--m/snapshots/" + commit)
                  .c_str());
  std::ofstream(cache + "/models--acme--m/refs/main") << commit;
  ::setenv("HF_HUB_CACHE", cache.c_str(), 1);
  char old_cwd[4096];
  ASSERT_NE(::getcwd(old_cwd, sizeof old_cwd), nullptr);
  ASSERT_EQ(::chdir(dir.c_str()), 0);
  // acme/m exists here: a path, though the cache holds the hub id acme/m too.
  EXPECT_EQ(*ResolveModelUri("acme/m"), "./acme/m");
  std::ofstream(dir + "/acme/file.safetensors") << "x";
  EXPECT_EQ(*ResolveModelUri("acme/file.safetensors"), "./acme/file.safetensors");
  ASSERT_EQ(::chdir(old_cwd), 0);
  // Not on disk from here: the hub id.
  EXPECT_EQ(*ResolveModelUri("acme/m"), cache + "/models--acme--m/snapshots/" + commit);
  ::unsetenv("HF_HUB_CACHE");
  std::system(("rm -rf " + dir).c_str());
}

TEST(StreamOptionsTest, RunaiEnvironment) {
  ::setenv("RUNAI_STREAMER_CONCURRENCY", "7", 1);
  ::setenv("RUNAI_STREAMER_MEMORY_LIMIT", "-1", 1);
  auto o = StreamOptions::FromEnvironment();
  ASSERT_TRUE(o.ok());
  EXPECT_EQ(o->concurrency, 7);
  ::setenv("RUNAI_STREAMER_CONCURRENCY", "lots", 1);
  EXPECT_FALSE(StreamOptions::FromEnvironment().ok());
  ::setenv("RUNAI_STREAMER_CONCURRENCY", "99999999999999999999", 1);  // out of range
  EXPECT_FALSE(StreamOptions::FromEnvironment().ok());
  ::setenv("RUNAI_STREAMER_CONCURRENCY", "7x", 1);
  EXPECT_FALSE(StreamOptions::FromEnvironment().ok());
  ::unsetenv("RUNAI_STREAMER_CONCURRENCY");
  ::unsetenv("RUNAI_STREAMER_MEMORY_LIMIT");
}

TEST(StreamOptionsTest, SizesTakeUnitsAndNameTheirRange) {
  ::setenv("RUNAI_STREAMER_CHUNK_BYTESIZE", "4MiB", 1);
  ::setenv("RUNAI_STREAMER_MEMORY_LIMIT", "2GiB", 1);
  auto o = StreamOptions::FromEnvironment();
  ASSERT_TRUE(o.ok()) << o.status().message();
  EXPECT_EQ(o->chunk_bytes, 4u << 20);
  EXPECT_EQ(o->memory_limit, int64_t{2} << 30);
  ::setenv("RUNAI_STREAMER_CHUNK_BYTESIZE", "2GiB", 1);  // above the 1 GiB cap
  auto big = StreamOptions::FromEnvironment();
  ASSERT_FALSE(big.ok());
  EXPECT_NE(big.status().message().find("RUNAI_STREAMER_CHUNK_BYTESIZE ('2GiB'): must be a size "
                                        "between 1 bytes and 1 GiB"),
            std::string::npos)
      << big.status().message();
  ::unsetenv("RUNAI_STREAMER_CHUNK_BYTESIZE");
  ::unsetenv("RUNAI_STREAMER_MEMORY_LIMIT");
  EXPECT_EQ(*ParseMemoryLimit("--memory-limit", "-1"), -1);
  EXPECT_EQ(*ParseMemoryLimit("--memory-limit", "0"), 0);
  EXPECT_FALSE(ParseMemoryLimit("--memory-limit", "-2").ok());
  EXPECT_FALSE(ParseChunkSize("--chunk-size", "0").ok());
}

}  // namespace
}  // namespace mx::streamer
