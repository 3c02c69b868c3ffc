#include "cloud/aws_credentials.h"

#include <pwd.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>
#include <utility>
#include <vector>

#include "common/env.h"
#include "common/fs.h"
#include "common/text.h"
#include "http/http.h"

namespace mx::cloud {
namespace {

// Caps on what a token endpoint may send: a whole answer, and each field of it. Real
// session tokens are ~1-2 KiB; an access key id is 16-128 characters.
constexpr size_t kMaxAnswerBytes = 1u << 20;
constexpr size_t kMaxKeyIdBytes = 128;
constexpr size_t kMaxSecretBytes = 1024;
constexpr size_t kMaxSessionTokenBytes = 16u << 10;
constexpr size_t kMaxSharedFileBytes = 1u << 20;

std::string Trim(std::string_view s) { return std::string(TrimWhitespace(s)); }

// The URL without its query (which may carry a signature) for errors.
std::string NoQuery(std::string_view url) { return std::string(url.substr(0, url.find('?'))); }

// A credential field goes into HTTP headers and a signing key: visible ASCII only (no
// space, CR or LF: a header injection), non-empty, bounded.
Status CheckField(std::string_view name, std::string_view value, size_t max) {
  if (value.empty()) return Status::InvalidArgument(std::string(name) + " is empty");
  if (value.size() > max) {
    return Status::InvalidArgument(std::string(name) + " is longer than " + std::to_string(max) +
                                   " bytes");
  }
  for (char c : value) {
    if (c <= 0x20 || c >= 0x7f) {
      return Status::InvalidArgument(std::string(name) +
                                     " holds a character that is not printable");
    }
  }
  return Status::OK();
}

Result<Expiring<AwsCredentials>> Checked(AwsCredentials c, std::string_view expiration,
                                         std::time_t now) {
  MX_RETURN_IF_ERROR(CheckField("the access key id", c.access_key_id, kMaxKeyIdBytes));
  MX_RETURN_IF_ERROR(CheckField("the secret access key", c.secret_access_key, kMaxSecretBytes));
  MX_RETURN_IF_ERROR(CheckField("the session token", c.session_token, kMaxSessionTokenBytes));
  Result<std::time_t> expires = ParseIso8601Utc(expiration);
  if (!expires.ok()) return expires.status().WithContext("the expiration");
  if (*expires <= now) {
    return Status::InvalidArgument("the credential expired already (" + Printable(expiration, 40) +
                                   ")");
  }
  return Expiring<AwsCredentials>{std::move(c), *expires};
}

// The text of the first <tag>...</tag> in `xml` (entities decoded), nullopt when absent.
std::optional<std::string> XmlText(std::string_view xml, std::string_view tag) {
  std::string open = "<" + std::string(tag) + ">";
  std::string close = "</" + std::string(tag) + ">";
  size_t b = xml.find(open);
  if (b == std::string_view::npos) return std::nullopt;
  b += open.size();
  size_t e = xml.find(close, b);
  if (e == std::string_view::npos) return std::nullopt;
  std::string_view raw = xml.substr(b, e - b);
  std::string out;
  for (size_t i = 0; i < raw.size(); ++i) {
    if (raw[i] != '&') {
      out += raw[i];
      continue;
    }
    static constexpr std::pair<std::string_view, char> kEntities[] = {
        {"&amp;", '&'}, {"&lt;", '<'}, {"&gt;", '>'}, {"&quot;", '"'}, {"&apos;", '\''}};
    bool matched = false;
    for (const auto& [name, c] : kEntities) {
      if (raw.substr(i, name.size()) == name) {
        out += c;
        i += name.size() - 1;
        matched = true;
        break;
      }
    }
    if (!matched) out += '&';
  }
  return Trim(out);
}

// Reads a shared file; a missing or unreadable one is empty, as in the SDKs.
std::string ReadSharedFile(const std::string& path) {
  Result<std::string> text = ReadFile(path, kMaxSharedFileBytes);
  return text.ok() ? *text : std::string();
}

bool IsTruthyJs(const std::string& v) { return !v.empty() && v != "false"; }

}  // namespace

// --- Wire formats -------------------------------------------------------------------

Result<Expiring<AwsCredentials>> ParseStsCredentials(std::string_view xml, std::time_t now) {
  if (xml.size() > kMaxAnswerBytes) return Status::InvalidArgument("the STS answer is too large");
  std::optional<std::string> block = XmlText(xml, "Credentials");
  if (!block) return Status::InvalidArgument("the STS answer has no Credentials element");
  AwsCredentials c;
  std::optional<std::string> id = XmlText(*block, "AccessKeyId");
  std::optional<std::string> secret = XmlText(*block, "SecretAccessKey");
  std::optional<std::string> token = XmlText(*block, "SessionToken");
  std::optional<std::string> expiration = XmlText(*block, "Expiration");
  if (!id || !secret || !token || !expiration) {
    return Status::InvalidArgument(
        "the STS answer lacks one of AccessKeyId, SecretAccessKey, SessionToken, Expiration");
  }
  c.access_key_id = std::move(*id);
  c.secret_access_key = std::move(*secret);
  c.session_token = std::move(*token);
  return Checked(std::move(c), *expiration, now);
}

std::string StsErrorSummary(std::string_view xml, std::string_view redact) {
  std::string code = XmlText(xml, "Code").value_or("");
  std::string message = XmlText(xml, "Message").value_or("");
  if (code.empty() && message.empty()) return "";
  // Redacted before truncation, so that no part of the secret can survive the cut.
  for (std::string* text : {&code, &message}) {
    for (size_t at; !redact.empty() && (at = text->find(redact)) != std::string::npos;) {
      text->replace(at, redact.size(), "<redacted>");
    }
  }
  return Printable(code, 64) + (message.empty() ? "" : ": " + Printable(message));
}

Result<Expiring<AwsCredentials>> ParseAwsCredentialJson(std::string_view text, std::time_t now) {
  if (text.size() > kMaxAnswerBytes) return Status::InvalidArgument("the answer is too large");
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return Status::InvalidArgument("the answer is not a JSON object");
  }
  auto field = [&](const char* name) -> std::optional<std::string> {
    auto it = j.find(name);
    if (it == j.end() || !it->is_string()) return std::nullopt;
    return it->get<std::string>();
  };
  if (auto code = field("Code"); j.contains("Code") && (!code || *code != "Success")) {
    return Status::InvalidArgument("the answer's Code is not Success");
  }
  std::optional<std::string> id = field("AccessKeyId"), secret = field("SecretAccessKey"),
                             token = field("Token"), expiration = field("Expiration");
  if (!id || !secret || !token || !expiration) {
    return Status::InvalidArgument(
        "the answer lacks one of the strings AccessKeyId, SecretAccessKey, Token, Expiration");
  }
  return Checked(AwsCredentials{*id, *secret, *token}, *expiration, now);
}

