#include "safetensors/safetensors.h"

#include <gtest/gtest.h>

namespace mx::safetensors {
namespace {

// A header JSON for a file whose data buffer is `data` bytes.
Result<Header> Parse(const std::string& json, uint64_t data) {
  return ParseHeader(json, 8 + json.size() + data);
}

ErrorKind KindOf(const std::string& json, uint64_t data) {
  auto r = Parse(json, data);
  EXPECT_FALSE(r.ok()) << json;
  if (r.ok()) return ErrorKind::kTooShort;
  auto k = ErrorKindOf(r.status());
  EXPECT_TRUE(k.has_value()) << r.status().message();
  return k.value_or(ErrorKind::kTooShort);
}

TEST(SafetensorsTest, ValidFileWithEmptyAndScalarTensors) {
  auto h = Parse(
      R"({"__metadata__":{"format":"pt"},"b":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},)"
      R"("e":{"dtype":"BF16","shape":[0,4],"data_offsets":[16,16]},"s":{"dtype":"I64","shape":[],"data_offsets":[16,24]},)"
      R"("f4":{"dtype":"F4","shape":[4],"data_offsets":[24,26]}}    )",
      26);
  ASSERT_TRUE(h.ok()) << h.status().message();
  ASSERT_EQ(h->tensors.size(), 4u);
  EXPECT_EQ(h->tensors[0].name, "b");
  EXPECT_EQ(h->metadata.at("format"), "pt");
  EXPECT_EQ(TorchDTypeName(DType::kBF16), "torch.bfloat16");
  EXPECT_EQ(TorchDTypeName(DType::kF8_E4M3), "torch.float8_e4m3fn");
}

TEST(SafetensorsTest, EveryRuleHasItsOwnError) {
  EXPECT_EQ(ErrorKindOf(ParseHeaderLength("1234", 4).status()), ErrorKind::kTooShort);
  std::string big("\x01\xe2\xf5\x05\x00\x00\x00\x00", 8);  // 100,000,001
  EXPECT_EQ(ErrorKindOf(ParseHeaderLength(big, 1ull << 40).status()), ErrorKind::kHeaderTooLarge);
  std::string n16("\x10\0\0\0\0\0\0\0", 8);
  EXPECT_EQ(ErrorKindOf(ParseHeaderLength(n16, 20).status()), ErrorKind::kHeaderPastEnd);
  EXPECT_EQ(*ParseHeaderLength(n16, 24), 16u);

  EXPECT_EQ(KindOf("{\"a\xff\":1}", 0), ErrorKind::kNotUtf8);
  EXPECT_EQ(KindOf("{\"a\xc0\x80\":1}", 0), ErrorKind::kNotUtf8);  // overlong
  EXPECT_EQ(KindOf("[1,2]", 0), ErrorKind::kNotJsonObject);
  EXPECT_EQ(KindOf("{nope", 0), ErrorKind::kNotJsonObject);
  const std::string t = R"({"dtype":"U8","shape":[1],"data_offsets":[0,1]})";
  EXPECT_EQ(KindOf("{\"a\":" + t + ",\"a\":" + t + "}", 1), ErrorKind::kDuplicateKey);
  EXPECT_EQ(KindOf(R"({"__metadata__":{"k":1}})", 0), ErrorKind::kBadMetadata);
  EXPECT_EQ(KindOf(R"({"__metadata__":[]})", 0), ErrorKind::kBadMetadata);
  EXPECT_EQ(KindOf(R"({"a":{"dtype":"U8","shape":[1]}})", 1), ErrorKind::kMissingField);
  EXPECT_EQ(KindOf(R"({"a":{"dtype":"Q7","shape":[1],"data_offsets":[0,1]}})", 1),
            ErrorKind::kUnknownDType);
  EXPECT_EQ(KindOf(R"({"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}})", 1),
            ErrorKind::kBadNumber);
  EXPECT_EQ(KindOf(R"({"a":{"dtype":"U8","shape":[1.5],"data_offsets":[0,1]}})", 1),
            ErrorKind::kBadNumber);
  EXPECT_EQ(KindOf(R"({"a":{"dtype":"U8","shape":[281474976710656],"data_offsets":[0,1]}})", 1),
            ErrorKind::kBadNumber);
  EXPECT_EQ(
      KindOf(R"({"a":{"dtype":"U8","shape":[99999999999999999999],"data_offsets":[0,1]}})", 1),
      ErrorKind::kBadNumber);
  EXPECT_EQ(
      KindOf(
          R"({"a":{"dtype":"F64","shape":[281474976710655,281474976710655],"data_offsets":[0,1]}})",
          1),
      ErrorKind::kOverflow);
  EXPECT_EQ(KindOf(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[1,0]}})", 1),
            ErrorKind::kBadOffsets);
  EXPECT_EQ(KindOf(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0]}})", 1),
            ErrorKind::kBadOffsets);
  EXPECT_EQ(KindOf(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})", 2),
            ErrorKind::kFirstNotZero);
  EXPECT_EQ(
      KindOf(
          R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"b":{"dtype":"U8","shape":[1],"data_offsets":[2,3]}})",
          3),
      ErrorKind::kGapOrOverlap);
  EXPECT_EQ(
      KindOf(
          R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
          2),
      ErrorKind::kGapOrOverlap);
  EXPECT_EQ(KindOf(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})", 2),
            ErrorKind::kTrailingBytes);
  EXPECT_EQ(KindOf(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", 4),
            ErrorKind::kSizeMismatch);
  EXPECT_EQ(KindOf(R"({"a":{"dtype":"F4","shape":[3],"data_offsets":[0,1]}})", 1),
            ErrorKind::kSizeMismatch);
}

