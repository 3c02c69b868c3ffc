#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>
#ifdef MX_TEST_CUDA
#include <cuda_runtime_api.h>
#endif

#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "common/hash.h"
#include "transfer/crc32c.h"
#include "transfer/device.h"
#include "transfer/pull.h"
#include "transfer/region.h"
#include "transfer/transport.h"

namespace mx::transfer {
namespace {

TEST(Crc32c, KnownVectors) {
  EXPECT_EQ(Crc32c("123456789"), 0xE3069283u);
  EXPECT_EQ(Crc32c(""), 0u);
  std::string zeros(32, '\0');
  EXPECT_EQ(Crc32c(zeros), 0x8A9136AAu);  // RFC 3720 B.4
}

// Bit-at-a-time reference: the definition, independent of both fast paths.
uint32_t ReferenceCrc32c(const char* p, size_t n) {
  uint32_t c = ~0u;
  for (size_t i = 0; i < n; ++i) {
    c ^= static_cast<uint8_t>(p[i]);
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
  }
  return ~c;
}

TEST(Crc32c, MatchesTheBitwiseDefinitionOnLargeBuffers) {
  std::vector<char> buf(3 * 24576 * 2 + 1234);
  std::mt19937 rng(7);
  for (auto& c : buf) c = static_cast<char>(rng());
  for (size_t off : {0, 1, 5}) {
    for (size_t n : {size_t{24575}, size_t{24576}, size_t{24576 * 3 + 9}, buf.size() - 5}) {
      EXPECT_EQ(Crc32c(0, buf.data() + off, n), ReferenceCrc32c(buf.data() + off, n))
          << off << " " << n;
    }
  }
}

TEST(Crc32c, ExtendsAcrossSplitsAndAlignments) {
  std::vector<char> buf(100000);
  std::mt19937 rng(1);
  for (auto& c : buf) c = static_cast<char>(rng());
  uint32_t whole = Crc32c(0, buf.data(), buf.size());
  for (size_t split : {1, 7, 8, 4095, 50001}) {
    uint32_t part = Crc32c(0, buf.data(), split);
    EXPECT_EQ(Crc32c(part, buf.data() + split, buf.size() - split), whole) << split;
  }
  EXPECT_NE(Crc32c(0, buf.data() + 1, 1000), Crc32c(0, buf.data(), 1000));
}

TEST(RegionRegistry, RefusesOverlapAndServesOnlyVerified) {
  std::vector<char> a(1000), b(1000);
  RegionRegistry r;
  auto A = reinterpret_cast<uint64_t>(a.data());
  ASSERT_TRUE(r.Register({"a", A, a.size(), -1, ""}, false).ok());
  EXPECT_FALSE(r.Register({"a2", A + 10, 10, -1, ""}, true).ok());
  EXPECT_EQ(r.Readable(A, 10).status().code(), StatusCode::kUnavailable);
  ASSERT_TRUE(r.MarkVerified(A, 100).ok());
  ASSERT_TRUE(r.MarkVerified(A + 200, 100).ok());
  EXPECT_TRUE(r.Readable(A + 10, 90).ok());
  EXPECT_FALSE(r.Readable(A + 50, 200).ok());  // spans a hole
  ASSERT_TRUE(r.MarkVerified(A + 100, 100).ok());
  EXPECT_TRUE(r.Readable(A + 50, 200).ok());  // merged
  EXPECT_EQ(r.verified_bytes(), 300u);
  EXPECT_EQ(r.Readable(A + 990, 20).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(r.Readable(reinterpret_cast<uint64_t>(b.data()), 1).status().code(),
            StatusCode::kNotFound);
  EXPECT_EQ(r.Readable(UINT64_MAX - 2, 10).status().code(), StatusCode::kNotFound);
}

TEST(RegionRegistry, ChecksumIsRememberedFromWhenTheRangeWasVerified) {
  std::vector<char> a(1 << 20, 'x');
  RegionRegistry r;
  auto A = reinterpret_cast<uint64_t>(a.data());
  ASSERT_TRUE(r.Register({"a", A, a.size(), -1, ""}, true).ok());
  r.PrecomputeChecksums(256 << 10, 2);
  const uint32_t before = Crc32c(0, a.data(), 256 << 10);
  a[5] = 'y';  // the memory changes after the source published it
  auto crc = r.Checksum(A, 256 << 10);
  ASSERT_TRUE(crc.ok());
  EXPECT_EQ(*crc, before);  // peers are told what was verified, so they detect the change
  // A range nobody precomputed is computed now, from the memory as it is.
  EXPECT_EQ(*r.Checksum(A + 1, 1000), Crc32c(0, a.data() + 1, 1000));
  EXPECT_EQ(r.Checksum(A + (1 << 20) - 10, 20).status().code(), StatusCode::kNotFound);

  // A receiver remembers the CRC it verified a chunk with.
  std::vector<char> b(4096, 'z');
  auto B = reinterpret_cast<uint64_t>(b.data());
  ASSERT_TRUE(r.Register({"b", B, b.size(), -1, ""}, false).ok());
  EXPECT_EQ(r.Checksum(B, 1024).status().code(), StatusCode::kUnavailable);
  ASSERT_TRUE(r.MarkVerified(B, 1024, 0x12345678u).ok());
  EXPECT_EQ(*r.Checksum(B, 1024), 0x12345678u);
}

TEST(RegionRegistry, OddRangesDoNotGrowTheRememberedChecksumsWithoutBound) {
  std::vector<char> a(256 << 10, 'x');  // room for 5 remembered CRCs (one per 64 KiB, + 1)
  RegionRegistry r;
  auto A = reinterpret_cast<uint64_t>(a.data());
  ASSERT_TRUE(r.Register({"a", A, a.size(), -1, ""}, true).ok());
  for (uint64_t off = 0; off < 1000; ++off) ASSERT_TRUE(r.Checksum(A + off, 100).ok());
  // Later ranges are still answered correctly, computed each time.
  a[2000] = 'q';
  EXPECT_EQ(*r.Checksum(A + 1999, 10), Crc32c(0, a.data() + 1999, 10));
  // The first ones were remembered: what they were when first asked.
  std::vector<char> orig(100, 'x');
  EXPECT_EQ(*r.Checksum(A, 100), Crc32c(0, orig.data(), 100));
}

TEST(Endpoint, ParsesOnlyTcpHostPort) {
  std::string h;
  int p = 0;
  EXPECT_TRUE(ParseTcpEndpoint("tcp://127.0.0.2:7000", &h, &p).ok());
  EXPECT_EQ(h, "127.0.0.2");
  EXPECT_EQ(p, 7000);
  EXPECT_FALSE(ParseTcpEndpoint("tcp://127.0.0.2", &h, &p).ok());
  EXPECT_FALSE(ParseTcpEndpoint("tcp://a b:1", &h, &p).ok());
  EXPECT_FALSE(ParseTcpEndpoint("tcp://h:99999", &h, &p).ok());
  EXPECT_FALSE(ParseTcpEndpoint("http://h:1", &h, &p).ok());
}

ConnectOptions TcpOnly() {
  ConnectOptions o;
  o.transport = "tcp";
  return o;
}

std::vector<char> RandomBytes(size_t n, int seed) {
  std::vector<char> v(n);
  std::mt19937 rng(seed);
  for (auto& c : v) c = static_cast<char>(rng());
  return v;
}

struct Source {
  std::vector<std::vector<char>> tensors;
  RegionRegistry regions;
  std::unique_ptr<Server> server;

  explicit Source(uint64_t rate = 0, std::string token = "") {
    tensors.push_back(RandomBytes(3 << 20, 1));
    tensors.push_back(RandomBytes(12345, 2));
    tensors.push_back({});
    for (auto& t : tensors) {
      if (!t.empty()) {
        EXPECT_TRUE(
            regions.Register({"t", reinterpret_cast<uint64_t>(t.data()), t.size(), -1, ""}, true)
                .ok());
      }
    }
    ServerOptions o;
    o.max_rate = rate;
    o.token = std::move(token);
    auto s = StartTcpServer(&regions, o);
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    server = std::move(*s);
  }
  PullPeer Peer(const std::string& name) {
    PullPeer p{name, server->endpoint(), {}, false};
    for (auto& t : tensors) p.remote_addr.push_back(reinterpret_cast<uint64_t>(t.data()));
    return p;
  }
};

// Host memory for every tensor of `src` (dest), and the pull items that land in it.
struct HostCopy {
  std::vector<std::vector<char>> dest;
  std::vector<PullItem> items;
};
HostCopy HostCopyOf(const Source& src) {
  HostCopy c;
  for (auto& t : src.tensors) c.dest.emplace_back(t.size());
  for (auto& d : c.dest) c.items.push_back({d.data(), d.size()});
  return c;
}

TEST(TcpPull, ByteForByteFromTwoPeersAndMarksVerified) {
  Source a, b;
  std::vector<std::vector<char>> dest;
  std::vector<PullItem> items;
  RegionRegistry mine;
  for (auto& t : a.tensors) dest.emplace_back(t.size());
  for (auto& d : dest) {
    items.push_back({d.data(), d.size()});
    if (!d.empty()) {
      ASSERT_TRUE(
          mine.Register({"d", reinterpret_cast<uint64_t>(d.data()), d.size(), -1, ""}, false).ok());
    }
  }
  PullOptions o;
  o.connect.transport = "tcp";
  o.chunk_bytes = 256 << 10;
  o.verified = &mine;
  PullStats stats;
  Status st = Pull(items, {a.Peer("a"), b.Peer("b")}, o, &stats);
  ASSERT_TRUE(st.ok()) << st.ToString();
  for (size_t i = 0; i < dest.size(); ++i) EXPECT_EQ(dest[i], a.tensors[i]) << i;
  EXPECT_EQ(stats.bytes, (3u << 20) + 12345u);
  EXPECT_EQ(mine.verified_bytes(), stats.bytes);
}

// A source's remembered CRCs predate an update of its weights in place: its peers' checks
// fail once, are asked again against the memory as it is now, and get the new bytes.
void PullsTheCurrentBytesAfterAnUpdateInPlace(const std::string& transport) {
  Source src;
  src.regions.PrecomputeChecksums(256 << 10, 1);
  src.tensors[0][300000] ^= 1;
  auto [dest, items] = HostCopyOf(src);
  PullOptions o;
  o.connect.transport = transport;
  o.chunk_bytes = 256 << 10;
  PullStats stats;
  Status st = Pull(items, {src.Peer("src")}, o, &stats);
  ASSERT_TRUE(st.ok()) << st.ToString();
  for (size_t i = 0; i < dest.size(); ++i) EXPECT_EQ(dest[i], src.tensors[i]) << i;
  // The fresh CRC is remembered: the next peer's first check passes.
  auto chunk = reinterpret_cast<uint64_t>(src.tensors[0].data()) + (256 << 10);
  EXPECT_EQ(*src.regions.Checksum(chunk, 256 << 10),
            Crc32c(0, src.tensors[0].data() + (256 << 10), 256 << 10));
}

TEST(TcpPull, SourceUpdatedInPlaceServesItsCurrentBytes) {
  PullsTheCurrentBytesAfterAnUpdateInPlace("tcp");
}

TEST(CmaPull, SourceUpdatedInPlaceServesItsCurrentBytes) {
  PullsTheCurrentBytesAfterAnUpdateInPlace("cma");
}

TEST(TcpPull, PeerStoppedMidTransferIsReplacedByAnother) {
  Source slow(8 << 20), healthy(8 << 20);  // 8 MiB/s each: about 0.2 s for the 3 MiB
  std::vector<char> dest(slow.tensors[0].size());
  std::vector<PullItem> items{{dest.data(), dest.size()}, {nullptr, 0}, {nullptr, 0}};
  std::vector<char> d1(12345);
  items[1] = {d1.data(), d1.size()};
  std::thread killer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(60));
    slow.server->Stop();
  });
  PullOptions o;
  o.connect.transport = "tcp";
  o.chunk_bytes = 64 << 10;
  PullStats stats;
  Status st = Pull(items, {slow.Peer("slow"), healthy.Peer("healthy")}, o, &stats);
  killer.join();
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_EQ(dest, slow.tensors[0]);
  EXPECT_EQ(d1, slow.tensors[1]);
  EXPECT_TRUE(stats.peers[0].failed);
  EXPECT_GT(stats.peers[1].bytes, 0u);
}

