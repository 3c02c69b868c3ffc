// Internal to src/registry: one connection to Redis, over plain TCP (redis://) or TLS
// (rediss://), for RedisStore. Both speak RESP through hiredis's command formatter and
// reply parser, so replies are ordinary redisReply objects either way.
//
// Why a TLS transport of our own: managed Redis services (ElastiCache with in-transit
// encryption, Azure Cache for Redis, Memorystore, Upstash) require TLS, and Debian 12's
// hiredis 0.14 predates hiredis_ssl (hiredis >= 1.0) and Debian has no other C/C++ Redis
// client. A TLS sidecar (stunnel, spiped) would be one more process to deploy, watch and
// restart per replica, with its own certificate settings. RESP is a request/reply byte
// stream, so the transport is small: a blocking socket with timeouts, OpenSSL for the
// handshake and certificate checks (system or given CA, host name or IP, optional client
// certificate), hiredis's redisReader for parsing.
#pragma once

#include <hiredis/hiredis.h>

#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "registry/registry.h"

namespace mx::registry {

class RedisConnection {
 public:
  virtual ~RedisConnection() = default;

  // Connects (and for TLS, completes the handshake and verifies the server) within
  // `timeout_s`, which also bounds every later read and write. The error says what to check:
  // unreachable, not TLS on that port, certificate not trusted, wrong host name, bad files.
  static Result<std::unique_ptr<RedisConnection>> Open(const StoreConfig& config, int timeout_s);

  // Sends one command and waits for its reply; nullptr on an I/O or protocol error, after
  // which broken() is true and the connection must be replaced. Caller frees the reply
  // (freeReplyObject).
  virtual redisReply* Command(const std::vector<std::string>& args) = 0;
  // Pipelining: queue commands, then read their replies in order with GetReply (which
  // sends what is queued first). GetReply returns nullptr on error, like Command.
  virtual void Append(const std::vector<std::string>& args) = 0;
  virtual redisReply* GetReply() = 0;
  virtual bool broken() const = 0;
  // Why the connection broke (empty while it works).
  virtual std::string error() const = 0;
};

}  // namespace mx::registry
