#include "client/client.h"

#include <sys/stat.h>

#include <cctype>

#include "common/env.h"
#include "common/fs.h"
#include "common/hash.h"
#include "common/text.h"

namespace mx::client {

namespace mm = model_express::model;

Result<Endpoint> ParseEndpoint(const std::string& text) {
  auto bad = [&](const std::string& why) {
    return Status::InvalidArgument("bad server address '" + Printable(text, 200) + "': " + why +
                                   " (use HOST:PORT, http://HOST:PORT or https://HOST:PORT)");
  };
  if (text.empty()) return bad("empty");
  if (text.size() > 1024) return bad("too long");
  for (unsigned char c : text) {
    if (c <= 0x20 || c == 0x7f) return bad("whitespace or control character");
  }
  Endpoint ep;
  std::string rest = text;
  std::string default_port = "8001";
  size_t scheme_end = rest.find("://");
  if (scheme_end != std::string::npos) {
    std::string scheme = rest.substr(0, scheme_end);
    for (auto& c : scheme) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (scheme == "https") {
      ep.tls = true;
      default_port = "443";
    } else if (scheme == "http" || scheme == "grpc") {
      default_port = scheme == "http" ? "80" : "8001";
    } else {
      return bad("unsupported scheme '" + Printable(scheme, 20) + "'");
    }
    rest = rest.substr(scheme_end + 3);
  }
  while (!rest.empty() && rest.back() == '/') rest.pop_back();
  if (rest.find('/') != std::string::npos) return bad("a path is not allowed");
  if (rest.find('@') != std::string::npos) return bad("credentials in the address are not allowed");
  std::string host = rest, port;
  if (!rest.empty() && rest[0] == '[') {  // [v6]:port
    size_t close = rest.find(']');
    if (close == std::string::npos) return bad("unclosed '['");
    host = rest.substr(0, close + 1);
    if (close + 1 < rest.size()) {
      if (rest[close + 1] != ':') return bad("junk after ']'");
      port = rest.substr(close + 2);
    }
  } else if (size_t colon = rest.rfind(':'); colon != std::string::npos) {
    if (rest.find(':') != colon) return bad("IPv6 addresses need [brackets]");
    host = rest.substr(0, colon);
    port = rest.substr(colon + 1);
  }
  if (host.empty() || host == "[]") return bad("no host");
  if (scheme_end == std::string::npos && port.empty() && rest.find(':') == std::string::npos) {
    port = default_port;
  }
  if (port.empty()) port = default_port;
  auto p = ParseUint64(port);
  if (!p.ok() || *p == 0 || *p > 65535) return bad("port must be 1-65535");
  ep.target = host + ":" + std::to_string(*p);
  return ep;
}

Result<Endpoint> ResolveEndpoint(const std::string& flag) {
  std::string text = flag, source = "--endpoint";
  for (const char* var : {"MODEL_EXPRESS_URL", "MODEL_EXPRESS_ENDPOINT"}) {
    if (!text.empty()) break;
    if (auto v = GetEnv(var); v && !v->empty()) text = *v, source = var;
  }
  if (text.empty()) text = kDefaultEndpoint, source = "default";
  MX_ASSIGN_OR_RETURN(Endpoint ep, ParseEndpoint(text));
  ep.source = source;
  return ep;
}

// --- TokenFile ---------------------------------------------------------------------------

TokenFile::TokenFile(std::string path, int ttl_seconds)
    : path_(std::move(path)), ttl_seconds_(ttl_seconds) {}

std::unique_ptr<TokenFile> TokenFile::FromEnvironment() {
  std::string path = kDefaultTokenPath;
  if (auto v = GetEnv("MX_AUTH_TOKEN_PATH"); v && !v->empty()) path = *v;
  int ttl = 60;
  if (auto v = GetEnv("MX_AUTH_TOKEN_TTL_SECONDS"); v && !v->empty()) {
    if (auto n = ParseIntInRange("MX_AUTH_TOKEN_TTL_SECONDS", *v, 0, 86400); n.ok()) {
      ttl = static_cast<int>(*n);
    }
  }
  return std::make_unique<TokenFile>(path, ttl);
}

Result<std::optional<std::string>> TokenFile::Get() {
  std::lock_guard<std::mutex> lock(mu_);
  struct stat st;
  if (::stat(path_.c_str(), &st) != 0) {
    // Gone (or never there): a server without auth; forget an old token.
    loaded_ = false;
    token_.reset();
    return std::optional<std::string>();
  }
  auto now = std::chrono::steady_clock::now();
  bool changed = st.st_mtim.tv_sec != mtime_.tv_sec || st.st_mtim.tv_nsec != mtime_.tv_nsec;
  bool expired = now - read_at_ >= std::chrono::seconds(ttl_seconds_);
  if (loaded_ && !changed && !expired) return token_;
  auto text = ReadFile(path_, 64 << 10);
  if (!text.ok()) {
    return Status(text.status().code(),
                  "cannot read the bearer token file " + path_ + " (MX_AUTH_TOKEN_PATH)");
  }
  std::string t(TrimWhitespace(*text));
  for (unsigned char c : t) {
    if (c < 0x21 || c > 0x7e) {
      return Status::InvalidArgument("the bearer token file " + path_ +
                                     " holds characters a token cannot have");
    }
  }
  token_ = t.empty() ? std::nullopt : std::optional<std::string>(t);
  mtime_ = st.st_mtim;
  read_at_ = now;
  loaded_ = true;
  return token_;
}

// --- MxClient ----------------------------------------------------------------------------

Status FromGrpc(const grpc::Status& status, const std::string& what) {
  if (status.ok()) return Status::OK();
  StatusCode code = StatusCode::kInternal;
  switch (status.error_code()) {
    case grpc::StatusCode::INVALID_ARGUMENT:
      code = StatusCode::kInvalidArgument;
      break;
    case grpc::StatusCode::NOT_FOUND:
      code = StatusCode::kNotFound;
      break;
    case grpc::StatusCode::PERMISSION_DENIED:
      code = StatusCode::kPermissionDenied;
      break;
    case grpc::StatusCode::UNAUTHENTICATED:
      code = StatusCode::kUnauthenticated;
      break;
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      code = StatusCode::kUnavailable;
      break;
    case grpc::StatusCode::DATA_LOSS:
      code = StatusCode::kDataLoss;
      break;
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      code = StatusCode::kResourceExhausted;
      break;
    case grpc::StatusCode::FAILED_PRECONDITION:
      code = StatusCode::kFailedPrecondition;
      break;
    case grpc::StatusCode::UNIMPLEMENTED:
      code = StatusCode::kUnimplemented;
      break;
    case grpc::StatusCode::CANCELLED:
      code = StatusCode::kCancelled;
      break;
    default:
      break;
  }
  return Status(code, what + ": " + Printable(status.error_message(), 1024));
}

Result<std::unique_ptr<MxClient>> MxClient::Create(const ClientOptions& options) {
  MX_ASSIGN_OR_RETURN(Endpoint ep, ResolveEndpoint(options.endpoint));
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  if (ep.tls) {
    grpc::SslCredentialsOptions ssl;
    std::string ca = options.tls_ca;
    if (ca.empty()) {
      if (auto v = GetEnv("MX_TLS_CA"); v && !v->empty()) ca = *v;
    }
    if (!ca.empty()) {
      auto pem = ReadFile(ca, 1 << 20);
      if (!pem.ok()) return Status(pem.status().code(), "cannot read --tls-ca " + ca);
      ssl.pem_root_certs = *pem;
    }
    creds = grpc::SslCredentials(ssl);
  }
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, options.keepalive_ms);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, options.keepalive_timeout_ms);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  // Reconnect quickly after a server restart (the default backoff grows to 2 minutes).
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 200);
  args.SetMaxReceiveMessageSize(options.max_message_bytes);
  std::unique_ptr<MxClient> c(new MxClient());
  c->endpoint_ = ep;
  c->connect_timeout_ms_ = options.connect_timeout_ms;
  c->channel_ = grpc::CreateCustomChannel(ep.target, creds, args);
  c->token_ = TokenFile::FromEnvironment();
  c->models_ = mm::ModelService::NewStub(c->channel_);
  c->health_ = model_express::health::HealthService::NewStub(c->channel_);
  c->api_ = model_express::api::ApiService::NewStub(c->channel_);
  c->p2p_ = model_express::p2p::P2pService::NewStub(c->channel_);
  return c;
}

