// The Redis backend: replicas on many hosts share one Redis. Claims, renewals, outcomes,
// touches and source writes are Lua scripts, so each is atomic on the server. The
// connection is re-opened on failure and a command whose reply was lost is sent again, so
// every script is idempotent: a claim re-sent after it was won finds our claim_id and
// answers "won" again. When Redis comes back with a new run_id (a restart, or a failover
// that may or may not have kept the data) this process re-writes the records it authored
// that are missing, never over a record that survived: that one may be newer than ours.
// Sources are indexed in mx:sources (all) and mx:srcidx:<mx_source_id> (per identity).
#include <hiredis/hiredis.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <vector>

#include "common/env.h"
#include "common/log.h"
#include "registry/redis_connection.h"
#include "registry/stores.h"

namespace mx::registry {
namespace {

constexpr const char* kClaimScript = R"lua(
local state = redis.call('HGET', KEYS[1], 'state')
local now = tonumber(ARGV[1])
if state == '0' and redis.call('HGET', KEYS[1], 'claim_id') == ARGV[3] then
  -- Our claim already (this call re-sent after a lost reply): still a win.
  return {1, redis.call('HGET', KEYS[1], 'claim_prev') or ''}
end
local can = false
if not state then can = true
elseif state == '2' then can = (ARGV[4] == '1')
elseif state == '0' then can = tonumber(redis.call('HGET', KEYS[1], 'lease_expiry_ms') or '0') < now end
if can then
  local created = redis.call('HGET', KEYS[1], 'created_ms') or tostring(now)
  redis.call('HSET', KEYS[1], 'provider', ARGV[5], 'name', ARGV[6], 'revision', ARGV[7],
    'ignore_weights', ARGV[8], 'state', '0', 'claim_id', ARGV[3],
    'lease_expiry_ms', tostring(now + tonumber(ARGV[2])), 'created_ms', created,
    'last_used_ms', tostring(now), 'message', '', 'resolved_revision', '', 'bytes', '0',
    'claim_prev', state or '')
  redis.call('SADD', 'mx:models', KEYS[1])
  return {1, state or ''}
end
return {0, state or ''}
)lua";

constexpr const char* kRenewScript = R"lua(
if redis.call('HGET', KEYS[1], 'claim_id') == ARGV[1] and redis.call('HGET', KEYS[1], 'state') == '0' then
  redis.call('HSET', KEYS[1], 'lease_expiry_ms', ARGV[2])
  return 1
end
return 0
)lua";

constexpr const char* kFinishScript = R"lua(
if redis.call('HGET', KEYS[1], 'claim_id') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'state', ARGV[2], 'message', ARGV[3], 'resolved_revision', ARGV[4],
    'bytes', ARGV[5], 'last_used_ms', ARGV[6])
  return 1
end
return 0
)lua";

constexpr const char* kTouchScript = R"lua(
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'last_used_ms', ARGV[1])
  return 1
end
return 0
)lua";

// KEYS: record, its set, the per-identity set. ARGV: field/value pairs. Only when missing.
constexpr const char* kRestoreScript = R"lua(
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
redis.call('SADD', KEYS[2], KEYS[1])
if KEYS[3] then redis.call('SADD', KEYS[3], KEYS[1]) end
return 1
)lua";

// KEYS: record, mx:sources, mx:srcidx:<id>. ARGV: owner, max per id, max total, then the
// record's field/value pairs. Returns 1 written, -1 owned by another, -2/-3 over a limit.
constexpr const char* kPutSourceScript = R"lua(
if redis.call('EXISTS', KEYS[1]) == 1 then
  local owner = redis.call('HGET', KEYS[1], 'owner')
  if owner and owner ~= '' and owner ~= ARGV[1] then return -1 end
else
  local per_id, total = tonumber(ARGV[2]), tonumber(ARGV[3])
  if per_id > 0 and redis.call('SCARD', KEYS[3]) >= per_id then return -2 end
  if total > 0 and redis.call('SCARD', KEYS[2]) >= total then return -3 end
