#include <gtest/gtest.h>

#include "common/hash.h"
#include "http/http.h"
#include "storage/backends.h"
#include "storage/signing.h"

namespace mx::storage {
namespace {

TEST(SigV4Test, AwsTestSuiteGetVanilla) {
  // "get-vanilla" from AWS's Signature Version 4 test suite.
  SigV4Request r;
  r.headers = {{"host", "example.amazonaws.com"}, {"x-amz-date", "20150830T123600Z"}};
  r.payload_hash = Sha256Hex("");
  EXPECT_EQ(SigV4Authorization(r, "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                               "us-east-1", "service"),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
            "SignedHeaders=host;x-amz-date, "
            "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31");
}

TEST(SigV4Test, QueryIsSortedAndEncoded) {
  // "get-vanilla-query-order-key-case" from the same suite.
  SigV4Request r;
  r.query = {{"Param2", "value2"}, {"Param1", "value1"}};
  r.headers = {{"host", "example.amazonaws.com"}, {"x-amz-date", "20150830T123600Z"}};
  r.payload_hash = Sha256Hex("");
  EXPECT_NE(SigV4Authorization(r, "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                               "us-east-1", "service")
                .find("Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"),
            std::string::npos);
  EXPECT_EQ(http::UrlQuote("a b/c+d", "/"), "a%20b/c%2Bd");  // S3 encoding is UrlQuote
  EXPECT_EQ(AmzDate(0), "19700101T000000Z");
  EXPECT_EQ(HttpDate(0), "Thu, 01 Jan 1970 00:00:00 GMT");
}

TEST(AzureTest, SharedKeyStringToSignCoversRangeAndHeaders) {
  AzureRequest a;
  a.account = "acct";
  a.canonical_path = "/c/b";
  a.headers = {{"x-ms-date", "d"}, {"x-ms-version", "v"}, {"range", "bytes=0-9"}};
  AzureRequest b = a;
  b.headers["range"] = "bytes=10-19";
  std::string ka = AzureSharedKeyAuthorization(a, "key"),
              kb = AzureSharedKeyAuthorization(b, "key");
  EXPECT_EQ(ka.rfind("SharedKey acct:", 0), 0u);
  EXPECT_NE(ka, kb);
  // The signature is HMAC-SHA256 of the documented string-to-sign.
  std::string to_sign =
      "GET\n\n\n\n\n\n\n\n\n\n\nbytes=0-9\nx-ms-date:d\nx-ms-version:v\n/acct/c/b";
  EXPECT_EQ(ka, "SharedKey acct:" + Base64Encode(HmacSha256("key", to_sign)));
}

TEST(XmlTest, ElementsAndEntities) {
  std::string xml = "<a><Key>x&amp;y</Key><Size>3</Size></a><a><Key>z</Key></a>";
  size_t pos = 0;
  std::string v;
  ASSERT_TRUE(NextXmlElement(xml, "Key", &pos, &v));
  EXPECT_EQ(v, "x&y");
  ASSERT_TRUE(NextXmlElement(xml, "Key", &pos, &v));
  EXPECT_EQ(v, "z");
  EXPECT_FALSE(NextXmlElement(xml, "Key", &pos, &v));
}

TEST(OpenStorageTest, HubIdsAreNotStoragesBusiness) {
  // org/name is resolved to a cache directory by the streamer; storage refuses it clearly.
  auto st = OpenStorage("org/name", StorageOptions{});
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.status().message().find("hub id"), std::string::npos);
  EXPECT_TRUE(OpenStorage("/tmp", StorageOptions{}).ok());
}

TEST(NetworkSizeTest, SizesAreBoundedBeforeAnyAllocation) {
  EXPECT_EQ(*ParseObjectSize("12345"), 12345u);
  EXPECT_EQ(*ParseObjectSize(std::to_string(kMaxObjectBytes)), kMaxObjectBytes);
  EXPECT_FALSE(ParseObjectSize("18446744073709551615").ok());
  EXPECT_FALSE(ParseObjectSize("9223372036854775808").ok());
  EXPECT_FALSE(ParseObjectSize(std::to_string(kMaxObjectBytes + 1)).ok());
  EXPECT_FALSE(ParseObjectSize("-1").ok());
  ObjectInfo small{"s3://b/model.safetensors.index.json", "model.safetensors.index.json", 1000};
  EXPECT_TRUE(CheckInMemorySize(small).ok());
  ObjectInfo huge = small;
  huge.size = kMaxInMemoryObjectBytes + 1;
  auto st = CheckInMemorySize(huge);
  EXPECT_EQ(st.code(), StatusCode::kResourceExhausted);
  EXPECT_NE(st.message().find("64 MiB"), std::string::npos);
}

TEST(ListedKeyTest, DotSegmentsAndForeignPrefixesAreRefused) {
  EXPECT_TRUE(CheckListedKey("m/a.safetensors", "m/", "s3://b/m").ok());
  EXPECT_TRUE(CheckListedKey("m/..a/b..", "m/", "s3://b/m").ok());  // dots inside names are fine
  EXPECT_FALSE(CheckListedKey("m/../../etc/x.safetensors", "m/", "s3://b/m").ok());
  EXPECT_FALSE(CheckListedKey("m/./x", "m/", "s3://b/m").ok());
  EXPECT_FALSE(CheckListedKey("m/..", "m/", "s3://b/m").ok());
  EXPECT_FALSE(CheckListedKey("other/x.safetensors", "m/", "s3://b/m").ok());
  EXPECT_TRUE(HasDotSegment(".."));
  EXPECT_FALSE(HasDotSegment("a/b.c/d"));
  std::string bucket, key;
  EXPECT_FALSE(SplitBucketKey("s3://b/m/../x", 5, &bucket, &key).ok());
  EXPECT_TRUE(SplitBucketKey("s3://b/m/x", 5, &bucket, &key).ok());
}

}  // namespace
}  // namespace mx::storage