Status MxClient::Connect() {
  auto deadline = std::chrono::system_clock::now() + std::chrono::milliseconds(connect_timeout_ms_);
  if (channel_->WaitForConnected(deadline)) return Status::OK();
  return Status::Unavailable("mx-server at " + EscapeControl(endpoint_.target) + " (" +
                             endpoint_.source + ") is not reachable (no connection within " +
                             std::to_string(connect_timeout_ms_ / 1000.0).substr(0, 3) + " s)");
}

Result<std::unique_ptr<grpc::ClientContext>> MxClient::NewContext(int timeout_ms) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  if (timeout_ms > 0) {
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
  }
  MX_ASSIGN_OR_RETURN(std::optional<std::string> token, token_->Get());
  if (token) ctx->AddMetadata("authorization", "Bearer " + *token);
  return ctx;
}

Result<model_express::health::HealthResponse> MxClient::GetHealth(int timeout_ms) {
  MX_ASSIGN_OR_RETURN(auto ctx, NewContext(timeout_ms));
  model_express::health::HealthRequest req;
  model_express::health::HealthResponse resp;
  MX_RETURN_IF_ERROR(FromGrpc(health_->GetHealth(ctx.get(), req, &resp), "GetHealth"));
  return resp;
}

Result<model_express::api::ApiResponse> MxClient::SendApi(const std::string& action,
                                                          const std::optional<std::string>& payload,
                                                          int timeout_ms) {
  MX_ASSIGN_OR_RETURN(auto ctx, NewContext(timeout_ms));
  model_express::api::ApiRequest req;
  req.set_id(UniqueTempSuffix());
  req.set_action(action);
  if (payload) req.set_payload(*payload);
  model_express::api::ApiResponse resp;
  MX_RETURN_IF_ERROR(FromGrpc(api_->SendRequest(ctx.get(), req, &resp), "SendRequest"));
  return resp;
}