TEST(TcpPull, FailsWithoutHangingWhenEveryPeerDies) {
  Source only(4 << 20);
  std::vector<char> dest(only.tensors[0].size());
  std::vector<PullItem> items{{dest.data(), dest.size()}, {nullptr, 0}, {nullptr, 0}};
  std::thread killer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    only.server->Stop();
  });
  PullOptions o;
  o.connect.transport = "tcp";
  o.chunk_bytes = 64 << 10;
  auto t0 = std::chrono::steady_clock::now();
  Status st = Pull(items, {only.Peer("only")}, o, nullptr);
  killer.join();
  EXPECT_EQ(st.code(), StatusCode::kUnavailable) << st.ToString();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
}

TEST(TcpPull, PartialPeerServesOnlyVerifiedChunks) {
  Source seed;
  // A receiver that has verified only the first half of tensor 0.
  std::vector<char> half(seed.tensors[0].size());
  std::memcpy(half.data(), seed.tensors[0].data(), half.size() / 2);
  RegionRegistry partial_regions;
  ASSERT_TRUE(
      partial_regions
          .Register({"p", reinterpret_cast<uint64_t>(half.data()), half.size(), -1, ""}, false)
          .ok());
  ASSERT_TRUE(
      partial_regions.MarkVerified(reinterpret_cast<uint64_t>(half.data()), half.size() / 2).ok());
  auto server = StartTcpServer(&partial_regions, {});
  ASSERT_TRUE(server.ok());
  auto conn = Connect((*server)->endpoint(), TcpOnly());
  ASSERT_TRUE(conn.ok());
  std::vector<char> out(1024);
  EXPECT_TRUE((*conn)->Read(reinterpret_cast<uint64_t>(half.data()), 1024, out.data()).ok());
  Status st =
      (*conn)->Read(reinterpret_cast<uint64_t>(half.data()) + half.size() - 1024, 1024, out.data());
  EXPECT_EQ(st.code(), StatusCode::kUnavailable);
  EXPECT_FALSE((*conn)->broken());  // "not verified" keeps the connection
  EXPECT_EQ((*conn)->Read(8, 16, out.data()).code(), StatusCode::kNotFound);

  // The pull takes the first half from wherever and the rest from the seed only.
  std::vector<char> dest(half.size());
  std::vector<PullItem> items{{dest.data(), dest.size()}};
  // A swarm of two slots: the partial peer owns the odd chunks, but has only those of the
  // first half; it stops making progress there, so its slot is released to the seed.
  PullPeer p{"partial", (*server)->endpoint(), {reinterpret_cast<uint64_t>(half.data())}, true, 1};
  PullPeer s{
      "seed", seed.server->endpoint(), {reinterpret_cast<uint64_t>(seed.tensors[0].data())}, false};
  PullOptions o;
  o.connect.transport = "tcp";
  o.chunk_bytes = 128 << 10;
  o.swarm_slots = 2;
  o.self_slot = 0;
  o.release_ms = 200;
  PullStats stats;
  ASSERT_TRUE(Pull(items, {p, s}, o, &stats).ok());
  EXPECT_EQ(dest, seed.tensors[0]);
  // The partial peer sent its verified odd chunks (a quarter), the seed the rest.
  EXPECT_EQ(stats.peers[0].bytes, half.size() / 4);
  EXPECT_EQ(stats.peers[1].bytes, half.size() - half.size() / 4);
}