end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], unpack(ARGV, 4))
redis.call('SADD', KEYS[2], KEYS[1])
redis.call('SADD', KEYS[3], KEYS[1])
return 1
)lua";

using Reply = std::unique_ptr<redisReply, decltype(&freeReplyObject)>;

std::string ModelRedisKey(const ModelKey& k) { return "mx:model:" + k.Id(); }
std::string SourceRedisKey(const std::string& id, const std::string& worker) {
  return "mx:source:" + id + ":" + worker;
}
std::string SourceIndexKey(const std::string& id) { return "mx:srcidx:" + id; }

// HMGET order of a listed source; "worker" last so listings can leave it out.
const std::vector<std::string> kSourceFields = {
    "mx_source_id",  "worker_id",   "model_name", "worker_rank", "status",
    "updated_at_ms", "accelerator", "identity",   "owner",       "worker"};

class RedisStore : public MetadataStore {
 public:
  explicit RedisStore(StoreConfig config) : config_(std::move(config)) {}

  Status Connect() {
    conn_.reset();
    MX_ASSIGN_OR_RETURN(conn_, RedisConnection::Open(config_, /*timeout_s=*/5));
    std::string where = config_.redis_host + ":" + std::to_string(config_.redis_port);
    if (!config_.redis_password.empty()) {
      Reply r(conn_->Command({"AUTH", config_.redis_password}), freeReplyObject);
      if (!r) return Broken("Redis at " + where + " failed during AUTH");
      if (r->type == REDIS_REPLY_ERROR) {
        conn_.reset();
        return Status::Unauthenticated("Redis at " + where + " refused the password");
      }
    }
    if (config_.redis_db != 0) {
      Reply r(conn_->Command({"SELECT", std::to_string(config_.redis_db)}), freeReplyObject);
    }
    std::string run_id = ServerRunId();
    // The first reply proves the session works: over TLS, a server that requires a client
    // certificate refuses only after the handshake.
    if (conn_->broken()) return Broken("Redis at " + where + " closed the connection");
    if (!run_id_.empty() && run_id != run_id_) {
      spdlog::warn("Redis at {} restarted; restoring {} model and {} source records", where,
                   authored_models_.size(), authored_sources_.size());
      Restore();
    }
    run_id_ = run_id;
    return Status::OK();
  }

