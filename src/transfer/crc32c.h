// CRC-32C (Castagnoli), the checksum every transferred chunk carries. Uses the SSE4.2
// crc32 instruction when the CPU has it (checked once at run time), else a table.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace mx::transfer {

// Extends `crc` (0 to start) over `size` bytes. Crc32c(0, "123456789", 9) == 0xE3069283.
uint32_t Crc32c(uint32_t crc, const void* data, size_t size);
inline uint32_t Crc32c(std::string_view data) { return Crc32c(0, data.data(), data.size()); }
// True when the hardware instruction is used.
bool Crc32cIsHardware();

}  // namespace mx::transfer
