#include "safetensors/safetensors.h"

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "common/text.h"

namespace mx::safetensors {

using nlohmann::json;

namespace {

constexpr std::pair<ErrorKind, std::string_view> kNames[] = {
    {ErrorKind::kTooShort, "file too short"},
    {ErrorKind::kHeaderTooLarge, "header too large"},
    {ErrorKind::kHeaderPastEnd, "header past end of file"},
    {ErrorKind::kNotUtf8, "header not UTF-8"},
    {ErrorKind::kNotJsonObject, "header not a JSON object"},
    {ErrorKind::kDuplicateKey, "duplicate key"},
    {ErrorKind::kBadMetadata, "invalid __metadata__"},
    {ErrorKind::kMissingField, "missing field"},
    {ErrorKind::kUnknownDType, "unknown dtype"},
    {ErrorKind::kBadNumber, "invalid number"},
    {ErrorKind::kOverflow, "size overflow"},
    {ErrorKind::kBadOffsets, "invalid data_offsets"},
    {ErrorKind::kFirstNotZero, "first tensor does not start at 0"},
    {ErrorKind::kGapOrOverlap, "gap or overlap between tensors"},
    {ErrorKind::kTrailingBytes, "data length mismatch"},
    {ErrorKind::kSizeMismatch, "shape does not match byte size"},
};

Status Fail(ErrorKind kind, const std::string& detail) {
  // DataLoss: the bytes are not a valid file (a corrupt download, a wrong object), which
  // is not the caller's argument error.
  return Status::DataLoss("safetensors: " + std::string(ErrorKindName(kind)) + ": " + detail);
}

Result<uint64_t> Number(const json& v, const std::string& where) {
  if (!v.is_number_unsigned()) {
    return Fail(ErrorKind::kBadNumber, where + " must be a non-negative integer");
  }
  uint64_t n = v.get<uint64_t>();
  if (n > kMaxDimension) return Fail(ErrorKind::kBadNumber, where + " exceeds 2^48-1");
  return n;
}

Result<TensorInfo> ParseTensor(const std::string& name, const json& v) {
  if (!v.is_object())
    return Fail(ErrorKind::kMissingField, "tensor '" + name + "' is not an object");
  for (const char* field : {"dtype", "shape", "data_offsets"}) {
    if (!v.contains(field))
      return Fail(ErrorKind::kMissingField, "tensor '" + name + "' has no " + field);
  }
  TensorInfo t;
  t.name = name;
  if (!v["dtype"].is_string())
    return Fail(ErrorKind::kUnknownDType, "tensor '" + name + "': dtype is not a string");
  auto dtype = ParseDType(v["dtype"].get<std::string>());
  if (!dtype)
    return Fail(ErrorKind::kUnknownDType,
                "tensor '" + name + "': " + v["dtype"].get<std::string>());
  t.dtype = *dtype;
  if (!v["shape"].is_array())
    return Fail(ErrorKind::kBadNumber, "tensor '" + name + "': shape is not an array");
  for (const json& d : v["shape"]) {
    MX_ASSIGN_OR_RETURN(uint64_t dim, Number(d, "tensor '" + name + "' shape"));
    t.shape.push_back(dim);
  }
  const json& off = v["data_offsets"];
  if (!off.is_array() || off.size() != 2) {
    return Fail(ErrorKind::kBadOffsets, "tensor '" + name + "': data_offsets must be [begin, end]");
  }
  MX_ASSIGN_OR_RETURN(t.begin, Number(off[0], "tensor '" + name + "' data_offsets"));
  MX_ASSIGN_OR_RETURN(t.end, Number(off[1], "tensor '" + name + "' data_offsets"));
  if (t.end < t.begin) return Fail(ErrorKind::kBadOffsets, "tensor '" + name + "': end < begin");
  // elements x bits must be whole bytes and equal the byte range.
  uint64_t elements = 1;
  for (uint64_t d : t.shape) {
    if (__builtin_mul_overflow(elements, d, &elements)) {
      return Fail(ErrorKind::kOverflow, "tensor '" + name + "': element count overflows");
    }
  }
  uint64_t bits;
  if (__builtin_mul_overflow(elements, static_cast<uint64_t>(DTypeBits(t.dtype)), &bits)) {
    return Fail(ErrorKind::kOverflow, "tensor '" + name + "': bit count overflows");
  }
  if (bits % 8 != 0) {
    return Fail(ErrorKind::kSizeMismatch, "tensor '" + name + "': not a whole number of bytes");
  }
  if (bits / 8 != t.end - t.begin) {
    return Fail(ErrorKind::kSizeMismatch,
                "tensor '" + name + "': shape needs " + std::to_string(bits / 8) +
                    " bytes, data_offsets give " + std::to_string(t.end - t.begin));
  }
  return t;
}

// A SAX pass that records the first key repeated within one object. It keeps one set of
// keys per open object, so each key costs one set insertion.
class DuplicateKeyFinder : public nlohmann::json_sax<json> {
 public:
  const std::string& duplicate() const { return duplicate_; }

  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override {
    keys_.emplace_back();
    return true;
  }
  bool key(string_t& k) override {
    if (!keys_.empty() && !keys_.back().insert(k).second && duplicate_.empty()) duplicate_ = k;
    return true;
  }
  bool end_object() override {
    if (!keys_.empty()) keys_.pop_back();
    return true;
  }
  bool start_array(std::size_t) override { return true; }
  bool end_array() override { return true; }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override {
    return false;
  }