  Result<ClaimResult> TryClaim(const ModelKey& key, const std::string& claim_id, int64_t lease_ms,
                               bool retry_error) override {
    std::lock_guard<std::mutex> l(mu_);
    std::string rk = ModelRedisKey(key);
    std::vector<std::string> args = {"EVAL",
                                     kClaimScript,
                                     "1",
                                     rk,
                                     std::to_string(NowMs()),
                                     std::to_string(lease_ms),
                                     claim_id,
                                     retry_error ? "1" : "0",
                                     std::to_string(key.provider),
                                     key.name,
                                     key.revision,
                                     key.ignore_weights ? "1" : "0"};
    MX_ASSIGN_OR_RETURN(Reply r, Command(args));
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2)
      return Status::Internal("bad claim reply");
    ClaimResult result;
    result.won = r->element[0]->integer == 1;
    std::string prev(r->element[1]->str, r->element[1]->len);
    if (!prev.empty()) result.previous = static_cast<ModelState>(std::atoi(prev.c_str()));
    MX_ASSIGN_OR_RETURN(auto rec, GetLocked(key));
    if (!rec) return Status::Unavailable("model record vanished during claim");
    result.record = *rec;
    if (result.won) authored_models_[rk] = *rec;
    return result;
  }

  Status RenewLease(const ModelKey& key, const std::string& claim_id, int64_t lease_ms) override {
    std::lock_guard<std::mutex> l(mu_);
    std::string rk = ModelRedisKey(key);
    int64_t expiry = NowMs() + lease_ms;
    MX_ASSIGN_OR_RETURN(Reply r,
                        Command({"EVAL", kRenewScript, "1", rk, claim_id, std::to_string(expiry)}));
    if (r->integer != 1) {
      authored_models_.erase(rk);
      return Status::FailedPrecondition("claim on " + key.name + " was lost");
    }
    authored_models_[rk].lease_expiry_ms = expiry;
    return Status::OK();
  }

  Status Finish(const ModelKey& key, const std::string& claim_id, ModelState state,
                const std::string& message, const std::string& resolved_revision,
                uint64_t bytes) override {
    std::lock_guard<std::mutex> l(mu_);
    std::string rk = ModelRedisKey(key);
    MX_ASSIGN_OR_RETURN(
        Reply r,
        Command({"EVAL", kFinishScript, "1", rk, claim_id, std::to_string(static_cast<int>(state)),
                 message, resolved_revision, std::to_string(bytes), std::to_string(NowMs())}));
    if (r->integer != 1) return Status::FailedPrecondition("claim on " + key.name + " was lost");
    MX_ASSIGN_OR_RETURN(auto rec, GetLocked(key));
    if (rec) authored_models_[rk] = *rec;
    return Status::OK();
  }

  Result<std::optional<ModelRecord>> GetModel(const ModelKey& key) override {
    std::lock_guard<std::mutex> l(mu_);
    return GetLocked(key);
  }

  Status TouchModel(const ModelKey& key) override {
    std::lock_guard<std::mutex> l(mu_);
    // One script: a record deleted between a check and a write would come back as a
    // husk holding only last_used_ms.
    MX_ASSIGN_OR_RETURN(
        Reply r, Command({"EVAL", kTouchScript, "1", ModelRedisKey(key), std::to_string(NowMs())}));
    return Status::OK();
  }

  Result<std::vector<ModelRecord>> ListModels() override {
    std::lock_guard<std::mutex> l(mu_);
    MX_ASSIGN_OR_RETURN(Reply keys, Command({"SMEMBERS", "mx:models"}));
    std::vector<ModelRecord> out;
    for (size_t i = 0; i < keys->elements; ++i) {
      MX_ASSIGN_OR_RETURN(
          Reply h, Command({"HGETALL", std::string(keys->element[i]->str, keys->element[i]->len)}));
      if (h->elements > 0) out.push_back(ToModel(h.get()));
    }
    std::sort(out.begin(), out.end(), [](const ModelRecord& a, const ModelRecord& b) {
      return a.last_used_ms < b.last_used_ms;
    });
    return out;
  }

  Status DeleteModel(const ModelKey& key) override {
    std::lock_guard<std::mutex> l(mu_);
    std::string rk = ModelRedisKey(key);
    authored_models_.erase(rk);
    MX_ASSIGN_OR_RETURN(Reply a, Command({"DEL", rk}));
    MX_ASSIGN_OR_RETURN(Reply b, Command({"SREM", "mx:models", rk}));
    return Status::OK();
  }

  Status PutSource(const SourceRecord& s, const SourceLimits& limits) override {
    std::lock_guard<std::mutex> l(mu_);
    std::string rk = SourceRedisKey(s.mx_source_id, s.worker_id);
    std::vector<std::string> args = {"EVAL",
                                     kPutSourceScript,
                                     "3",
                                     rk,
                                     "mx:sources",
                                     SourceIndexKey(s.mx_source_id),
                                     s.owner,
                                     std::to_string(limits.max_per_source_id),
                                     std::to_string(limits.max_total)};
    std::vector<std::string> fields = SourceFields(s);
    args.insert(args.end(), fields.begin() + 2, fields.end());  // without HSET <key>
    MX_ASSIGN_OR_RETURN(Reply r, Command(args));
    if (r->type != REDIS_REPLY_INTEGER) return Status::Internal("bad put source reply");
    if (r->integer == -1)
      return Status::PermissionDenied("worker_id is registered by another publisher");
    if (r->integer == -2 || r->integer == -3) {
      uint32_t limit = r->integer == -2 ? limits.max_per_source_id : limits.max_total;
      return Status::ResourceExhausted(std::string("too many sources in ") +
                                       (r->integer == -2 ? "this mx_source_id" : "the registry") +
                                       " (limit " + std::to_string(limit) + ")");
    }
    authored_sources_[rk] = s;
    return Status::OK();
  }

  Result<std::optional<SourceRecord>> GetSource(const std::string& id,
                                                const std::string& worker_id) override {
    std::lock_guard<std::mutex> l(mu_);
    MX_ASSIGN_OR_RETURN(Reply h, Command({"HGETALL", SourceRedisKey(id, worker_id)}));
    if (h->elements == 0) return std::optional<SourceRecord>();
    return std::optional<SourceRecord>(ToSource(h.get()));
  }

  Result<std::vector<SourceRecord>> ListSources(const SourceFilter& f) override {
    std::lock_guard<std::mutex> l(mu_);
    // The per-identity index when the identity is known; one pipelined HMGET per record
    // (no round trip each) that leaves the worker blob out unless asked for.
    MX_ASSIGN_OR_RETURN(
        Reply keys,
        Command({"SMEMBERS", f.mx_source_id ? SourceIndexKey(*f.mx_source_id) : "mx:sources"}));
    std::vector<std::string> names;
    for (size_t i = 0; i < keys->elements; ++i)
      names.emplace_back(keys->element[i]->str, keys->element[i]->len);
    std::vector<std::string> fields = kSourceFields;
    if (!f.with_worker) fields.pop_back();
    MX_ASSIGN_OR_RETURN(std::vector<Reply> rows, HmgetPipelined(names, fields));
    std::vector<SourceRecord> out;
    for (const Reply& h : rows) {
      if (h->type != REDIS_REPLY_ARRAY || h->elements != fields.size() ||
          h->element[1]->type != REDIS_REPLY_STRING) {
        continue;  // deleted since SMEMBERS
      }
      SourceRecord s = FromFields(h.get());
      if (f.mx_source_id && s.mx_source_id != *f.mx_source_id) continue;
      if (f.status && s.status != *f.status) continue;
      if (f.model_name && s.model_name != *f.model_name) continue;
      if (f.worker_rank && s.worker_rank != *f.worker_rank) continue;
      if (f.min_updated_at_ms && s.updated_at_ms < *f.min_updated_at_ms) continue;
      out.push_back(std::move(s));
    }
    std::sort(out.begin(), out.end(), [](const SourceRecord& a, const SourceRecord& b) {
      return a.updated_at_ms != b.updated_at_ms ? a.updated_at_ms > b.updated_at_ms
                                                : a.worker_id < b.worker_id;
    });
    if (f.limit && out.size() > *f.limit) out.resize(*f.limit);
    return out;
  }

  Status UpdateSourceStatus(const std::string& id, const std::string& worker_id,
                            int status) override {
    std::lock_guard<std::mutex> l(mu_);
    std::string rk = SourceRedisKey(id, worker_id);
    auto it = authored_sources_.find(rk);
    MX_ASSIGN_OR_RETURN(Reply h, Command({"HGETALL", rk}));
    if (h->elements == 0 && it == authored_sources_.end()) {
      return Status::NotFound("no source " + id + "/" + worker_id);
    }
    SourceRecord s = h->elements ? ToSource(h.get()) : it->second;
    s.status = status;
    s.updated_at_ms = NowMs();
    authored_sources_[rk] = s;
    return WriteSourceLocked(s);
  }

  Result<std::pair<int, int>> ReapSources(int64_t stale_ms, int64_t gc_ms,
                                          int stale_status) override {
    std::lock_guard<std::mutex> l(mu_);
    MX_ASSIGN_OR_RETURN(Reply keys, Command({"SMEMBERS", "mx:sources"}));
    int64_t now = NowMs();
    int marked = 0, deleted = 0;
    for (size_t i = 0; i < keys->elements; ++i) {
      std::string rk(keys->element[i]->str, keys->element[i]->len);
      MX_ASSIGN_OR_RETURN(Reply h, Command({"HGETALL", rk}));
      if (h->elements == 0) {
        MX_ASSIGN_OR_RETURN(Reply d, Command({"SREM", "mx:sources", rk}));
        continue;
      }
      SourceRecord s = ToSource(h.get());
      if (s.updated_at_ms < now - gc_ms) {
        MX_ASSIGN_OR_RETURN(Reply d1, Command({"DEL", rk}));
        MX_ASSIGN_OR_RETURN(Reply d2, Command({"SREM", "mx:sources", rk}));
        MX_ASSIGN_OR_RETURN(Reply d3, Command({"SREM", SourceIndexKey(s.mx_source_id), rk}));
        authored_sources_.erase(rk);
        ++deleted;
      } else if (s.updated_at_ms < now - stale_ms && s.status != stale_status) {
        MX_ASSIGN_OR_RETURN(Reply w, Command({"HSET", rk, "status", std::to_string(stale_status)}));
        if (auto it = authored_sources_.find(rk); it != authored_sources_.end())
          it->second.status = stale_status;
        ++marked;
      }
    }
    return std::make_pair(marked, deleted);
  }

 private:
  // Runs one command, reconnecting once if the connection broke.
  Result<Reply> Command(const std::vector<std::string>& args) {
    for (int attempt = 0; attempt < 2; ++attempt) {
      if (conn_ == nullptr || conn_->broken()) {
        Status st = Connect();
        if (!st.ok()) {
          if (attempt == 1) return st;
          continue;
        }
      }
      redisReply* raw = conn_->Command(args);
      if (raw == nullptr) continue;  // connection error: broken() is set, reconnect
      Reply r(raw, freeReplyObject);
      if (r->type == REDIS_REPLY_ERROR) {
        return Status::Internal("Redis " + args[0] + ": " + std::string(r->str, r->len));
      }
      return r;
    }
    return Status::Unavailable("Redis at " + config_.redis_host + ":" +
                               std::to_string(config_.redis_port) + " is unreachable");
  }

  std::string ServerRunId() {
    redisReply* raw = conn_->Command({"INFO", "server"});
    if (raw == nullptr) return "";
    Reply r(raw, freeReplyObject);
    if (r->type != REDIS_REPLY_STRING) return "";
    std::string info(r->str, r->len);
    size_t p = info.find("run_id:");
    if (p == std::string::npos) return "";
    size_t e = info.find_first_of("\r\n", p);
    return info.substr(p + 7, e - p - 7);
  }

  // Re-writes what this process authored where it is missing; a record that survived
  // the restart (kept data, or re-written by another replica since) is newer than ours.
  void Restore() {
    for (const auto& [rk, m] : authored_models_) {
      std::vector<std::string> args = {"EVAL",
                                       kRestoreScript,
                                       "2",
                                       rk,
                                       "mx:models",
                                       "provider",
                                       std::to_string(m.key.provider),
                                       "name",
                                       m.key.name,
                                       "revision",
                                       m.key.revision,
                                       "ignore_weights",
                                       m.key.ignore_weights ? "1" : "0",
                                       "state",
                                       std::to_string(static_cast<int>(m.state)),
                                       "claim_id",
                                       m.claim_id,
                                       "lease_expiry_ms",
                                       std::to_string(m.lease_expiry_ms),
                                       "created_ms",
                                       std::to_string(m.created_ms),
                                       "last_used_ms",
                                       std::to_string(m.last_used_ms),
                                       "message",
                                       m.message,
                                       "resolved_revision",
                                       m.resolved_revision,
                                       "bytes",
                                       std::to_string(m.bytes)};
      RawCommand(args);
    }
    for (const auto& [rk, s] : authored_sources_) {
      std::vector<std::string> args = {"EVAL", kRestoreScript, "3",
                                       rk,     "mx:sources",   SourceIndexKey(s.mx_source_id)};
      std::vector<std::string> fields = SourceFields(s);
      args.insert(args.end(), fields.begin() + 2, fields.end());
      RawCommand(args);
    }
  }

  // HMGET `fields` of every key in one pipeline. On an I/O error the connection is
  // dropped (the next command reconnects) and the call fails.
  Result<std::vector<Reply>> HmgetPipelined(const std::vector<std::string>& keys,
                                            const std::vector<std::string>& fields) {
    if (conn_ == nullptr || conn_->broken()) MX_RETURN_IF_ERROR(Connect());
    std::vector<Reply> out;
    constexpr size_t kBatch = 512;  // bounded output buffer per round trip
    for (size_t start = 0; start < keys.size(); start += kBatch) {
      size_t end = std::min(keys.size(), start + kBatch);
      for (size_t i = start; i < end; ++i) {
        std::vector<std::string> argv = {"HMGET", keys[i]};
        argv.insert(argv.end(), fields.begin(), fields.end());
        conn_->Append(argv);
      }
      for (size_t i = start; i < end; ++i) {
        redisReply* raw = conn_->GetReply();
        if (raw == nullptr) {
          return Broken("Redis at " + config_.redis_host + ":" +
                        std::to_string(config_.redis_port) + " failed during a listing");
        }
        out.emplace_back(raw, freeReplyObject);
      }
    }
    return out;
  }

  static SourceRecord FromFields(redisReply* h) {
    auto str = [h](size_t i) {
      redisReply* e = h->element[i];
      return e->type == REDIS_REPLY_STRING ? std::string(e->str, e->len) : std::string();
    };
    SourceRecord s;
    s.mx_source_id = str(0);
    s.worker_id = str(1);
    s.model_name = str(2);
    s.worker_rank = static_cast<uint32_t>(std::atoll(str(3).c_str()));
    s.status = static_cast<int>(std::atoll(str(4).c_str()));
    s.updated_at_ms = std::atoll(str(5).c_str());
    s.accelerator = str(6);
    s.identity = str(7);
    s.owner = str(8);
    if (h->elements > 9) s.worker = str(9);
    return s;
  }

  // Drops a connection that failed while being set up; the error says why.
  Status Broken(const std::string& what) {
    std::string why = conn_ ? conn_->error() : "";
    conn_.reset();
    return Status::Unavailable(what + (why.empty() ? "" : ": " + why));
  }

  // Without reconnect logic: used while restoring inside Connect().
  void RawCommand(const std::vector<std::string>& args) {
    if (redisReply* raw = conn_->Command(args)) freeReplyObject(raw);
  }

  static std::vector<std::string> SourceFields(const SourceRecord& s) {
    std::string rk = SourceRedisKey(s.mx_source_id, s.worker_id);
    return {"HSET",          rk,
            "mx_source_id",  s.mx_source_id,
            "worker_id",     s.worker_id,
            "model_name",    s.model_name,
            "worker_rank",   std::to_string(s.worker_rank),
            "status",        std::to_string(s.status),
            "updated_at_ms", std::to_string(s.updated_at_ms),
            "accelerator",   s.accelerator,
            "identity",      s.identity,
            "worker",        s.worker,
            "owner",         s.owner};
  }

  Status WriteSourceLocked(const SourceRecord& s) {
    MX_ASSIGN_OR_RETURN(Reply a, Command(SourceFields(s)));
    std::string rk = SourceRedisKey(s.mx_source_id, s.worker_id);
    MX_ASSIGN_OR_RETURN(Reply b, Command({"SADD", "mx:sources", rk}));
    MX_ASSIGN_OR_RETURN(Reply c, Command({"SADD", SourceIndexKey(s.mx_source_id), rk}));
    return Status::OK();
  }

  static std::map<std::string, std::string> Fields(redisReply* h) {
    std::map<std::string, std::string> m;
    for (size_t i = 0; i + 1 < h->elements; i += 2) {
      m[std::string(h->element[i]->str, h->element[i]->len)] =
          std::string(h->element[i + 1]->str, h->element[i + 1]->len);
    }
    return m;
  }

  static int64_t Num(const std::map<std::string, std::string>& m, const char* k) {
    auto it = m.find(k);
    return it == m.end() ? 0 : std::atoll(it->second.c_str());
  }

  static ModelRecord ToModel(redisReply* h) {
    auto m = Fields(h);
    ModelRecord r;
    r.key.provider = static_cast<int>(Num(m, "provider"));
    r.key.name = m["name"];
    r.key.revision = m["revision"];
    r.key.ignore_weights = m["ignore_weights"] == "1";
    r.state = static_cast<ModelState>(Num(m, "state"));
    r.claim_id = m["claim_id"];
    r.lease_expiry_ms = Num(m, "lease_expiry_ms");
    r.created_ms = Num(m, "created_ms");
    r.last_used_ms = Num(m, "last_used_ms");
    r.message = m["message"];
    r.resolved_revision = m["resolved_revision"];
    r.bytes = static_cast<uint64_t>(Num(m, "bytes"));
    return r;
  }

  static SourceRecord ToSource(redisReply* h) {
    auto m = Fields(h);
    SourceRecord s;
    s.mx_source_id = m["mx_source_id"];
    s.worker_id = m["worker_id"];
    s.model_name = m["model_name"];
    s.worker_rank = static_cast<uint32_t>(Num(m, "worker_rank"));
    s.status = static_cast<int>(Num(m, "status"));
    s.updated_at_ms = Num(m, "updated_at_ms");
    s.accelerator = m["accelerator"];
    s.identity = m["identity"];
    s.worker = m["worker"];
    s.owner = m["owner"];
    return s;
  }

  Result<std::optional<ModelRecord>> GetLocked(const ModelKey& key) {
    MX_ASSIGN_OR_RETURN(Reply h, Command({"HGETALL", ModelRedisKey(key)}));
    if (h->elements == 0) return std::optional<ModelRecord>();
    return std::optional<ModelRecord>(ToModel(h.get()));
  }

  StoreConfig config_;
  std::unique_ptr<RedisConnection> conn_;
  std::string run_id_;
  std::mutex mu_;
  // What this process wrote, replayed into a Redis that restarted empty.
  std::map<std::string, ModelRecord> authored_models_;
  std::map<std::string, SourceRecord> authored_sources_;
};

}  // namespace

Result<std::unique_ptr<MetadataStore>> OpenRedisStore(const StoreConfig& url_config) {
  StoreConfig config = url_config;
  if (config.redis_tls) {
    // The rediss:// URL's ?ca= / ?cert= / ?key= win over the environment.
    auto fill = [](std::string* field, const char* name) {
      if (auto v = GetEnv(name); field->empty() && v) *field = *v;
    };
    fill(&config.redis_tls_ca, "MX_REDIS_TLS_CA");
    fill(&config.redis_tls_cert, "MX_REDIS_TLS_CERT");
    fill(&config.redis_tls_key, "MX_REDIS_TLS_KEY");
    if (EnvIsTruthy("MX_REDIS_TLS_INSECURE_SKIP_VERIFY")) config.redis_tls_insecure = true;
    if (config.redis_tls_insecure) {
      spdlog::warn(
          "Redis TLS: the server's certificate is NOT verified (insecure skip-verify asked "
          "for): anyone on the path can read and change the registry");
    }
  }
  auto store = std::make_unique<RedisStore>(config);
  MX_RETURN_IF_ERROR(store->Connect());
  return std::unique_ptr<MetadataStore>(std::move(store));
}

}  // namespace mx::registry