Result<mm::ModelFileList> MxClient::ListFiles(const mm::ModelFilesRequest& request,
                                              int timeout_ms) {
  MX_ASSIGN_OR_RETURN(auto ctx, NewContext(timeout_ms));
  mm::ModelFileList resp;
  MX_RETURN_IF_ERROR(
      FromGrpc(models_->ListModelFiles(ctx.get(), request, &resp), "ListModelFiles"));
  return resp;
}

Result<mm::DeleteModelResponse> MxClient::Delete(const std::string& model, int provider,
                                                 int timeout_ms) {
  MX_ASSIGN_OR_RETURN(auto ctx, NewContext(timeout_ms));
  mm::DeleteModelRequest req;
  req.set_model_name(model);
  req.set_provider(static_cast<mm::ModelProvider>(provider));
  mm::DeleteModelResponse resp;
  MX_RETURN_IF_ERROR(FromGrpc(models_->DeleteModel(ctx.get(), req, &resp), "DeleteModel"));
  return resp;
}

Result<mm::ModelStatusUpdate> MxClient::Ensure(
    const mm::ModelDownloadRequest& request,
    const std::function<void(const mm::ModelStatusUpdate&)>& on_update) {
  MX_ASSIGN_OR_RETURN(auto ctx, NewContext(0));
  auto reader = models_->EnsureModelDownloaded(ctx.get(), request);
  mm::ModelStatusUpdate update, last;
  bool any = false;
  while (reader->Read(&update)) {
    any = true;
    if (on_update) on_update(update);
    last = update;
  }
  MX_RETURN_IF_ERROR(FromGrpc(reader->Finish(), "EnsureModelDownloaded"));
  if (!any) return Status::Internal("EnsureModelDownloaded: the server sent no status");
  if (last.status() == mm::ERROR) {
    return Status::Internal("the server could not download " + Printable(request.model_name()) +
                               ": " + Printable(last.message(), 1024));
  }
  if (last.status() != mm::DOWNLOADED) {
    return Status::Internal("EnsureModelDownloaded ended without DOWNLOADED");
  }
  if (!last.has_resolved_revision() || !IsLowerHex(last.resolved_revision(), 40)) {
    return Status::Internal("the server's DOWNLOADED update has no valid commit");
  }
  return last;
}

}  // namespace mx::client
