// mx_source_id: the first 16 hex characters of sha256 over a canonical, lowercased JSON
// text of a SourceIdentity (see the wire spec). Workers with the same identity share an id.
#pragma once

#include <string>

namespace model_express::p2p {
class SourceIdentity;
}

namespace mx::server {

std::string CanonicalIdentityJson(const model_express::p2p::SourceIdentity& identity);
std::string ComputeSourceId(const model_express::p2p::SourceIdentity& identity);

}  // namespace mx::server