TEST(TcpServer, AnswersGarbageWithoutCrashing) {
  Source src;
  std::string host;
  int port = 0;
  ASSERT_TRUE(ParseTcpEndpoint(src.server->endpoint(), &host, &port).ok());
  auto conn = Connect(src.server->endpoint(), TcpOnly());
  ASSERT_TRUE(conn.ok());
  std::vector<char> out(16);
  // A read past the size limit is refused locally; one outside the regions by the peer.
  EXPECT_FALSE((*conn)->Read(1, kMaxReadBytes + 1, out.data()).ok());
  EXPECT_EQ((*conn)->Read(16, 16, out.data()).code(), StatusCode::kNotFound);
}

// A hostile peer on a raw socket: answers one read with a wrong checksum, or never answers.
class FakePeer {
 public:
  explicit FakePeer(bool answer) : answer_(answer) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a));
    ::listen(fd_, 4);
    socklen_t len = sizeof(a);
    getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] {
      sockaddr_in from{};
      socklen_t from_len = sizeof(from);
      int c = ::accept(fd_, reinterpret_cast<sockaddr*>(&from), &from_len);
      if (c < 0) return;
      char text[INET_ADDRSTRLEN] = {};
      inet_ntop(AF_INET, &from.sin_addr, text, sizeof(text));
      {
        std::lock_guard<std::mutex> l(mu_);
        peer_host_ = text;
      }
      char req[32];
      while (answer_ && ::recv(c, req, sizeof(req), MSG_WAITALL) == sizeof(req)) {
        {
          uint32_t op;
          std::memcpy(&op, req + 4, 4);
          std::lock_guard<std::mutex> l(mu_);
          ops_.push_back(op);
        }
        uint64_t size;
        std::memcpy(&size, req + 16, 8);
        char resp[24] = {'M', 'X', 'R', '1'};
        std::memcpy(resp + 8, &size, 8);
        uint32_t bad_crc = 12345;
        std::memcpy(resp + 16, &bad_crc, 4);
        std::vector<char> data(size, 'x');
        ::send(c, resp, sizeof(resp), MSG_NOSIGNAL);
        ::send(c, data.data(), data.size(), MSG_NOSIGNAL);
      }
      char sink[64];
      while (::recv(c, sink, sizeof(sink), 0) > 0) {
      }
      ::close(c);
    });
  }
  ~FakePeer() {
    ::shutdown(fd_, SHUT_RDWR);  // wakes accept(); closed only after the thread is done
    thread_.join();
    ::close(fd_);
  }
  std::string endpoint() const { return "tcp://127.0.0.1:" + std::to_string(port_); }
  std::string peer_host() {
    std::lock_guard<std::mutex> l(mu_);
    return peer_host_;
  }
  std::vector<uint32_t> ops() {
    std::lock_guard<std::mutex> l(mu_);
    return ops_;
  }

 private:
  bool answer_;
  std::mutex mu_;
  std::string peer_host_;
  std::vector<uint32_t> ops_;
  int fd_ = -1;
  int port_ = 0;
  std::thread thread_;
};