AwsProfiles ParseAwsIni(std::string_view text, bool config_file) {
  AwsProfiles out;
  std::string section;  // "" while outside a profile
  std::string sub;      // the open sub-section (`s3 =`), whose indented keys are dropped
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t nl = text.find('\n', pos);
    std::string_view raw = text.substr(pos, nl == std::string_view::npos ? text.npos : nl - pos);
    pos = nl == std::string_view::npos ? text.size() + 1 : nl + 1;
    // A comment starts at '#' or ';' at the line start or after whitespace.
    size_t cut = raw.size();
    for (size_t i = 0; i < raw.size(); ++i) {
      if ((raw[i] == '#' || raw[i] == ';') &&
          (i == 0 || std::isspace(static_cast<unsigned char>(raw[i - 1])))) {
        cut = i;
        break;
      }
    }
    std::string line = Trim(raw.substr(0, cut));
    if (line.empty()) continue;
    if (line.front() == '[' && line.back() == ']') {
      std::string name = Trim(std::string_view(line).substr(1, line.size() - 2));
      section.clear();
      sub.clear();
      if (!config_file) {
        section = name;
      } else if (name == "default") {
        section = name;
      } else if (name.rfind("profile", 0) == 0 && name.size() > 7 &&
                 std::isspace(static_cast<unsigned char>(name[7]))) {
        section = Trim(std::string_view(name).substr(8));
      }
      continue;
    }
    if (section.empty()) continue;
    size_t eq = line.find('=');
    if (eq == std::string::npos || eq == 0) continue;
    std::string key = Trim(std::string_view(line).substr(0, eq));
    std::string value = Trim(std::string_view(line).substr(eq + 1));
    bool indented = !raw.empty() && std::isspace(static_cast<unsigned char>(raw[0]));
    if (value.empty()) {
      sub = key;
      continue;
    }
    if (!sub.empty() && !indented) sub.clear();
    if (!sub.empty()) continue;
    out[section][key] = value;
  }
  return out;
}