 private:
  std::vector<std::set<std::string>> keys_;
  std::string duplicate_;
};

}  // namespace

std::string_view ErrorKindName(ErrorKind kind) {
  for (const auto& [k, n] : kNames) {
    if (k == kind) return n;
  }
  return "invalid";
}

std::optional<ErrorKind> ErrorKindOf(const Status& status) {
  const std::string& m = status.message();
  if (m.rfind("safetensors: ", 0) != 0) return std::nullopt;
  for (const auto& [k, n] : kNames) {
    if (m.compare(13, n.size(), n) == 0 && m.size() > 13 + n.size() && m[13 + n.size()] == ':')
      return k;
  }
  return std::nullopt;
}

Result<uint64_t> ParseHeaderLength(std::string_view first, uint64_t file_size) {
  if (first.size() < 8 || file_size < 8) {
    return Fail(ErrorKind::kTooShort,
                "a file needs at least 8 bytes, this one has " + std::to_string(file_size));
  }
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i)
    n = (n << 8) | static_cast<unsigned char>(first[static_cast<size_t>(i)]);
  if (n > kMaxHeaderBytes)
    return Fail(ErrorKind::kHeaderTooLarge, std::to_string(n) + " bytes (limit 100000000)");
  if (8 + n > file_size) {
    return Fail(ErrorKind::kHeaderPastEnd, "header of " + std::to_string(n) +
                                               " bytes in a file of " + std::to_string(file_size));
  }
  return n;
}