TEST(TcpConnection, BadChecksumIsDataLossAndBreaksTheConnection) {
  FakePeer peer(true);
  auto conn = Connect(peer.endpoint(), TcpOnly());
  ASSERT_TRUE(conn.ok());
  std::vector<char> out(1000);
  Status st = (*conn)->Read(4096, out.size(), out.data());
  EXPECT_EQ(st.code(), StatusCode::kDataLoss) << st.ToString();
  EXPECT_TRUE((*conn)->broken());
  // Asked twice: the second time for the CRC of the peer's memory as it is now (op 7).
  EXPECT_EQ(peer.ops(), (std::vector<uint32_t>{1, 7}));
}

TEST(TcpConnection, OutgoingConnectionsBindToTheWorkerHost) {
  FakePeer peer(true);
  ConnectOptions o = TcpOnly();
  o.bind_host = "127.0.0.5";  // MX_WORKER_HOST / --host
  auto conn = Connect(peer.endpoint(), o);
  ASSERT_TRUE(conn.ok()) << conn.status().ToString();
  std::vector<char> out(16);
  (void)(*conn)->Read(4096, out.size(), out.data());  // the accept has happened by now
  EXPECT_EQ(peer.peer_host(), "127.0.0.5");
}

TEST(TcpConnection, SilentPeerFailsAtTheStallDeadline) {
  FakePeer peer(false);
  ConnectOptions o = TcpOnly();
  o.stall_ms = 300;
  auto conn = Connect(peer.endpoint(), o);
  ASSERT_TRUE(conn.ok());
  std::vector<char> out(1000);
  auto t0 = std::chrono::steady_clock::now();
  Status st = (*conn)->Read(4096, out.size(), out.data());
  EXPECT_EQ(st.code(), StatusCode::kUnavailable) << st.ToString();
  EXPECT_NE(st.message().find("stalled"), std::string::npos) << st.message();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(3));
}

