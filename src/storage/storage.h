// Byte sources behind one interface. A URI names a file, a directory or a prefix:
//   /abs/path, file:///abs/path         local files (parallel pread, O_DIRECT on request)
//   http(s)://host/path                 one object over HTTP ranges
//   s3://bucket/key-or-prefix           S3 (SigV4; path-style or virtual-hosted)
//   gs://bucket/key-or-prefix           GCS XML API (HMAC keys via SigV4, or a bearer token)
//   az://container/path-or-prefix       Azure Blob (SharedKey or SAS)
// (A hub id, org/name[@revision], is resolved to its cache directory by the streamer:
// storage does not depend on the hub.)
// Remote reads all go through one shared RangeEngine (connection pool, 206 and
// Content-Range checks, per-range retries). Errors name the bucket/key/URL, the HTTP
// status and the likely cause; never a secret.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"

namespace mx::storage {

struct ObjectInfo {
  std::string uri;   // full URI of the object (no credentials)
  std::string name;  // path relative to the listed URI ("model-00001.safetensors")
  uint64_t size = 0;
  // The listing's ETag, quotes removed; empty when the store gave none. On S3 (and GCS's
  // XML API) a 32-hex ETag without '-' is the MD5 of the content, unless the object is
  // encrypted with SSE-KMS/SSE-C (CMEK on GCS); multipart/composite ETags are not.
  std::string etag{};
};

class RangeReader {
 public:
  virtual ~RangeReader() = default;
  virtual const ObjectInfo& info() const = 0;
  // Reads exactly `len` bytes at `offset` into `dst`, retrying transient failures.
  // Thread-safe: many reads of one object may run at once.
  virtual Status ReadAt(uint64_t offset, uint64_t len, char* dst) = 0;
  // Alignment the destination and offsets must have for the fastest path (O_DIRECT: 4096),
  // or 1. Readers handle any alignment; aligned requests avoid a bounce copy.
  virtual uint64_t alignment() const { return 1; }
  // Zero-copy access for objects already in memory (local files in the page cache): maps
  // [offset, offset + len) read-only. `*base`/`*mapped` receive what to munmap later; the
  // returned pointer is the byte at `offset`. Unimplemented where reads must copy.
  // The pages are not loaded yet: call Populate() on (parts of) the range.
  virtual Result<const char*> Map(uint64_t offset, uint64_t len, void** base, size_t* mapped) {
    return Status::Unimplemented("this storage cannot map");
  }
  // Loads a mapped range's pages (the "read" of a mapped range). Thread-safe.
  virtual Status Populate(const char* data, uint64_t len) { return Status::OK(); }
};

// Sizes a listing or Content-Range may claim: no real object exceeds 2^50 bytes (1 PiB), and
// a bigger number (up to 2^64 - 1 from a hostile server) must never reach an allocation or
// offset arithmetic.
inline constexpr uint64_t kMaxObjectBytes = 1ull << 50;
// The most mx reads of one object into memory (an index or config JSON): 64 MiB.
inline constexpr uint64_t kMaxInMemoryObjectBytes = 64ull << 20;

// OK when `object` is small enough to read whole into memory; else ResourceExhausted naming
// it and the bound. Call before allocating object.size bytes.
Status CheckInMemorySize(const ObjectInfo& object);

struct StorageOptions {
  int connections = 16;    // remote: parallel HTTP connections
  bool direct_io = false;  // local: O_DIRECT
};

class Storage {
 public:
  virtual ~Storage() = default;
  // Objects under the URI: the object itself, or everything below a directory/prefix,
  // sorted by name. NotFound when there is nothing.
  virtual Result<std::vector<ObjectInfo>> List(const std::string& uri) = 0;
  virtual Result<std::unique_ptr<RangeReader>> Open(const ObjectInfo& object) = 0;
  // Which identity this backend reads with and where it came from (the credential chain's
  // link, in the cloud SDK's terms), with no secret in it: `mx stream --explain-credentials`.
  // May fetch a credential to find out; an error says what the chain tried.
  virtual Result<std::string> DescribeCredentials() { return std::string("none (local files)"); }
};

// The backend for a URI's scheme.
Result<std::unique_ptr<Storage>> OpenStorage(const std::string& uri, const StorageOptions& options);

}  // namespace mx::storage