Result<Header> ParseHeader(std::string_view text, uint64_t file_size) {
  if (!IsValidUtf8(text)) return Fail(ErrorKind::kNotUtf8, "the header has invalid UTF-8");
  // Duplicate keys: nlohmann keeps the last silently, so a SAX pass finds them first. (The
  // callback parser did this too, but rescans the parent object as each child closes, which
  // made a header with n tensors cost O(n^2).) Both passes are linear.
  DuplicateKeyFinder finder;
  bool well_formed = json::sax_parse(text.begin(), text.end(), &finder,
                                     nlohmann::detail::input_format_t::json, /*strict=*/true);
  if (!well_formed) return Fail(ErrorKind::kNotJsonObject, "cannot parse the header");
  const std::string& duplicate = finder.duplicate();
  json doc = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object())
    return Fail(ErrorKind::kNotJsonObject, "cannot parse the header");
  if (!duplicate.empty()) return Fail(ErrorKind::kDuplicateKey, "'" + duplicate + "'");
  Header h;
  h.header_bytes = text.size();
  h.data_start = 8 + text.size();
  h.data_bytes = file_size - h.data_start;
  for (auto& [name, v] : doc.items()) {
    if (name == "__metadata__") {
      if (!v.is_object()) return Fail(ErrorKind::kBadMetadata, "must be an object of strings");
      for (auto& [mk, mv] : v.items()) {
        if (!mv.is_string())
          return Fail(ErrorKind::kBadMetadata, "value of '" + mk + "' is not a string");
        h.metadata[mk] = mv.get<std::string>();
      }
      continue;
    }
    MX_ASSIGN_OR_RETURN(TensorInfo t, ParseTensor(name, v));
    h.tensors.push_back(std::move(t));
  }
  std::sort(h.tensors.begin(), h.tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t expect = 0;
  for (size_t i = 0; i < h.tensors.size(); ++i) {
    const TensorInfo& t = h.tensors[i];
    if (i == 0 && t.begin != 0)
      return Fail(ErrorKind::kFirstNotZero,
                  "'" + t.name + "' starts at " + std::to_string(t.begin));
    if (t.begin != expect) {
      return Fail(ErrorKind::kGapOrOverlap,
                  "'" + t.name + "' starts at " + std::to_string(t.begin) +
                      ", previous tensor ends at " + std::to_string(expect));
    }
    expect = t.end;
  }
  if (expect != h.data_bytes) {
    return Fail(ErrorKind::kTrailingBytes, "tensors cover " + std::to_string(expect) +
                                               " bytes, the data buffer has " +
                                               std::to_string(h.data_bytes));
  }
  return h;
}

std::vector<std::string> ShardIndex::Shards() const {
  std::set<std::string> s;
  for (const auto& [k, v] : weight_map) s.insert(v);
  return {s.begin(), s.end()};
}

Result<ShardIndex> ParseIndex(std::string_view text) {
  json doc = json::parse(text, nullptr, false);
  if (!doc.is_object() || !doc.contains("weight_map") || !doc["weight_map"].is_object()) {
    return Status::InvalidArgument("index: not a safetensors index (no weight_map object)");
  }
  ShardIndex idx;
  if (doc.contains("metadata") && doc["metadata"].is_object() &&
      doc["metadata"].contains("total_size") &&
      doc["metadata"]["total_size"].is_number_unsigned()) {
    idx.total_size = doc["metadata"]["total_size"].get<uint64_t>();
  }
  for (auto& [name, file] : doc["weight_map"].items()) {
    if (!file.is_string())
      return Status::InvalidArgument("index: shard of '" + name + "' is not a string");
    std::string f = file.get<std::string>();
    if (f.empty() || f.find('/') == 0 || f.find("..") != std::string::npos ||
        f.find('\\') != std::string::npos) {
      return Status::InvalidArgument("index: refusing shard path '" + f + "'");
    }
    idx.weight_map[name] = f;
  }
  return idx;
}

std::string BuildHeader(const std::vector<TensorSpec>& tensors,
                        const std::map<std::string, std::string>& metadata,
                        std::vector<TensorInfo>* layout) {
  std::vector<TensorSpec> order = tensors;
  std::sort(order.begin(), order.end(), [](const TensorSpec& a, const TensorSpec& b) {
    int ab = DTypeBits(a.dtype), bb = DTypeBits(b.dtype);
    return ab != bb ? ab > bb : a.name < b.name;
  });
  json doc = json::object();
  if (!metadata.empty()) doc["__metadata__"] = metadata;
  uint64_t offset = 0;
  layout->clear();
  for (const auto& t : order) {
    uint64_t elements = 1;
    for (uint64_t d : t.shape) elements *= d;
    uint64_t bytes = elements * static_cast<uint64_t>(DTypeBits(t.dtype)) / 8;
    doc[t.name] = {{"dtype", std::string(DTypeName(t.dtype))},
                   {"shape", t.shape},
                   {"data_offsets", {offset, offset + bytes}}};
    layout->push_back({t.name, t.dtype, t.shape, offset, offset + bytes});
    offset += bytes;
  }
  std::string text = doc.dump();
  while (text.size() % 8 != 0) text.push_back(' ');
  std::string out(8, '\0');
  uint64_t n = text.size();
  for (int i = 0; i < 8; ++i)
    out[static_cast<size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + text;
}

}  // namespace mx::safetensors
