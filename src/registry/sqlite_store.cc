// The embedded backend: one SQLite file (WAL) shared by every server process on the host.
// Claims run in BEGIN IMMEDIATE transactions, so two processes never both win.
#include <sqlite3.h>

#include <mutex>

#include "common/fs.h"
#include "common/log.h"
#include "registry/stores.h"

namespace mx::registry {
namespace {

class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) { sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr); }
  ~Stmt() { sqlite3_finalize(stmt_); }
  Stmt& Bind(int i, const std::string& v) {
    sqlite3_bind_text(stmt_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& BindBlob(int i, const std::string& v) {
    sqlite3_bind_blob(stmt_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& Bind(int i, int64_t v) {
    sqlite3_bind_int64(stmt_, i, v);
    return *this;
  }
  int Step() { return sqlite3_step(stmt_); }
  std::string Text(int col) {
    const void* p = sqlite3_column_blob(stmt_, col);
    int n = sqlite3_column_bytes(stmt_, col);
    return p ? std::string(static_cast<const char*>(p), static_cast<size_t>(n)) : std::string();
  }
  int64_t Int(int col) { return sqlite3_column_int64(stmt_, col); }
  bool ok() const { return stmt_ != nullptr; }

 private:
  sqlite3_stmt* stmt_ = nullptr;
};

constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS models (
  id TEXT PRIMARY KEY, provider INTEGER, name TEXT, revision TEXT, ignore_weights INTEGER,
  state INTEGER, claim_id TEXT, lease_expiry_ms INTEGER, created_ms INTEGER,
  last_used_ms INTEGER, message TEXT, resolved_revision TEXT, bytes INTEGER);
CREATE TABLE IF NOT EXISTS sources (
  mx_source_id TEXT, worker_id TEXT, model_name TEXT, worker_rank INTEGER, status INTEGER,
  updated_at_ms INTEGER, accelerator TEXT, identity BLOB, worker BLOB, owner TEXT,
  PRIMARY KEY (mx_source_id, worker_id));
)sql";

// Registries created before sources had an owner; the error on a current one is ignored.
constexpr const char* kAddOwnerColumn = "ALTER TABLE sources ADD COLUMN owner TEXT";

// ReadSource's column order; the worker blob is last so listings can leave it out.
constexpr const char* kSourceColumnsNoWorker =
    "mx_source_id, worker_id, model_name, worker_rank, status, updated_at_ms, accelerator, "
    "identity, owner";

constexpr const char* kModelColumns =
    "provider, name, revision, ignore_weights, state, claim_id, lease_expiry_ms, created_ms, "
    "last_used_ms, message, resolved_revision, bytes";

ModelRecord ReadModel(Stmt& s) {
  ModelRecord r;
  r.key.provider = static_cast<int>(s.Int(0));
  r.key.name = s.Text(1);
  r.key.revision = s.Text(2);
  r.key.ignore_weights = s.Int(3) != 0;
  r.state = static_cast<ModelState>(s.Int(4));
  r.claim_id = s.Text(5);
  r.lease_expiry_ms = s.Int(6);
  r.created_ms = s.Int(7);
  r.last_used_ms = s.Int(8);
  r.message = s.Text(9);
  r.resolved_revision = s.Text(10);
  r.bytes = static_cast<uint64_t>(s.Int(11));
  return r;
}

SourceRecord ReadSource(Stmt& s, bool with_worker) {
  SourceRecord r;
  r.mx_source_id = s.Text(0);
  r.worker_id = s.Text(1);
  r.model_name = s.Text(2);
  r.worker_rank = static_cast<uint32_t>(s.Int(3));
  r.status = static_cast<int>(s.Int(4));
  r.updated_at_ms = s.Int(5);
  r.accelerator = s.Text(6);
  r.identity = s.Text(7);
  r.owner = s.Text(8);
  if (with_worker) r.worker = s.Text(9);
  return r;
}

class SqliteStore : public MetadataStore {
 public:
  explicit SqliteStore(sqlite3* db) : db_(db) {}
  ~SqliteStore() override { sqlite3_close(db_); }

  Result<ClaimResult> TryClaim(const ModelKey& key, const std::string& claim_id, int64_t lease_ms,
                               bool retry_error) override {
    std::lock_guard<std::mutex> l(mu_);
    MX_RETURN_IF_ERROR(Exec("BEGIN IMMEDIATE"));
    auto current = GetLocked(key);
    if (!current.ok()) {
      Rollback();
      return current.status();
    }
    ClaimResult result;
    int64_t now = NowMs();
    if (*current) result.previous = (*current)->state;
    // Our own live claim (a repeated call): a win, as in every backend.
    bool ours = *current && (*current)->state == ModelState::kDownloading &&
                (*current)->claim_id == claim_id;
    if (!ours && !CanClaim(*current, now, retry_error)) {
      Rollback();
      result.record = **current;
      return result;
    }
    ModelRecord r;
    r.key = key;
    r.state = ModelState::kDownloading;
    r.claim_id = claim_id;
    r.lease_expiry_ms = now + lease_ms;
    r.created_ms = *current ? (*current)->created_ms : now;
    r.last_used_ms = now;
    Status st = UpsertLocked(r);
    if (st.ok()) st = Exec("COMMIT");
    if (!st.ok()) {
      Rollback();
      return st;
    }
    result.won = true;
    result.record = r;
    return result;
  }

  Status RenewLease(const ModelKey& key, const std::string& claim_id, int64_t lease_ms) override {
    std::lock_guard<std::mutex> l(mu_);
    Stmt s(db_,
           "UPDATE models SET lease_expiry_ms = ? WHERE id = ? AND claim_id = ? AND state = 0");
    s.Bind(1, NowMs() + lease_ms).Bind(2, key.Id()).Bind(3, claim_id);
    if (s.Step() != SQLITE_DONE) return Error("renew lease");
    if (sqlite3_changes(db_) == 0)
      return Status::FailedPrecondition("claim on " + key.name + " was lost");
    return Status::OK();
  }

  Status Finish(const ModelKey& key, const std::string& claim_id, ModelState state,
                const std::string& message, const std::string& resolved_revision,
                uint64_t bytes) override {
    std::lock_guard<std::mutex> l(mu_);
    Stmt s(db_,
           "UPDATE models SET state = ?, message = ?, resolved_revision = ?, bytes = ?, "
           "last_used_ms = ? WHERE id = ? AND claim_id = ?");
    s.Bind(1, static_cast<int64_t>(state)).Bind(2, message).Bind(3, resolved_revision);
    s.Bind(4, static_cast<int64_t>(bytes)).Bind(5, NowMs()).Bind(6, key.Id()).Bind(7, claim_id);
    if (s.Step() != SQLITE_DONE) return Error("finish claim");
    if (sqlite3_changes(db_) == 0)
      return Status::FailedPrecondition("claim on " + key.name + " was lost");
    return Status::OK();
  }

  Result<std::optional<ModelRecord>> GetModel(const ModelKey& key) override {
    std::lock_guard<std::mutex> l(mu_);
    return GetLocked(key);
  }

  Status TouchModel(const ModelKey& key) override {
    std::lock_guard<std::mutex> l(mu_);
    Stmt s(db_, "UPDATE models SET last_used_ms = ? WHERE id = ?");
    s.Bind(1, NowMs()).Bind(2, key.Id());
    return s.Step() == SQLITE_DONE ? Status::OK() : Error("touch model");
  }

  Result<std::vector<ModelRecord>> ListModels() override {
    std::lock_guard<std::mutex> l(mu_);
    Stmt s(db_,
           (std::string("SELECT ") + kModelColumns + " FROM models ORDER BY last_used_ms").c_str());
    std::vector<ModelRecord> out;
    int rc;
    while ((rc = s.Step()) == SQLITE_ROW) out.push_back(ReadModel(s));
    if (rc != SQLITE_DONE) return Error("list models");
    return out;
  }

  Status DeleteModel(const ModelKey& key) override {
    std::lock_guard<std::mutex> l(mu_);
    Stmt s(db_, "DELETE FROM models WHERE id = ?");
    s.Bind(1, key.Id());
    return s.Step() == SQLITE_DONE ? Status::OK() : Error("delete model");
  }

  Status PutSource(const SourceRecord& r, const SourceLimits& limits) override {
    std::lock_guard<std::mutex> l(mu_);
    // IMMEDIATE: the owner and count checks and the write are one step for every process.
    MX_RETURN_IF_ERROR(Exec("BEGIN IMMEDIATE"));
    Status st = PutSourceLocked(r, limits);
    if (st.ok()) st = Exec("COMMIT");
    if (!st.ok()) Rollback();
    return st;
  }

  Result<std::optional<SourceRecord>> GetSource(const std::string& id,
                                                const std::string& worker_id) override {
    std::lock_guard<std::mutex> l(mu_);
    Stmt s(db_, (std::string("SELECT ") + kSourceColumnsNoWorker +
                 ", worker FROM sources WHERE mx_source_id = ? AND worker_id = ?")
                    .c_str());
    s.Bind(1, id).Bind(2, worker_id);
    int rc = s.Step();
    if (rc == SQLITE_ROW) return std::optional<SourceRecord>(ReadSource(s, true));
    if (rc == SQLITE_DONE) return std::optional<SourceRecord>();
    return Error("get source");
  }

  Result<std::vector<SourceRecord>> ListSources(const SourceFilter& f) override {
    std::lock_guard<std::mutex> l(mu_);
    // The limit is part of the query: SQLite stops after `limit` rows instead of reading
    // (and copying) every record; LIMIT -1 means none.
    std::string sql = std::string("SELECT ") + kSourceColumnsNoWorker +
                      (f.with_worker ? ", worker" : "") +
                      " FROM sources WHERE (?1 IS NULL OR mx_source_id = ?1) AND "
                      "(?2 IS NULL OR status = ?2) AND (?3 IS NULL OR model_name = ?3) AND "
                      "(?4 IS NULL OR worker_rank = ?4) AND (?5 IS NULL OR updated_at_ms >= ?5) "
                      "ORDER BY updated_at_ms DESC, worker_id LIMIT ?6";
    Stmt s(db_, sql.c_str());
    if (f.mx_source_id) s.Bind(1, *f.mx_source_id);
    if (f.status) s.Bind(2, static_cast<int64_t>(*f.status));
    if (f.model_name) s.Bind(3, *f.model_name);
    if (f.worker_rank) s.Bind(4, static_cast<int64_t>(*f.worker_rank));
    if (f.min_updated_at_ms) s.Bind(5, *f.min_updated_at_ms);
    s.Bind(6, f.limit ? static_cast<int64_t>(*f.limit) : int64_t{-1});
    std::vector<SourceRecord> out;
    int rc;
    while ((rc = s.Step()) == SQLITE_ROW) out.push_back(ReadSource(s, f.with_worker));
    if (rc != SQLITE_DONE) return Error("list sources");
    return out;
  }

  Status UpdateSourceStatus(const std::string& id, const std::string& worker_id,
                            int status) override {
    std::lock_guard<std::mutex> l(mu_);
    Stmt s(db_,
           "UPDATE sources SET status = ?, updated_at_ms = ? WHERE mx_source_id = ? AND worker_id "
           "= ?");
    s.Bind(1, static_cast<int64_t>(status)).Bind(2, NowMs()).Bind(3, id).Bind(4, worker_id);
    if (s.Step() != SQLITE_DONE) return Error("update source");
    if (sqlite3_changes(db_) == 0) return Status::NotFound("no source " + id + "/" + worker_id);
    return Status::OK();
  }

  Result<std::pair<int, int>> ReapSources(int64_t stale_ms, int64_t gc_ms,
                                          int stale_status) override {
    std::lock_guard<std::mutex> l(mu_);
    int64_t now = NowMs();
    Stmt del(db_, "DELETE FROM sources WHERE updated_at_ms < ?");
    del.Bind(1, now - gc_ms);
    if (del.Step() != SQLITE_DONE) return Error("reap sources");
    int deleted = sqlite3_changes(db_);
    // Marking stale keeps updated_at: the age is what the next pass deletes by.
    Stmt mark(db_, "UPDATE sources SET status = ? WHERE updated_at_ms < ? AND status != ?");
    mark.Bind(1, static_cast<int64_t>(stale_status)).Bind(2, now - stale_ms);
    mark.Bind(3, static_cast<int64_t>(stale_status));
    if (mark.Step() != SQLITE_DONE) return Error("mark stale sources");
    return std::make_pair(sqlite3_changes(db_), deleted);
  }

  Status Exec(const char* sql) {
    char* err = nullptr;
    if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
      std::string msg = err ? err : "unknown";
      sqlite3_free(err);
      return Status::Unavailable(std::string("registry: ") + sql + ": " + msg);
    }
    return Status::OK();
  }

  // Undoes a transaction that already failed; the first error is the one that counts, a
  // failed ROLLBACK is only worth a warning (SQLite rolls back on close anyway).
  void Rollback() {
    if (Status st = Exec("ROLLBACK"); !st.ok()) spdlog::warn("{}", st.message());
  }

 private:
  Status Error(const char* what) {
    return Status::Unavailable(std::string("registry ") + what + ": " + sqlite3_errmsg(db_));
  }

  Status PutSourceLocked(const SourceRecord& r, const SourceLimits& limits) {
    Stmt owner(db_, "SELECT owner FROM sources WHERE mx_source_id = ? AND worker_id = ?");
    owner.Bind(1, r.mx_source_id).Bind(2, r.worker_id);
    int rc = owner.Step();
    if (rc == SQLITE_ROW) {
      std::string current = owner.Text(0);
      if (!current.empty() && current != r.owner) {
        return Status::PermissionDenied("worker_id is registered by another publisher");
      }
    } else if (rc == SQLITE_DONE) {
      MX_RETURN_IF_ERROR(CheckCount("SELECT COUNT(*) FROM sources WHERE mx_source_id = ?",
                                    &r.mx_source_id, limits.max_per_source_id,
                                    "this mx_source_id"));
      MX_RETURN_IF_ERROR(
          CheckCount("SELECT COUNT(*) FROM sources", nullptr, limits.max_total, "the registry"));
    } else {
      return Error("read source owner");
    }
    Stmt s(db_,
           "INSERT OR REPLACE INTO sources (mx_source_id, worker_id, model_name, worker_rank, "
           "status, updated_at_ms, accelerator, identity, worker, owner) "
           "VALUES (?,?,?,?,?,?,?,?,?,?)");
    s.Bind(1, r.mx_source_id).Bind(2, r.worker_id).Bind(3, r.model_name);
    s.Bind(4, static_cast<int64_t>(r.worker_rank)).Bind(5, static_cast<int64_t>(r.status));
    s.Bind(6, r.updated_at_ms).Bind(7, r.accelerator).BindBlob(8, r.identity).BindBlob(9, r.worker);
    s.Bind(10, r.owner);
    return s.Step() == SQLITE_DONE ? Status::OK() : Error("put source");
  }

  Status CheckCount(const char* sql, const std::string* id, uint32_t limit, const char* where) {
    if (limit == 0) return Status::OK();
    Stmt s(db_, sql);
    if (id) s.Bind(1, *id);
    if (s.Step() != SQLITE_ROW) return Error("count sources");
    if (s.Int(0) >= static_cast<int64_t>(limit)) {
      return Status::ResourceExhausted("too many sources in " + std::string(where) + " (limit " +
                                       std::to_string(limit) + ")");
    }
    return Status::OK();
  }

  Result<std::optional<ModelRecord>> GetLocked(const ModelKey& key) {
    Stmt s(db_, (std::string("SELECT ") + kModelColumns + " FROM models WHERE id = ?").c_str());
    s.Bind(1, key.Id());
    int rc = s.Step();
    if (rc == SQLITE_ROW) return std::optional<ModelRecord>(ReadModel(s));
    if (rc == SQLITE_DONE) return std::optional<ModelRecord>();
    return Error("get model");
  }

  Status UpsertLocked(const ModelRecord& r) {
    Stmt s(db_, (std::string("INSERT OR REPLACE INTO models (id, ") + kModelColumns +
                 ") VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)")
                    .c_str());
    s.Bind(1, r.key.Id()).Bind(2, static_cast<int64_t>(r.key.provider)).Bind(3, r.key.name);
    s.Bind(4, r.key.revision).Bind(5, static_cast<int64_t>(r.key.ignore_weights));
    s.Bind(6, static_cast<int64_t>(r.state)).Bind(7, r.claim_id).Bind(8, r.lease_expiry_ms);
    s.Bind(9, r.created_ms).Bind(10, r.last_used_ms).Bind(11, r.message);
    s.Bind(12, r.resolved_revision).Bind(13, static_cast<int64_t>(r.bytes));
    return s.Step() == SQLITE_DONE ? Status::OK() : Error("write model");
  }

  sqlite3* db_;
  std::mutex mu_;  // one connection per process; SQLite serializes across processes
};

}  // namespace

Result<std::unique_ptr<MetadataStore>> OpenSqliteStore(const std::string& path) {
  MX_RETURN_IF_ERROR(MakeDirs(DirName(path)));
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(path.c_str(), &db,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                      nullptr) != SQLITE_OK) {
    std::string msg = db ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    return Status::IoError("open registry " + path + ": " + msg);
  }
  // Other server processes hold the write lock only for a claim; wait rather than fail.
  sqlite3_busy_timeout(db, 10000);
  auto store = std::make_unique<SqliteStore>(db);
  MX_RETURN_IF_ERROR(store->Exec("PRAGMA journal_mode=WAL"));
  MX_RETURN_IF_ERROR(store->Exec("PRAGMA synchronous=NORMAL"));
  MX_RETURN_IF_ERROR(store->Exec(kSchema));
  (void)store->Exec(kAddOwnerColumn);  // fails harmlessly when the column exists
  return std::unique_ptr<MetadataStore>(std::move(store));
}

}  // namespace mx::registry