Status CheckContainerUrl(std::string_view url) {
  auto refuse = [&] {
    return Status::InvalidArgument(
        "the container credentials URL " + Printable(NoQuery(url)) +
        " is not accepted: it must be https, or http to a loopback address (127.0.0.0/8, "
        "[::1], localhost) or to the ECS/EKS hosts 169.254.170.2, 169.254.170.23, "
        "[fd00:ec2::23]");
  };
  size_t sep = url.find("://");
  if (sep == std::string_view::npos) return refuse();
  std::string scheme(url.substr(0, sep));
  std::transform(scheme.begin(), scheme.end(), scheme.begin(), ::tolower);
  if (scheme == "https") return Status::OK();
  if (scheme != "http") return refuse();
  std::string_view rest = url.substr(sep + 3);
  rest = rest.substr(0, rest.find_first_of("/?#"));
  if (size_t at = rest.rfind('@'); at != std::string_view::npos) rest.remove_prefix(at + 1);
  std::string host;
  if (!rest.empty() && rest[0] == '[') {
    host = std::string(rest.substr(0, rest.find(']') + 1));
  } else {
    host = std::string(rest.substr(0, rest.find(':')));
  }
  std::transform(host.begin(), host.end(), host.begin(), ::tolower);
  if (host == "169.254.170.2" || host == "169.254.170.23" || host == "[fd00:ec2::23]" ||
      host == "localhost" || host == "[::1]" ||
      host == "[0000:0000:0000:0000:0000:0000:0000:0001]") {
    return Status::OK();
  }
  // 127.a.b.c with four decimal components in 0..255.
  int parts[4];
  char tail = 0;
  if (std::sscanf(host.c_str(), "%d.%d.%d.%d%c", &parts[0], &parts[1], &parts[2], &parts[3],
                  &tail) == 4 &&
      parts[0] == 127 && std::all_of(parts, parts + 4, [](int p) { return p >= 0 && p <= 255; }) &&
      std::all_of(host.begin(), host.end(),
                  [](char c) { return std::isdigit(static_cast<unsigned char>(c)) || c == '.'; })) {
    return Status::OK();
  }
  return refuse();
}

// --- The chain ----------------------------------------------------------------------

struct AwsCredentialProvider::Link {
  enum Kind { kNone, kError, kStatic, kWebIdentity, kContainer, kImds } kind = kNone;
  Status error;        // kError: a configured link that cannot work
  std::string source;  // Source() for every kind but kNone/kImds
  std::string tried;   // the anonymous description
  std::string profile_region;

  AwsCredentials fixed;  // kStatic

  // kWebIdentity
  std::string role_arn, token_file, token_file_origin, session_name;
  std::string configured_by;  // "AWS_ROLE_ARN, ..." or "profile x in <file>", for errors
  std::string sts_endpoint, sts_endpoint_origin;

  // kContainer
  std::string url, url_origin, auth_token, auth_token_file;

  // kImds
  std::string imds_endpoint;
  bool imds_v1_disabled = false;

  long timeout_seconds = 1;  // container and instance metadata
  int attempts = 1;
};

