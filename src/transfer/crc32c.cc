// Compiled with -msse4.2 (see CMakeLists.txt): the intrinsics are only reached after the
// run-time CPU check, so the binary still runs on CPUs without SSE4.2.
#include "transfer/crc32c.h"

#include <array>
#include <cstring>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

namespace mx::transfer {
namespace {

constexpr uint32_t kPoly = 0x82F63B78;  // reflected Castagnoli polynomial

std::array<uint32_t, 256> MakeTable() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ kPoly : c >> 1;
    t[i] = c;
  }
  return t;
}

uint32_t TableCrc(uint32_t crc, const uint8_t* p, size_t n) {
  static const std::array<uint32_t, 256> table = MakeTable();
  crc = ~crc;
  for (size_t i = 0; i < n; ++i) crc = table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
  return ~crc;
}

#if defined(__x86_64__)
// Three independent lanes hide the crc32 instruction's 3-cycle latency: lanes 1 and 2 start
// from a zero register and are folded in by CRC linearity, reg(A||B) = shift(reg(A), |B|) ^
// reg0(B), where shifting by a lane's length is a fixed 32x32 GF(2) matrix.
constexpr size_t kLane = 8192;

struct ShiftMatrix {
  uint32_t col[32];
};

ShiftMatrix MakeShift(size_t bytes) {
  static const std::array<uint32_t, 256> table = MakeTable();
  ShiftMatrix m;
  for (int i = 0; i < 32; ++i) {
    uint32_t v = 1u << i;
    for (size_t k = 0; k < bytes; ++k) v = table[v & 0xff] ^ (v >> 8);
    m.col[i] = v;
  }
  return m;
}

uint32_t Shift(const ShiftMatrix& m, uint32_t x) {
  uint32_t r = 0;
  for (int i = 0; x != 0; ++i, x >>= 1) {
    if (x & 1) r ^= m.col[i];
  }
  return r;
}

uint32_t HardwareCrc(uint32_t crc, const uint8_t* p, size_t n) {
  uint64_t c = ~crc;
  while (n > 0 && (reinterpret_cast<uintptr_t>(p) & 7) != 0) {
    c = _mm_crc32_u8(static_cast<uint32_t>(c), *p++);
    --n;
  }
  if (n >= 3 * kLane) {
    static const ShiftMatrix shift = MakeShift(kLane);
    while (n >= 3 * kLane) {
      uint64_t c1 = 0, c2 = 0;
      for (size_t i = 0; i < kLane; i += 8) {
        uint64_t a, b, d;
        std::memcpy(&a, p + i, 8);
        std::memcpy(&b, p + kLane + i, 8);
        std::memcpy(&d, p + 2 * kLane + i, 8);
        c = _mm_crc32_u64(c, a);
        c1 = _mm_crc32_u64(c1, b);
        c2 = _mm_crc32_u64(c2, d);
      }
      uint32_t folded = Shift(shift, static_cast<uint32_t>(c)) ^ static_cast<uint32_t>(c1);
      c = Shift(shift, folded) ^ static_cast<uint32_t>(c2);
      p += 3 * kLane;
      n -= 3 * kLane;
    }
  }
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    c = _mm_crc32_u64(c, v);
    p += 8;
    n -= 8;
  }
  while (n > 0) {
    c = _mm_crc32_u8(static_cast<uint32_t>(c), *p++);
    --n;
  }
  return ~static_cast<uint32_t>(c);
}
#endif

}  // namespace

bool Crc32cIsHardware() {
#if defined(__x86_64__)
  static const bool has = __builtin_cpu_supports("sse4.2");
  return has;
#else
  return false;
#endif
}

uint32_t Crc32c(uint32_t crc, const void* data, size_t size) {
  const auto* p = static_cast<const uint8_t*>(data);
#if defined(__x86_64__)
  if (Crc32cIsHardware()) return HardwareCrc(crc, p, size);
#endif
  return TableCrc(crc, p, size);
}

}  // namespace mx::transfer