TEST(SafetensorsTest, BuiltHeadersParseAndAlign) {
  std::vector<TensorInfo> layout;
  std::string image = BuildHeader({{"w", DType::kBF16, {3, 5}},
                                   {"b", DType::kF32, {7}},
                                   {"scalar", DType::kI64, {}},
                                   {"empty", DType::kF16, {0}}},
                                  {{"format", "pt"}}, &layout);
  uint64_t data = layout.back().end;
  auto n = ParseHeaderLength(image.substr(0, 8), image.size() + data);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n % 8, 0u);
  auto h = ParseHeader(std::string_view(image).substr(8), image.size() + data);
  ASSERT_TRUE(h.ok()) << h.status().message();
  for (const auto& t : h->tensors) {
    int align = std::max(1, DTypeBits(t.dtype) / 8);
    EXPECT_EQ((h->data_start + t.begin) % align, 0u) << t.name;
  }
}

// 200 000 tensors: the callback parser this replaced rescanned the parent object as each
// tensor closed (O(n^2), minutes for this size); a linear parse finishes in about a second.
TEST(SafetensorsTest, HugeTensorCountParses) {
  constexpr int kTensors = 200000;
  std::string text = "{";
  for (int i = 0; i < kTensors; ++i) {
    if (i > 0) text += ',';
    text += "\"t" + std::to_string(i) + "\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[" +
            std::to_string(i) + "," + std::to_string(i + 1) + "]}";
  }
  text += "}";
  auto h = Parse(text, kTensors);
  ASSERT_TRUE(h.ok()) << h.status().message();
  EXPECT_EQ(h->tensors.size(), static_cast<size_t>(kTensors));
  // The duplicate-key rule still holds at this size.
  text.back() = ',';
  text += R"("t7":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}})";
  EXPECT_EQ(KindOf(text, kTensors), ErrorKind::kDuplicateKey);
}

TEST(SafetensorsTest, Index) {
  auto idx = ParseIndex(
      R"({"metadata":{"total_size":10},"weight_map":{"a":"m-1.safetensors","b":"m-2.safetensors","c":"m-1.safetensors"}})");
  ASSERT_TRUE(idx.ok());
  EXPECT_EQ(idx->total_size, 10u);
  EXPECT_EQ(idx->Shards(), (std::vector<std::string>{"m-1.safetensors", "m-2.safetensors"}));
  EXPECT_FALSE(ParseIndex(R"({"weight_map":{"a":"../x"}})").ok());
}

}  // namespace
}  // namespace mx::safetensors
