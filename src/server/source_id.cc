#include "server/source_id.h"

#include <map>
#include <nlohmann/json.hpp>

#include "common/hash.h"
#include "modelexpress/p2p.pb.h"

namespace mx::server {
namespace {

std::string Lower(std::string s) {
  for (char& c : s) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return s;
}

}  // namespace

std::string CanonicalIdentityJson(const model_express::p2p::SourceIdentity& id) {
  nlohmann::json j = nlohmann::json::object();  // std::map underneath: keys in byte order
  j["mx_version"] = Lower(id.mx_version());
  j["mx_source_type"] = static_cast<int>(id.mx_source_type());
  j["model_name"] = Lower(id.model_name());
  j["backend_framework"] = static_cast<int>(id.backend_framework());
  j["tensor_parallel_size"] = id.tensor_parallel_size();
  j["pipeline_parallel_size"] = id.pipeline_parallel_size();
  j["expert_parallel_size"] = id.expert_parallel_size();
  j["dtype"] = Lower(id.dtype());
  j["quantization"] = Lower(id.quantization());
  j["revision"] = Lower(id.revision());
  // Original keys in byte order; on a case collision the first one wins.
  std::map<std::string, std::string> original(id.extra_parameters().begin(),
                                              id.extra_parameters().end());
  nlohmann::json extra = nlohmann::json::object();
  for (const auto& [k, v] : original) {
    std::string key = Lower(k);
    if (!extra.contains(key)) extra[key] = Lower(v);
  }
  j["extra_parameters"] = extra;
  auto optional = [&](const char* key, const std::string& v) {
    if (!v.empty()) j[key] = Lower(v);
  };
  optional("backend_framework_version", id.backend_framework_version());
  optional("torch_version", id.torch_version());
  optional("cuda_version", id.cuda_version());
  optional("triton_version", id.triton_version());
  optional("gpu_arch", id.gpu_arch());
  optional("compile_config_digest", id.compile_config_digest());
  return j.dump(-1, ' ', /*ensure_ascii=*/false, nlohmann::json::error_handler_t::replace);
}

std::string ComputeSourceId(const model_express::p2p::SourceIdentity& identity) {
  return Sha256Hex(CanonicalIdentityJson(identity)).substr(0, 16);
}

}  // namespace mx::server