TEST(CmaPull, SameHostPeerIsReadInPlaceByDefault) {
  Source a, b;
  auto conn = Connect(a.server->endpoint(), {});  // auto
  ASSERT_TRUE(conn.ok()) << conn.status().ToString();
  EXPECT_STREQ((*conn)->transport(), "cma");
  auto [dest, items] = HostCopyOf(a);
  PullOptions o;
  o.chunk_bytes = 256 << 10;
  PullStats stats;
  ASSERT_TRUE(Pull(items, {a.Peer("a"), b.Peer("b")}, o, &stats).ok());
  for (size_t i = 0; i < dest.size(); ++i) EXPECT_EQ(dest[i], a.tensors[i]) << i;
  EXPECT_EQ(stats.peers[0].transport, "cma");
}

// A peer that verified only its first 4 KiB, read over `transport`: the verified part
// arrives byte for byte, the rest is "not verified" (Unavailable). `then` checks more.
void ReadsOnlyTheVerifiedPart(const std::string& transport, int seed,
                              const std::function<void(Connection&)>& then) {
  std::vector<char> mem = RandomBytes(1 << 20, seed);
  RegionRegistry regions;
  auto base = reinterpret_cast<uint64_t>(mem.data());
  ASSERT_TRUE(regions.Register({"p", base, mem.size(), -1, ""}, false).ok());
  ASSERT_TRUE(regions.MarkVerified(base, 4096).ok());
  auto server = StartTcpServer(&regions, {});
  ASSERT_TRUE(server.ok());
  ConnectOptions co;
  co.transport = transport;
  auto conn = Connect((*server)->endpoint(), co);
  ASSERT_TRUE(conn.ok()) << conn.status().ToString();
  std::vector<char> out(4096);
  ASSERT_TRUE((*conn)->Read(base, 4096, out.data()).ok());
  EXPECT_EQ(0, std::memcmp(out.data(), mem.data(), 4096));
  EXPECT_EQ((*conn)->Read(base + 4096, 4096, out.data()).code(), StatusCode::kUnavailable);
  then(**conn);
}

TEST(CmaPull, RefusesUnverifiedRangeAndAPeerThatIsNotAnMxServer) {
  ReadsOnlyTheVerifiedPart("cma", 4, [](Connection&) {});
  FakePeer fake(false);
  ConnectOptions quick;
  quick.transport = "cma";
  quick.stall_ms = 300;
  EXPECT_FALSE(Connect(fake.endpoint(), quick).ok());
}

#ifdef MX_HAVE_UCX
// UCX RMA: shared memory on one host by default, and UCX_TLS forcing TCP must work too.
void UcxRoundTrip() {
  Source a, b;
  auto [dest, items] = HostCopyOf(a);
  auto conn = Connect(a.server->endpoint(), [] {
    ConnectOptions o;
    o.transport = "ucx";
    return o;
  }());
  ASSERT_TRUE(conn.ok()) << conn.status().ToString();
  EXPECT_STREQ((*conn)->transport(), "ucx");
  PullOptions o;
  o.connect.transport = "ucx";
  o.chunk_bytes = 256 << 10;
  PullStats stats;
  Status st = Pull(items, {a.Peer("a"), b.Peer("b")}, o, &stats);
  ASSERT_TRUE(st.ok()) << st.ToString();
  for (size_t i = 0; i < dest.size(); ++i) EXPECT_EQ(dest[i], a.tensors[i]) << i;
}

TEST(UcxPull, ByteForByteDefaultTransports) { UcxRoundTrip(); }

TEST(UcxPull, ByteForByteWithUcxTlsForcedToTcp) {
  ::setenv("UCX_TLS", "tcp", 1);
  UcxRoundTrip();
  ::unsetenv("UCX_TLS");
}