namespace {

using Link = AwsCredentialProvider::Link;

struct Env {
  EnvLookup lookup;
  // The variable's value; "" when unset or empty (the SDKs test truthiness).
  std::string operator()(const std::string& name) const {
    std::optional<std::string> v = lookup(name.c_str());
    return v ? *v : std::string();
  }
};

// "~/x" -> $HOME/x, or the passwd entry's home without HOME (as os.homedir() does).
std::string ExpandHome(const std::string& path, const Env& env) {
  if (path.rfind("~/", 0) != 0) return path;
  std::string home = env("HOME");
  if (home.empty()) {
    if (const passwd* pw = ::getpwuid(::getuid()); pw != nullptr && pw->pw_dir != nullptr) {
      home = pw->pw_dir;
    }
  }
  return home + path.substr(1);
}

// STS: AWS_ENDPOINT_URL_STS, else AWS_ENDPOINT_URL, else the regional endpoint.
void ChooseStsEndpoint(const Env& env, const std::string& profile_region, Link* link) {
  bool ignore = IsTruthy(env("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"));
  for (const char* name : {"AWS_ENDPOINT_URL_STS", "AWS_ENDPOINT_URL"}) {
    if (!ignore && !env(name).empty()) {
      link->sts_endpoint = env(name);
      link->sts_endpoint_origin = name;
      break;
    }
  }
  if (link->sts_endpoint.empty()) {
    std::string region = env("AWS_REGION");
    std::string origin = "AWS_REGION";
    if (region.empty()) region = env("AWS_DEFAULT_REGION"), origin = "AWS_DEFAULT_REGION";
    if (region.empty()) region = profile_region, origin = "the profile's region";
    if (region.empty()) region = "us-east-1", origin = "the default region";
    link->sts_endpoint = "https://sts." + region + ".amazonaws.com";
    link->sts_endpoint_origin = "regional endpoint for " + origin;
  }
  while (!link->sts_endpoint.empty() && link->sts_endpoint.back() == '/') {
    link->sts_endpoint.pop_back();
  }
  if (link->sts_endpoint.find("://") == std::string::npos) {
    link->sts_endpoint = "https://" + link->sts_endpoint;
  }
}

std::string DefaultSessionName() { return "mx-session-" + std::to_string(std::time(nullptr)); }

// The shared-files link for `profile`; kNone when the profile has no credentials.
std::unique_ptr<Link> FromProfile(const Env& env, const std::string& profile,
                                  const std::string& credentials_path,
                                  const std::string& config_path, std::string* region) {
  AwsProfiles config = ParseAwsIni(ReadSharedFile(config_path), true);
  AwsProfiles credentials = ParseAwsIni(ReadSharedFile(credentials_path), false);
  std::map<std::string, std::string> merged = config[profile];
  for (const auto& [k, v] : credentials[profile]) merged[k] = v;
  *region = config[profile].count("region") ? config[profile]["region"] : "";
  auto has = [&](const char* key) { return merged.count(key) > 0; };
  // Which file said it: the credentials file wins a key both files hold.
  auto where = [&](const char* key) {
    return credentials[profile].count(key) ? "shared credentials file " + credentials_path
                                           : "shared config file " + config_path;
  };
  auto link = std::make_unique<Link>();
  std::string named = "profile " + profile;
  if (has("role_arn") && (has("source_profile") || has("credential_source"))) {
    link->kind = Link::kError;
    link->error = Status::FailedPrecondition(
        "shared files: " + named + " (" + where("role_arn") +
        ") assumes a role from source_profile/credential_source, which mx does not support; "
        "use web_identity_token_file, static keys, or export the role's credentials");
    return link;
  }
  if (has("aws_access_key_id") && has("aws_secret_access_key")) {
    link->kind = Link::kStatic;
    link->fixed = {merged["aws_access_key_id"], merged["aws_secret_access_key"],
                   merged.count("aws_session_token") ? merged["aws_session_token"] : ""};
    link->source = "shared files: " + named + " (" + where("aws_access_key_id") + ")";
    return link;
  }
  if (has("role_arn") && has("web_identity_token_file")) {
    link->kind = Link::kWebIdentity;
    link->role_arn = merged["role_arn"];
    link->token_file = ExpandHome(merged["web_identity_token_file"], env);
    link->token_file_origin = "web_identity_token_file of " + named;
    link->configured_by = named + " in " + where("role_arn");
    link->session_name =
        merged.count("role_session_name") ? merged["role_session_name"] : DefaultSessionName();
    link->source = "web identity: role " + link->role_arn + " (" + named + " in " +
                   where("role_arn") + ": role_arn, web_identity_token_file)";
    return link;
  }
  for (const char* unsupported : {"credential_process", "sso_session", "sso_start_url",
                                  "sso_account_id", "sso_role_name", "login_session"}) {
    if (has(unsupported)) {
      link->kind = Link::kError;
      link->error =
          Status::FailedPrecondition("shared files: " + named + " (" + where(unsupported) +
                                     ") uses " + unsupported + ", which mx does not support");
      return link;
    }
  }
  link->kind = Link::kNone;
  return link;
}

long EnvSeconds(const Env& env, const char* name, long fallback) {
  std::string v = env(name);
  if (v.empty()) return fallback;
  Result<int64_t> n = ParseIntInRange(name, v, 1, 600);
  return n.ok() ? static_cast<long>(*n) : fallback;
}

std::unique_ptr<Link> Resolve(const Env& env) {
  std::string profile = env("AWS_PROFILE");
  std::string credentials_path = env("AWS_SHARED_CREDENTIALS_FILE");
  if (credentials_path.empty()) credentials_path = "~/.aws/credentials";
  credentials_path = ExpandHome(credentials_path, env);
  std::string config_path = env("AWS_CONFIG_FILE");
  if (config_path.empty()) config_path = "~/.aws/config";
  config_path = ExpandHome(config_path, env);
  long timeout = EnvSeconds(env, "AWS_METADATA_SERVICE_TIMEOUT", 1);
  int attempts = static_cast<int>(EnvSeconds(env, "AWS_METADATA_SERVICE_NUM_ATTEMPTS", 1));
  std::string tried = "anonymous: nothing found; tried environment, web identity, shared files (" +
                      credentials_path + ", " + config_path + "), container, instance metadata";
  std::string region;

  auto finish = [&](std::unique_ptr<Link> link) {
    link->tried = tried;
    link->profile_region = region;
    link->timeout_seconds = timeout;
    link->attempts = attempts;
    if (link->kind == Link::kWebIdentity) ChooseStsEndpoint(env, region, link.get());
    return link;
  };

  // 1. Environment keys; the JS SDK skips them when AWS_PROFILE names a profile.
  if (profile.empty() && !env("AWS_ACCESS_KEY_ID").empty() &&
      !env("AWS_SECRET_ACCESS_KEY").empty()) {
    auto link = std::make_unique<Link>();
    link->kind = Link::kStatic;
    link->fixed = {env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY"),
                   env("AWS_SESSION_TOKEN")};
    link->source = link->fixed.session_token.empty()
                       ? "environment (AWS_ACCESS_KEY_ID)"
                       : "environment (AWS_ACCESS_KEY_ID, AWS_SESSION_TOKEN)";
    // The profile's region still applies with AWS_PROFILE unset: that of [default].
    AwsProfiles config = ParseAwsIni(ReadSharedFile(config_path), true);
    region = config["default"].count("region") ? config["default"]["region"] : "";
    return finish(std::move(link));
  }

  // 2. Shared files.
  std::unique_ptr<Link> shared = FromProfile(env, profile.empty() ? "default" : profile,
                                             credentials_path, config_path, &region);
  if (shared->kind != Link::kNone) return finish(std::move(shared));

  // 3. Web identity from the environment (IRSA).
  if (!env("AWS_ROLE_ARN").empty() && !env("AWS_WEB_IDENTITY_TOKEN_FILE").empty()) {
    auto link = std::make_unique<Link>();
    link->kind = Link::kWebIdentity;
    link->role_arn = env("AWS_ROLE_ARN");
    link->token_file = env("AWS_WEB_IDENTITY_TOKEN_FILE");
    link->token_file_origin = "AWS_WEB_IDENTITY_TOKEN_FILE";
    link->configured_by = "AWS_ROLE_ARN, AWS_WEB_IDENTITY_TOKEN_FILE";
    link->session_name = env("AWS_ROLE_SESSION_NAME");
    if (link->session_name.empty()) link->session_name = DefaultSessionName();
    link->source =
        "web identity: role " + link->role_arn + " (AWS_ROLE_ARN, AWS_WEB_IDENTITY_TOKEN_FILE)";
    return finish(std::move(link));
  }

  // 4. Container credentials: the relative URI (ECS) wins over the full URI.
  std::string relative = env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI");
  std::string full = env("AWS_CONTAINER_CREDENTIALS_FULL_URI");
  if (!relative.empty() || !full.empty()) {
    auto link = std::make_unique<Link>();
    link->kind = Link::kContainer;
    if (!relative.empty()) {
      link->url = "http://169.254.170.2" + relative;
      link->url_origin = "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI";
    } else {
      link->url = full;
      link->url_origin = "AWS_CONTAINER_CREDENTIALS_FULL_URI";
    }
    link->auth_token = env("AWS_CONTAINER_AUTHORIZATION_TOKEN");
    link->auth_token_file = env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE");
    std::string with = !link->auth_token_file.empty() ? ", AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"
                       : !link->auth_token.empty()    ? ", AWS_CONTAINER_AUTHORIZATION_TOKEN"
                                                      : "";
    link->source =
        "container credentials: " + NoQuery(link->url) + " (" + link->url_origin + with + ")";
    if (Status ok = CheckContainerUrl(link->url); !ok.ok()) {
      link->kind = Link::kError;
      link->error =
          Status(ok.code(), "container credentials (" + link->url_origin + "): " + ok.message());
    }
    timeout = std::max(timeout, 2L);
    attempts = std::max(attempts, 3);
    return finish(std::move(link));
  }

  // 5. EC2 instance metadata.
  std::string disabled = env("AWS_EC2_METADATA_DISABLED");
  if (IsTruthyJs(disabled)) {
    auto link = std::make_unique<Link>();
    link->kind = Link::kNone;
    tried += " (disabled by AWS_EC2_METADATA_DISABLED)";
    return finish(std::move(link));
  }
  auto link = std::make_unique<Link>();
  link->kind = Link::kImds;
  link->imds_endpoint = env("AWS_EC2_METADATA_SERVICE_ENDPOINT");
  if (link->imds_endpoint.empty()) {
    link->imds_endpoint = env("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE") == "IPv6"
                              ? "http://[fd00:ec2::254]"
                              : "http://169.254.169.254";
  }
  while (!link->imds_endpoint.empty() && link->imds_endpoint.back() == '/') {
    link->imds_endpoint.pop_back();
  }
  link->imds_v1_disabled = IsTruthyJs(env("AWS_EC2_METADATA_V1_DISABLED"));
  tried += " (" + link->imds_endpoint + ": no role credentials)";
  return finish(std::move(link));
}

// --- Fetchers -----------------------------------------------------------------------

Result<Expiring<AwsCredentials>> FetchWebIdentity(const Link& l) {
  std::string link_name = "web identity (" + l.configured_by + ")";
  Result<std::string> token = ReadTokenFile(l.token_file, l.token_file_origin);
  if (!token.ok()) return token.status().WithContext(link_name);
  http::Request req;
  req.method = "POST";
  req.url = l.sts_endpoint + "/";
  req.headers = {"Content-Type: application/x-www-form-urlencoded; charset=utf-8",
                 "Accept: text/xml"};
  req.body = FormEncode({{"Action", "AssumeRoleWithWebIdentity"},
                         {"Version", "2011-06-15"},
                         {"RoleArn", l.role_arn},
                         {"RoleSessionName", l.session_name},
                         {"WebIdentityToken", *token}});
  req.follow_redirects = false;
  req.timeout_seconds = 15;
  std::string where = link_name + ": STS AssumeRoleWithWebIdentity at " + NoQuery(l.sts_endpoint) +
                      " (" + l.sts_endpoint_origin + ")";
  Result<http::Response> r =
      http::FetchMetadata(std::move(req), kMaxAnswerBytes, http::RetryPolicy{3, 0.25, 2.0});
  if (!r.ok()) return r.status().WithContext(where);
  if (r->status != 200) {
    // A careless or hostile endpoint may echo the token: it must not reach our error.
    std::string summary = StsErrorSummary(r->body, *token);
    StatusCode code = r->status == 400 || r->status == 401 || r->status == 403
                          ? StatusCode::kPermissionDenied
                          : StatusCode::kUnavailable;
    return Status(code, where + " refused: HTTP " + std::to_string(r->status) +
                            (summary.empty() ? "" : " " + summary));
  }
  Result<Expiring<AwsCredentials>> c = ParseStsCredentials(r->body, std::time(nullptr));
  if (!c.ok()) return c.status().WithContext(where);
  return c;
}

Result<Expiring<AwsCredentials>> FetchContainer(const Link& l) {
  std::string where = "container credentials at " + NoQuery(l.url) + " (" + l.url_origin + ")";
  http::Request req;
  req.url = l.url;
  req.follow_redirects = false;
  req.timeout_seconds = l.timeout_seconds;
  std::string auth = l.auth_token;
  if (!l.auth_token_file.empty()) {  // the file wins, re-read at each fetch (it rotates)
    Result<std::string> t =
        ReadTokenFile(l.auth_token_file, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE");
    if (!t.ok()) return t.status().WithContext(where);
    auth = *t;
  }
  if (!auth.empty()) {
    if (auth.find_first_of("\r\n") != std::string::npos) {
      return Status::InvalidArgument(where + ": the authorization token holds a line break");
    }
    req.headers.push_back("Authorization: " + auth);
  }
  Result<http::Response> r =
      http::FetchMetadata(std::move(req), kMaxAnswerBytes, http::RetryPolicy{l.attempts, 0.2, 1.0});
  if (!r.ok()) return r.status().WithContext(where);
  if (r->status != 200) {
    StatusCode code = r->status == 401 || r->status == 403 ? StatusCode::kPermissionDenied
                                                           : StatusCode::kUnavailable;
    return Status(code, where + ": HTTP " + std::to_string(r->status));
  }
  Result<Expiring<AwsCredentials>> c = ParseAwsCredentialJson(r->body, std::time(nullptr));
  if (!c.ok()) return c.status().WithContext(where);
  return c;
}

}  // namespace

// Instance metadata: a token (IMDSv2), the role name, the role's credentials. An absent
// service (no connection, no role) is anonymous; a service that answers badly is an error.
Result<Expiring<AwsCredentials>> AwsCredentialProvider::Fetch() {
  const Link& l = *link_;
  switch (l.kind) {
    case Link::kError:
      return l.error;
    case Link::kNone:
      return Expiring<AwsCredentials>{{}, std::nullopt};
    case Link::kStatic:
      return Expiring<AwsCredentials>{l.fixed, std::nullopt};
    case Link::kWebIdentity:
      return FetchWebIdentity(l);
    case Link::kContainer:
      return FetchContainer(l);
    case Link::kImds:
      break;
  }
  std::string where = "instance metadata at " + l.imds_endpoint;
  http::RetryPolicy policy{l.attempts, 0.2, 1.0};
  auto absent = [this] {
    std::lock_guard<std::mutex> lock(mu_);
    imds_absent_ = true;
    return Expiring<AwsCredentials>{{}, std::nullopt};
  };
  http::Request token_req;
  token_req.method = "PUT";
  token_req.url = l.imds_endpoint + "/latest/api/token";
  token_req.headers = {"X-aws-ec2-metadata-token-ttl-seconds: 21600"};
  token_req.follow_redirects = false;
  token_req.timeout_seconds = l.timeout_seconds;
  Result<http::Response> t = http::FetchMetadata(token_req, 4096, policy);
  if (!t.ok()) return absent();
  std::vector<std::string> headers;
  if (t->status == 200) {
    std::string token = Trim(t->body);
    MX_RETURN_IF_ERROR(
        CheckField("the metadata token", token, 1024).WithContext(where + "/latest/api/token"));
    headers.push_back("X-aws-ec2-metadata-token: " + token);
  } else if (t->status == 403 || t->status == 404 || t->status == 405) {
    if (l.imds_v1_disabled) {
      return Status::PermissionDenied(where + ": no IMDSv2 token (HTTP " +
                                      std::to_string(t->status) +
                                      ") and AWS_EC2_METADATA_V1_DISABLED forbids IMDSv1");
    }
  } else {
    return Status::Unavailable(where + "/latest/api/token: HTTP " + std::to_string(t->status));
  }
  const std::string base = l.imds_endpoint + "/latest/meta-data/iam/security-credentials/";
  http::Request role_req;
  role_req.url = base;
  role_req.headers = headers;
  role_req.follow_redirects = false;
  role_req.timeout_seconds = l.timeout_seconds;
  Result<http::Response> role = http::FetchMetadata(role_req, 4096, policy);
  if (!role.ok()) return absent();
  if (role->status == 404) return absent();  // no instance profile attached
  if (role->status != 200) {
    return Status::Unavailable(where + ": role name: HTTP " + std::to_string(role->status));
  }
  std::string name = Trim(std::string_view(role->body).substr(0, role->body.find('\n')));
  if (name.empty()) return absent();
  if (name.size() > 128 || !std::all_of(name.begin(), name.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) ||
               (c != '\0' && std::strchr("+=,.@_-", c));
      })) {
    return Status::InvalidArgument(where + ": the role name is not an IAM role name");
  }
  http::Request cred_req = role_req;
  cred_req.url = base + name;
  Result<http::Response> cred = http::FetchMetadata(cred_req, kMaxAnswerBytes, policy);
  if (!cred.ok()) return cred.status().WithContext(where);
  if (cred->status != 200) {
    return Status::Unavailable(where + ": role " + name + ": HTTP " + std::to_string(cred->status));
  }
  Result<Expiring<AwsCredentials>> c = ParseAwsCredentialJson(cred->body, std::time(nullptr));
  if (!c.ok()) return c.status().WithContext(where + ": role " + name);
  std::lock_guard<std::mutex> lock(mu_);
  imds_role_ = name;
  imds_absent_ = false;
  return c;
}

