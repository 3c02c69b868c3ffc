// Benchmark client for StreamModelFiles: N concurrent clients, each on its own TCP
// connection, stream a whole model and discard it (checking offsets and sizes). Prints
// one JSON line: clients, chunk_size, bytes, seconds, MB/s.
#include <grpcpp/grpcpp.h>
#include <malloc.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "modelexpress/model.grpc.pb.h"

namespace mm = model_express::model;

int main(int argc, char** argv) {
  if (argc < 5) {
    std::fprintf(stderr, "usage: %s ADDRESS MODEL CLIENTS CHUNK_BYTES\n", argv[0]);
    return 2;
  }
  mallopt(M_MMAP_THRESHOLD, 64 << 20);  // as the server does: no fresh mmap per message
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
  std::string address = argv[1], model = argv[2];
  int clients = std::atoi(argv[3]);
  uint32_t chunk = static_cast<uint32_t>(std::strtoul(argv[4], nullptr, 10));
  std::atomic<uint64_t> total{0};
  std::atomic<int> failures{0};
  auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (int i = 0; i < clients; ++i) {
    threads.emplace_back([&, i] {
      grpc::ChannelArguments args;
      args.SetMaxReceiveMessageSize(64 << 20);
      args.SetInt("grpc.use_local_subchannel_pool", 1);  // one connection per client
      args.SetInt("mx.bench.client", i);
      auto channel = grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
      auto stub = mm::ModelService::NewStub(channel);
      grpc::ClientContext ctx;
      mm::ModelFilesRequest req;
      req.set_model_name(model);
      req.set_chunk_size(chunk);
      auto reader = stub->StreamModelFiles(&ctx, req);
      mm::FileChunk c;
      std::map<std::string, uint64_t> next;
      uint64_t bytes = 0;
      while (reader->Read(&c)) {
        uint64_t& expect = next[c.relative_path()];
        if (c.offset() != expect) ++failures;
        expect += c.data().size();
        bytes += c.data().size();
      }
      grpc::Status st = reader->Finish();
      if (!st.ok()) {
        std::fprintf(stderr, "client %d: %s\n", i, st.error_message().c_str());
        ++failures;
      }
      total += bytes;
    });
  }
  for (auto& t : threads) t.join();
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf(
      "{\"clients\":%d,\"chunk_size\":%u,\"bytes\":%llu,\"seconds\":%.3f,\"mbps\":%.1f,"
      "\"failures\":%d}\n",
      clients, chunk, static_cast<unsigned long long>(total.load()), secs,
      total.load() / secs / 1e6, failures.load());
  return failures.load() == 0 ? 0 : 1;
}
