// Safetensors header parse benchmark: for each tensor count on the command line, builds a
// valid header of that many U8 tensors in memory and prints one markdown row with the
// best-of-3 time of safetensors::ParseHeader and the time per tensor. A linear parser shows
// a flat ns/tensor column from 1k to 1M tensors.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "safetensors/safetensors.h"

namespace {

std::string MakeHeader(long n) {
  std::string text = "{";
  for (long i = 0; i < n; ++i) {
    if (i > 0) text += ',';
    text += "\"model.layers." + std::to_string(i) +
            ".weight\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[" + std::to_string(i) +
            "," + std::to_string(i + 1) + "]}";
  }
  return text + "}";
}

}  // namespace

int main(int argc, char** argv) {
  std::printf(
      "| tensors | header MiB | parse s (best of 3) | ns/tensor |\n|---:|---:|---:|---:|\n");
  for (int a = 1; a < argc; ++a) {
    long n = std::strtol(argv[a], nullptr, 10);
    std::string text = MakeHeader(n);
    double best = 1e300;
    for (int run = 0; run < 3; ++run) {
      auto start = std::chrono::steady_clock::now();
      auto h = mx::safetensors::ParseHeader(text, 8 + text.size() + static_cast<uint64_t>(n));
      double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (!h.ok() || h->tensors.size() != static_cast<size_t>(n)) {
        std::fprintf(stderr, "parse failed: %s\n", h.status().message().c_str());
        return 1;
      }
      best = std::min(best, s);
    }
    std::printf("| %ld | %.1f | %.3f | %.0f |\n", n, text.size() / 1048576.0, best,
                best * 1e9 / static_cast<double>(n));
    std::fflush(stdout);
  }
  return 0;
}