TEST(UcxPull, SourceUpdatedInPlaceServesItsCurrentBytes) {
  PullsTheCurrentBytesAfterAnUpdateInPlace("ucx");
}

TEST(UcxPull, PartialPeerRefusesUnverifiedRange) {
  ReadsOnlyTheVerifiedPart("ucx", 3, [](Connection& c) { EXPECT_FALSE(c.broken()); });
}
#endif

// --- MX_P2P_TOKEN ---------------------------------------------------------------------------

struct TokenSource : Source {
  TokenSource() : Source(0, "s3cret-token") {}
};

Status PullWithToken(Source& src, const std::string& transport, const std::string& token) {
  auto [dest, items] = HostCopyOf(src);
  PullOptions o;
  o.connect.transport = transport;
  o.connect.token = token;
  o.connections_per_peer = 2;
  PullStats stats;
  Status st = Pull(items, {src.Peer("src")}, o, &stats);
  for (size_t i = 0; st.ok() && i < dest.size(); ++i) EXPECT_EQ(dest[i], src.tensors[i]) << i;
  return st;
}

TEST(Token, OnlyPeersThatProveTheTokenRead) {
  TokenSource src;
  for (const char* transport : {"tcp", "cma"}) {
    EXPECT_TRUE(PullWithToken(src, transport, "s3cret-token").ok()) << transport;
    Status none = PullWithToken(src, transport, "");
    EXPECT_NE(none.message().find("requires a token"), std::string::npos) << none.ToString();
    Status wrong = PullWithToken(src, transport, "s3cret-tokeN");
    EXPECT_NE(wrong.message().find("refused our token"), std::string::npos) << wrong.ToString();
    EXPECT_EQ(wrong.message().find("s3cret"), std::string::npos);
  }
  Source open;  // a token is only answered to a source that asks for one
  EXPECT_TRUE(PullWithToken(open, "tcp", "s3cret-token").ok());
}

TEST(Token, UnprovenConnectionIsRefusedAndAProofIsNotReplayable) {
  TokenSource src;
  std::string host;
  int port = 0;
  ASSERT_TRUE(ParseTcpEndpoint(src.server->endpoint(), &host, &port).ok());
  auto raw = [&] {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    return fd;
  };
  auto request = [](int fd, uint32_t op, uint64_t addr, uint64_t size) {
    char req[32] = {'M', 'X', 'P', '1'};
    std::memcpy(req + 4, &op, 4);
    std::memcpy(req + 8, &addr, 8);
    std::memcpy(req + 16, &size, 8);
    ASSERT_EQ(::send(fd, req, sizeof(req), MSG_NOSIGNAL), 32);
  };
  auto answer_code = [](int fd) -> int {
    char resp[24];
    if (::recv(fd, resp, sizeof(resp), MSG_WAITALL) != 24) return -1;
    uint32_t code;
    std::memcpy(&code, resp + 4, 4);
    return static_cast<int>(code);
  };
  // A read before any proof: refused (code 6), then the connection is closed.
  int fd = raw();
  request(fd, 1, reinterpret_cast<uint64_t>(src.tensors[0].data()), 4096);
  EXPECT_EQ(answer_code(fd), 6);
  char byte;
  EXPECT_EQ(::recv(fd, &byte, 1, 0), 0);
  ::close(fd);
  // A proof without a challenge, or for another connection's challenge: refused.
  fd = raw();
  request(fd, 9, 0, 32);
  EXPECT_EQ(answer_code(fd), 6);
  ::close(fd);
  fd = raw();
  request(fd, 8, 0, 0);
  char resp[24];
  ASSERT_EQ(::recv(fd, resp, sizeof(resp), MSG_WAITALL), 24);
  std::string challenge(16, '\0');
  ASSERT_EQ(::recv(fd, challenge.data(), 16, MSG_WAITALL), 16);
  request(fd, 9, 0, 32);
  std::string stale = HmacSha256("s3cret-token", "mx-p2p-token-v1" + std::string(16, 'x'));
  ASSERT_EQ(::send(fd, stale.data(), 32, MSG_NOSIGNAL), 32);
  EXPECT_EQ(answer_code(fd), 7);
  ::close(fd);
}

// --- device memory, through a stand-in device ---------------------------------------------

// A "GPU" whose memory sits at addresses reserved PROT_NONE: any host access to device
// memory that bypasses the copier crashes the test. Copies to the device run on their own
// thread, as a CUDA stream's would; `fail_after` makes the n-th one fail.
class FakeDevice : public DeviceCopier {
 public:
  explicit FakeDevice(size_t bytes) : storage_(bytes) {
    base_ = static_cast<char*>(
        mmap(nullptr, bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0));
  }
  ~FakeDevice() override { munmap(base_, storage_.size()); }

  uint64_t addr(size_t offset) const { return reinterpret_cast<uint64_t>(base_) + offset; }
  char* host_view(size_t offset) { return storage_.data() + offset; }

