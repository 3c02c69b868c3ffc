// MetadataStore: what several mx-server replicas agree on. Two backends behind one
// interface: "embedded" (SQLite in the cache dir; several processes on one host) and
// "redis" (replicas on many hosts). Records are plain data; protobuf payloads of P2P
// sources are stored as opaque bytes so this module stays below the wire layer.
//
// Model claims implement single-flight downloads across replicas: TryClaim is atomic;
// the winner holds a lease it renews; a DOWNLOADING record whose lease expired (its owner
// died) can be claimed again; an ERROR record can be claimed once per retry. Claims are
// idempotent per claim_id: claiming again a record that already holds our live claim is a
// win, so a backend may re-send a claim whose reply was lost without losing it.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"

namespace mx::registry {

int64_t NowMs();

struct ModelKey {
  int provider = 0;  // model_express.model.ModelProvider
  std::string name;
  std::string revision;  // as requested; "" = the default branch
  bool ignore_weights = false;

  // Stable text form used as the primary key in every backend.
  std::string Id() const;
};

enum class ModelState { kDownloading = 0, kDownloaded = 1, kError = 2 };

struct ModelRecord {
  ModelKey key;
  ModelState state = ModelState::kDownloading;
  std::string claim_id;  // who is (or was last) downloading
  int64_t lease_expiry_ms = 0;
  int64_t created_ms = 0;
  int64_t last_used_ms = 0;
  std::string message;  // error text, or a note
  std::string resolved_revision;
  uint64_t bytes = 0;  // size of the downloaded files
};

struct ClaimResult {
  bool won = false;
  std::optional<ModelState> previous;  // state before our claim (nullopt: no record)
  ModelRecord record;                  // the record after the call
};

struct SourceRecord {
  std::string mx_source_id;
  std::string worker_id;
  std::string model_name;
  uint32_t worker_rank = 0;
  int status = 0;  // model_express.p2p.SourceStatus
  int64_t updated_at_ms = 0;
  std::string accelerator;
  std::string identity;  // serialized SourceIdentity
  std::string worker;    // serialized WorkerMetadata (empty when listed without blobs)
  // Who may replace this record (see PutSource); opaque to the store, never shown.
  std::string owner;
};

// Admission limits PutSource enforces atomically with the write; 0 = unlimited.
struct SourceLimits {
  uint32_t max_per_source_id = 0;  // records (worker_ids) under one mx_source_id
  uint32_t max_total = 0;          // records in the whole store
};

struct SourceFilter {
  std::optional<std::string> mx_source_id;
  std::optional<int> status;
  std::optional<std::string> model_name;
  std::optional<uint32_t> worker_rank;
  std::optional<int64_t> min_updated_at_ms;
  std::optional<uint32_t> limit;  // applied in the store, after filtering and ordering
  // ListSources leaves `worker` empty unless set: listings never need the (large) worker
  // blob, and loading every one made ListSources slow and memory-hungry.
  bool with_worker = false;
};

class MetadataStore {
 public:
  virtual ~MetadataStore() = default;

  // Atomically claims the download of `key` for `claim_id` when there is no record, the
  // record is DOWNLOADING with an expired lease, or it is ERROR and `retry_error` is set.
  virtual Result<ClaimResult> TryClaim(const ModelKey& key, const std::string& claim_id,
                                       int64_t lease_ms, bool retry_error) = 0;
  // Extends our lease. FailedPrecondition when the claim was lost (taken over).
  virtual Status RenewLease(const ModelKey& key, const std::string& claim_id, int64_t lease_ms) = 0;
  // Records the outcome of our claim. FailedPrecondition when the claim was lost.
  virtual Status Finish(const ModelKey& key, const std::string& claim_id, ModelState state,
                        const std::string& message, const std::string& resolved_revision,
                        uint64_t bytes) = 0;
  virtual Result<std::optional<ModelRecord>> GetModel(const ModelKey& key) = 0;
  // Last used = now, atomically: a record deleted meanwhile is not re-created.
  virtual Status TouchModel(const ModelKey& key) = 0;
  virtual Result<std::vector<ModelRecord>> ListModels() = 0;
  virtual Status DeleteModel(const ModelKey& key) = 0;

  // Inserts or replaces the source (mx_source_id, worker_id), atomically with two checks:
  // replacing needs `source.owner` to equal the stored record's owner (PermissionDenied
  // otherwise; a record stored without owner may be replaced by anyone), and inserting a
  // new record needs the counts to stay within `limits` (ResourceExhausted otherwise).
  virtual Status PutSource(const SourceRecord& source, const SourceLimits& limits) = 0;
  virtual Result<std::optional<SourceRecord>> GetSource(const std::string& mx_source_id,
                                                        const std::string& worker_id) = 0;
  // Newest first (updated_at_ms descending, then worker_id), at most filter.limit.
  virtual Result<std::vector<SourceRecord>> ListSources(const SourceFilter& filter) = 0;
  // Sets status and updated_at = now. NotFound when there is no such source.
  virtual Status UpdateSourceStatus(const std::string& mx_source_id, const std::string& worker_id,
                                    int status) = 0;
  // Marks sources not updated for stale_ms as `stale_status`, deletes those not updated for
  // gc_ms. Returns how many were marked and deleted.
  virtual Result<std::pair<int, int>> ReapSources(int64_t stale_ms, int64_t gc_ms,
                                                  int stale_status) = 0;
};

struct StoreConfig {
  std::string backend = "embedded";  // MX_METADATA_BACKEND
  std::string sqlite_path;           // embedded: <cache>/.locks/mx/registry.db
  std::string redis_host = "127.0.0.1";
  int redis_port = 6379;
  std::string redis_password;  // from REDIS_URL; never logged
  int redis_db = 0;
  // rediss:// (TLS). Files are PEM; each comes from the URL's query, else from the
  // variable named (read when the store opens).
  bool redis_tls = false;
  std::string redis_tls_ca;         // ?ca= / MX_REDIS_TLS_CA; empty: the system CA store
  std::string redis_tls_cert;       // ?cert= / MX_REDIS_TLS_CERT: client certificate chain
  std::string redis_tls_key;        // ?key= / MX_REDIS_TLS_KEY: its private key
  bool redis_tls_insecure = false;  // ?insecure=true / MX_REDIS_TLS_INSECURE_SKIP_VERIFY=1
};

// Parses redis[s]://[[user]:password@]host[:port][/db][?ca=PATH&cert=PATH&key=PATH&insecure=true]
// into the config. Query options are for rediss:// only; an unknown one is an error.
Status ParseRedisUrl(const std::string& url, StoreConfig* config);

Result<std::unique_ptr<MetadataStore>> OpenStore(const StoreConfig& config);

}  // namespace mx::registry