std::shared_ptr<AwsCredentialProvider> AwsCredentialProvider::FromEnvironment(EnvLookup env) {
  if (!env) {
    env = ProcessEnvironment();
  }
  Env e{std::move(env)};
  return std::shared_ptr<AwsCredentialProvider>(new AwsCredentialProvider(Resolve(e)));
}

AwsCredentialProvider::AwsCredentialProvider(std::unique_ptr<Link> link)
    : link_(std::move(link)), cache_([this] { return Fetch(); }) {}

AwsCredentialProvider::~AwsCredentialProvider() = default;

Result<AwsCredentials> AwsCredentialProvider::Get() { return cache_.Get(); }

void AwsCredentialProvider::Invalidate() { cache_.Invalidate(); }

bool AwsCredentialProvider::Refreshable() const {
  switch (link_->kind) {
    case Link::kWebIdentity:
    case Link::kContainer:
      return true;
    case Link::kImds: {
      std::lock_guard<std::mutex> lock(mu_);
      return !imds_absent_;
    }
    default:
      return false;
  }
}

std::string AwsCredentialProvider::Source() const {
  switch (link_->kind) {
    case Link::kNone:
      return link_->tried;
    case Link::kImds: {
      std::lock_guard<std::mutex> lock(mu_);
      if (imds_absent_) return link_->tried;
      if (!imds_role_.empty()) {
        return "instance metadata: role " + imds_role_ + " (" + link_->imds_endpoint + ")";
      }
      return "instance metadata (" + link_->imds_endpoint + ")";
    }
    case Link::kError:
      return "error: " + link_->error.message();
    default:
      return link_->source;
  }
}

std::string AwsCredentialProvider::ProfileRegion() const { return link_->profile_region; }

}  // namespace mx::cloud