  Status ToHost(int device, uint64_t src, size_t n, char* dst) override {
    MX_RETURN_IF_ERROR(Check(device, src, n));
    std::memcpy(dst, storage_.data() + (src - addr(0)), n);
    return Status::OK();
  }
  Result<uint64_t> ToDeviceAsync(int device, const char* src, size_t n, uint64_t dst) override {
    MX_RETURN_IF_ERROR(Check(device, dst, n));
    std::lock_guard<std::mutex> l(mu_);
    if (++copies_ == fail_after_) return Status::Internal("device copy failed (stand-in)");
    uint64_t ticket = ++next_ticket_;
    pending_[ticket] = std::thread([this, src, n, dst] {
      std::this_thread::sleep_for(std::chrono::microseconds(200));
      std::memcpy(storage_.data() + (dst - addr(0)), src, n);
    });
    return ticket;
  }
  Status Wait(uint64_t ticket) override {
    std::thread t;
    {
      std::lock_guard<std::mutex> l(mu_);
      auto it = pending_.find(ticket);
      if (it == pending_.end()) return Status::Internal("unknown ticket");
      t = std::move(it->second);
      pending_.erase(it);
    }
    t.join();
    return Status::OK();
  }
  Result<char*> AllocateStaging() override {
    ++staging_buffers;
    return new char[kStagingBytes];
  }
  void FreeStaging(char* b) override { delete[] b; }

  std::atomic<int> staging_buffers{0};
  int fail_after_ = 0;

 private:
  Status Check(int device, uint64_t a, size_t n) const {
    if (device != 0 || a < addr(0) || a + n > addr(storage_.size())) {
      return Status::InvalidArgument("outside the stand-in device's memory");
    }
    return Status::OK();
  }
  std::vector<char> storage_;
  char* base_ = nullptr;
  std::mutex mu_;
  uint64_t next_ticket_ = 0;
  int copies_ = 0;
  std::map<uint64_t, std::thread> pending_;
};

TEST(DevicePull, SourceOnADeviceIsServedThroughStagingOverTcp) {
  FakeDevice gpu(9 << 20);
  auto want = RandomBytes(9 << 20, 7);
  std::memcpy(gpu.host_view(0), want.data(), want.size());
  RegionRegistry regions;
  EXPECT_FALSE(regions.Register({"w", gpu.addr(0), want.size(), 0, ""}, true).ok());
  regions.EnableDevices(&gpu, 4);
  ASSERT_TRUE(regions.Register({"w", gpu.addr(0), want.size(), 0, ""}, true).ok());
  regions.PrecomputeChecksums(kDefaultChunkBytes, 2);  // reads the device through staging
  auto server = StartTcpServer(&regions, {});
  ASSERT_TRUE(server.ok());

  std::vector<char> got(want.size());
  PullPeer peer{"gpu", (*server)->endpoint(), {gpu.addr(0)}, false};
  peer.device_memory = true;  // "auto" would pick cma for this same-host peer otherwise
  PullStats stats;
  Status st = Pull({{got.data(), got.size()}}, {peer}, {}, &stats);
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_EQ(got, want);
  EXPECT_EQ(stats.peers[0].transport, "tcp");
  EXPECT_LE(gpu.staging_buffers.load(), 4);

  // A same-host reader that would read the memory in place is refused, not crashed.
  auto cma = Connect((*server)->endpoint(), [] {
    ConnectOptions o;
    o.transport = "cma";
    return o;
  }());
  ASSERT_TRUE(cma.ok()) << cma.status().ToString();
  Status refused = (*cma)->Read(gpu.addr(0), 4096, got.data());
  EXPECT_EQ(refused.code(), StatusCode::kFailedPrecondition) << refused.ToString();
  EXPECT_NE(refused.message().find("device memory"), std::string::npos);
}

TEST(DevicePull, TargetOnADeviceLandsCheckedChunksAndServesThemOn) {
  Source src;
  FakeDevice gpu(4 << 20);
  RegionRegistry mine;
  mine.EnableDevices(&gpu, 8);
  std::vector<PullItem> items;
  size_t off = 0;
  for (auto& t : src.tensors) {
    items.push_back({reinterpret_cast<char*>(gpu.addr(off)), t.size(), 0});
    if (!t.empty()) {
      ASSERT_TRUE(mine.Register({"d", gpu.addr(off), t.size(), 0, ""}, false).ok());
    }
    off += (t.size() + 63) & ~size_t{63};
  }
  PullOptions o;
  o.connect.transport = "tcp";
  o.chunk_bytes = 256 << 10;
  o.verified = &mine;
  o.staging = mine.staging();
  PullStats stats;
  Status st = Pull(items, {src.Peer("src")}, o, &stats);
  ASSERT_TRUE(st.ok()) << st.ToString();
  off = 0;
  for (auto& t : src.tensors) {
    EXPECT_EQ(std::vector<char>(gpu.host_view(off), gpu.host_view(off) + t.size()), t);
    off += (t.size() + 63) & ~size_t{63};
  }
  EXPECT_EQ(mine.verified_bytes(), stats.bytes);

  // The received device memory is served on (a swarm peer reading this receiver).
  auto server = StartTcpServer(&mine, {});
  ASSERT_TRUE(server.ok());
  std::vector<char> again(src.tensors[0].size());
  PullPeer peer{"receiver", (*server)->endpoint(), {gpu.addr(0)}, false};
  peer.device_memory = true;
  PullStats s2;
  ASSERT_TRUE(Pull({{again.data(), again.size()}}, {peer}, {}, &s2).ok());
  EXPECT_EQ(again, src.tensors[0]);
}

TEST(DevicePull, OneStagingBufferServesManyConnectionsWithoutWaiting) {
  Source src;
  FakeDevice gpu(4 << 20);
  StagingPool staging(&gpu, 1);  // four pulling threads share one buffer
  std::vector<PullItem> items{{reinterpret_cast<char*>(gpu.addr(0)), src.tensors[0].size(), 0}};
  PullOptions o;
  o.connect.transport = "tcp";
  o.chunk_bytes = 128 << 10;
  o.connections_per_peer = 4;
  o.staging = &staging;
  PullPeer peer = src.Peer("src");
  peer.remote_addr.resize(1);
  PullStats stats;
  auto t0 = std::chrono::steady_clock::now();
  Status st = Pull(items, {peer}, o, &stats);
  ASSERT_TRUE(st.ok()) << st.ToString();
  // A thread holding a buffer never waits for another (that would take the stall deadline).
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
  EXPECT_EQ(std::vector<char>(gpu.host_view(0), gpu.host_view(0) + src.tensors[0].size()),
            src.tensors[0]);
  EXPECT_EQ(gpu.staging_buffers.load(), 1);
}

TEST(DevicePull, AFailedDeviceCopyEndsThePullWithItsError) {
  Source src;
  FakeDevice gpu(4 << 20);
  gpu.fail_after_ = 3;
  StagingPool staging(&gpu, 4);
  std::vector<PullItem> items{{reinterpret_cast<char*>(gpu.addr(0)), src.tensors[0].size(), 0}};
  PullOptions o;
  o.connect.transport = "tcp";
  o.chunk_bytes = 256 << 10;
  o.staging = &staging;
  PullStats stats;
  PullPeer peer = src.Peer("src");
  peer.remote_addr.resize(1);
  Status st = Pull(items, {peer}, o, &stats);
  EXPECT_EQ(st.code(), StatusCode::kInternal) << st.ToString();
  EXPECT_NE(st.message().find("device copy failed"), std::string::npos);
  // Without staging, device items are refused up front.
  o.staging = nullptr;
  EXPECT_EQ(Pull(items, {peer}, o, &stats).code(), StatusCode::kFailedPrecondition);
}

TEST(DeviceCopier, CudaRoundTripThroughRealDeviceMemory) {
  auto copier = CudaCopier();
  if (!copier.ok()) {
    EXPECT_EQ(copier.status().code(), StatusCode::kFailedPrecondition);
    GTEST_SKIP() << "SKIPPED (untested on a GPU): " << copier.status().message();
  }
#ifndef MX_TEST_CUDA
  FAIL() << "a CUDA copier without the CUDA toolkit at build time";
#else
  // A source on GPU 0 served to a host target, then a target on GPU 0 pulling it back.
  const size_t n = (9 << 20) + 123;
  auto want = RandomBytes(n, 11);
  void* src_dev = nullptr;
  void* dst_dev = nullptr;
  ASSERT_EQ(cudaMalloc(&src_dev, n), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dst_dev, n), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(src_dev, want.data(), n, cudaMemcpyHostToDevice), cudaSuccess);
  RegionRegistry regions;
  regions.EnableDevices(*copier);
  ASSERT_TRUE(regions.Register({"w", reinterpret_cast<uint64_t>(src_dev), n, 0, ""}, true).ok());
  auto server = StartTcpServer(&regions, {});
  ASSERT_TRUE(server.ok());
  PullPeer peer{"gpu", (*server)->endpoint(), {reinterpret_cast<uint64_t>(src_dev)}, false};
  peer.device_memory = true;
  std::vector<char> got(n);
  PullStats stats;
  ASSERT_TRUE(Pull({{got.data(), n}}, {peer}, {}, &stats).ok());
  EXPECT_EQ(got, want);
  StagingPool staging(*copier, 8);
  PullOptions o;
  o.staging = &staging;
  Status st = Pull({{static_cast<char*>(dst_dev), n, 0}}, {peer}, o, &stats);
  ASSERT_TRUE(st.ok()) << st.ToString();
  std::vector<char> back(n);
  ASSERT_EQ(cudaMemcpy(back.data(), dst_dev, n, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(back, want);
  (*server)->Stop();
  cudaFree(src_dev);
  cudaFree(dst_dev);
#endif
}

}  // namespace
}  // namespace mx::transfer
