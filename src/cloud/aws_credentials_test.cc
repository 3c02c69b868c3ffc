#include "cloud/aws_credentials.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>

namespace mx::cloud {
namespace {

constexpr std::time_t kNow = 1800000000;  // 2027-01-15T08:00:00Z

std::string Sts(const std::string& credentials) {
  return "<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">"
         "<AssumeRoleWithWebIdentityResult><SubjectFromWebIdentityToken>s</"
         "SubjectFromWebIdentityToken><Credentials>" +
         credentials +
         "</Credentials><AssumedRoleUser><Arn>arn:aws:sts::1:assumed-role/r/s</Arn>"
         "</AssumedRoleUser></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>";
}

const char kGoodCreds[] =
    "<AccessKeyId>ASIAEXAMPLE</AccessKeyId><SecretAccessKey>sec/ret+Key</SecretAccessKey>"
    "<SessionToken>FwoG&amp;tok=</SessionToken><Expiration>2027-01-15T09:00:00Z</Expiration>";

TEST(AwsStsXml, ParsesCredentialsAndExpiry) {
  auto c = ParseStsCredentials(Sts(kGoodCreds), kNow);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->value.access_key_id, "ASIAEXAMPLE");
  EXPECT_EQ(c->value.secret_access_key, "sec/ret+Key");
  EXPECT_EQ(c->value.session_token, "FwoG&tok=");  // entities decoded
  ASSERT_TRUE(c->expires_at.has_value());
  EXPECT_EQ(*c->expires_at, kNow + 3600);
}

TEST(AwsStsXml, RefusesMissingFieldsExpiredAndHostileBodies) {
  EXPECT_FALSE(ParseStsCredentials("", kNow).ok());
  EXPECT_FALSE(ParseStsCredentials("<html>nope</html>", kNow).ok());
  EXPECT_FALSE(ParseStsCredentials("<Credentials><AccessKeyId>A", kNow).ok());  // truncated
  // Each field missing in turn.
  for (const char* drop : {"AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration"}) {
    std::string body = kGoodCreds;
    std::string open = std::string("<") + drop + ">";
    body.replace(body.find(open), open.size(), "<X>");
    EXPECT_FALSE(ParseStsCredentials(Sts(body), kNow).ok()) << drop;
  }
  // Expiry in the past, or not a time.
  std::string past = kGoodCreds;
  past.replace(past.find("2027-01-15T09"), 13, "2020-01-15T09");
  auto p = ParseStsCredentials(Sts(past), kNow);
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.status().message().find("expired"), std::string::npos);
  std::string bad_time = kGoodCreds;
  bad_time.replace(bad_time.find("2027-01-15T09:00:00Z"), 20, "tomorrow");
  EXPECT_FALSE(ParseStsCredentials(Sts(bad_time), kNow).ok());
  // A header injection in the token, an empty key, an oversized token, an oversized body.
  std::string crlf = kGoodCreds;
  crlf.replace(crlf.find("FwoG"), 4, "a\r\nX-Evil: 1");
  EXPECT_FALSE(ParseStsCredentials(Sts(crlf), kNow).ok());
  std::string empty = kGoodCreds;
  empty.replace(empty.find("ASIAEXAMPLE"), 11, "");
  EXPECT_FALSE(ParseStsCredentials(Sts(empty), kNow).ok());
  std::string huge = kGoodCreds;
  huge.replace(huge.find("FwoG"), 4, std::string(20000, 'T'));
  EXPECT_FALSE(ParseStsCredentials(Sts(huge), kNow).ok());
  EXPECT_FALSE(ParseStsCredentials(Sts(kGoodCreds) + std::string(2 << 20, ' '), kNow).ok());
}

TEST(AwsStsXml, ErrorSummaryIsBoundedAndPrintable) {
  std::string xml =
      "<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>Not "
      "authorized\x01 " +
      std::string(1000, 'm') + "</Message></Error></ErrorResponse>";
  std::string s = StsErrorSummary(xml);
  EXPECT_EQ(s.rfind("AccessDenied: Not authorized? ", 0), 0u) << s;
  EXPECT_LT(s.size(), 300u);
  EXPECT_EQ(StsErrorSummary("garbage"), "");
  std::string echo = "<Error><Code>AccessDenied</Code><Message>bad token " + std::string(150, 'x') +
                     "jwt-SECRET-jwt</Message></Error>";
  std::string redacted = StsErrorSummary(echo, "jwt-SECRET-jwt");
  EXPECT_EQ(redacted.find("SECRET"), std::string::npos) << redacted;
  EXPECT_EQ(redacted.find("jwt-"), std::string::npos) << redacted;  // not even cut in half
  EXPECT_EQ(redacted.rfind("AccessDenied: bad token", 0), 0u);
}

TEST(AwsCredentialJson, ParsesContainerAndImdsAnswers) {
  auto c = ParseAwsCredentialJson(
      R"({"AccessKeyId":"ASIAC","SecretAccessKey":"s","Token":"t","Expiration":"2027-01-15T10:00:00Z","RoleArn":"x"})",
      kNow);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->value.access_key_id, "ASIAC");
  EXPECT_EQ(c->value.session_token, "t");
  EXPECT_EQ(*c->expires_at, kNow + 7200);
  auto imds = ParseAwsCredentialJson(
      R"({"Code":"Success","LastUpdated":"2027-01-15T07:00:00Z","Type":"AWS-HMAC","AccessKeyId":"ASIAI","SecretAccessKey":"s","Token":"t","Expiration":"2027-01-15T08:30:00.000Z"})",
      kNow);
  ASSERT_TRUE(imds.ok()) << imds.status().ToString();
  EXPECT_EQ(imds->value.access_key_id, "ASIAI");
}

TEST(AwsCredentialJson, RefusesHostileAnswers) {
  const char* bad[] = {
      "",
      "not json",
      "[]",
      R"({"AccessKeyId":"A","SecretAccessKey":"s","Token":"t"})",  // no Expiration
      R"({"AccessKeyId":1,"SecretAccessKey":"s","Token":"t","Expiration":"2027-01-15T10:00:00Z"})",
      R"({"AccessKeyId":"A","SecretAccessKey":"s","Token":null,"Expiration":"2027-01-15T10:00:00Z"})",
      R"({"AccessKeyId":"A","SecretAccessKey":"s","Token":"t","Expiration":"2001-01-01T00:00:00Z"})",
      R"({"Code":"Failure","AccessKeyId":"A","SecretAccessKey":"s","Token":"t","Expiration":"2027-01-15T10:00:00Z"})",
      R"({"AccessKeyId":"A B","SecretAccessKey":"s","Token":"t","Expiration":"2027-01-15T10:00:00Z"})",
  };
  for (const char* b : bad) EXPECT_FALSE(ParseAwsCredentialJson(b, kNow).ok()) << b;
  std::string huge = R"({"AccessKeyId":"A","SecretAccessKey":"s","Token":")" +
                     std::string(2 << 20, 'x') + R"(","Expiration":"2027-01-15T10:00:00Z"})";
  EXPECT_FALSE(ParseAwsCredentialJson(huge, kNow).ok());
}

TEST(AwsIni, ConfigFileProfilesNeedThePrefix) {
  AwsProfiles p = ParseAwsIni(
      "# comment\n[default]\nregion = eu-west-1 ; trailing comment\n"
      "[profile dev]\nrole_arn=arn:aws:iam::1:role/dev\nweb_identity_token_file = /t\n"
      "[plain]\naws_access_key_id = IGNORED\n"
      "[profile  spaced ]\nregion=us-west-2\n"
      "[profile tool]\ns3 =\n  max_concurrent_requests = 20\nregion = ap-south-1\n",
      /*config_file=*/true);
  EXPECT_EQ(p["default"]["region"], "eu-west-1");
  EXPECT_EQ(p["dev"]["role_arn"], "arn:aws:iam::1:role/dev");
  EXPECT_EQ(p["dev"]["web_identity_token_file"], "/t");
  EXPECT_EQ(p.count("plain"), 0u);  // [x] without "profile" is no profile in config
  EXPECT_EQ(p["spaced"]["region"], "us-west-2");
  EXPECT_EQ(p["tool"].count("max_concurrent_requests"), 0u);  // a nested sub-section
  EXPECT_EQ(p["tool"]["region"], "ap-south-1");
}

TEST(AwsIni, CredentialsFileProfilesAreBare) {
  AwsProfiles p = ParseAwsIni(
      "[default]\r\naws_access_key_id=AKIADEFAULT\r\naws_secret_access_key = s#not-comment\r\n"
      "[prod]\naws_access_key_id = AKIAPROD\n; aws_session_token = commented\n"
      "[profile prod]\naws_access_key_id = NOT_THIS\n",
      /*config_file=*/false);
  EXPECT_EQ(p["default"]["aws_access_key_id"], "AKIADEFAULT");
  EXPECT_EQ(p["default"]["aws_secret_access_key"], "s#not-comment");
  EXPECT_EQ(p["prod"]["aws_access_key_id"], "AKIAPROD");
  EXPECT_EQ(p["prod"].count("aws_session_token"), 0u);
  EXPECT_EQ(p["profile prod"]["aws_access_key_id"], "NOT_THIS");  // never "prod"
}

TEST(AwsContainerUrl, FollowsTheSdkHostRules) {
  for (const char* ok :
       {"https://example.com/creds", "http://127.0.0.1:8080/c", "http://127.1.2.3/c",
        "http://localhost:1/c", "http://[::1]:9/c", "http://169.254.170.2/v2/creds",
        "http://169.254.170.23/v1/credentials", "http://[fd00:ec2::23]/v1/credentials"}) {
    EXPECT_TRUE(CheckContainerUrl(ok).ok()) << ok;
  }
  for (const char* bad : {"http://example.com/c", "http://10.0.0.1/c", "http://127.0.0.256/c",
                          "http://127.0.0.1.evil.com/c", "ftp://127.0.0.1/c", "127.0.0.1/c",
                          "http://169.254.169.254/c"}) {
    EXPECT_FALSE(CheckContainerUrl(bad).ok()) << bad;
  }
}

// --- Precedence, over a fake environment and temporary shared files -------------------

class AwsChain : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("mx-aws-test-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
    env_["HOME"] = dir_.string();  // no real ~/.aws
    env_["AWS_EC2_METADATA_DISABLED"] = "true";
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string Write(const std::string& name, const std::string& text) {
    std::string path = (dir_ / name).string();
    std::ofstream(path) << text;
    return path;
  }
  std::shared_ptr<AwsCredentialProvider> Chain() {
    auto env = env_;
    return AwsCredentialProvider::FromEnvironment(
        [env](const char* n) -> std::optional<std::string> {
          auto it = env.find(n);
          if (it == env.end()) return std::nullopt;
          return it->second;
        });
  }

  std::filesystem::path dir_;
  std::map<std::string, std::string> env_;
};

TEST_F(AwsChain, NothingConfiguredIsAnonymousAndSaysWhatItTried) {
  auto chain = Chain();
  auto c = chain->Get();
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_TRUE(c->anonymous());
  EXPECT_FALSE(chain->Refreshable());
  EXPECT_EQ(chain->Source().rfind("anonymous: nothing found; tried environment, web identity, "
                                  "shared files (" +
                                      (dir_ / ".aws/credentials").string(),
                                  0),
            0u)
      << chain->Source();
  EXPECT_NE(chain->Source().find("container, instance metadata"), std::string::npos);
}

TEST_F(AwsChain, EnvironmentKeysWithSessionToken) {
  env_["AWS_ACCESS_KEY_ID"] = "AKIAENV";
  env_["AWS_SECRET_ACCESS_KEY"] = "envsecret";
  env_["AWS_SESSION_TOKEN"] = "envtoken";
  auto chain = Chain();
  auto c = chain->Get();
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->access_key_id, "AKIAENV");
  EXPECT_EQ(c->session_token, "envtoken");
  EXPECT_FALSE(chain->Refreshable());
  EXPECT_EQ(chain->Source(), "environment (AWS_ACCESS_KEY_ID, AWS_SESSION_TOKEN)");
  EXPECT_EQ(chain->Source().find("envsecret"), std::string::npos);
}

TEST_F(AwsChain, OnlyTheKeyIdIsNotEnough) {
  env_["AWS_ACCESS_KEY_ID"] = "AKIAENV";
  EXPECT_TRUE(Chain()->Get()->anonymous());
}

TEST_F(AwsChain, EnvironmentBeatsSharedFilesUnlessAwsProfileIsSet) {
  env_["AWS_ACCESS_KEY_ID"] = "AKIAENV";
  env_["AWS_SECRET_ACCESS_KEY"] = "envsecret";
  env_["AWS_SHARED_CREDENTIALS_FILE"] =
      Write("credentials",
            "[default]\naws_access_key_id=AKIAFILE\naws_secret_access_key=f\n"
            "[other]\naws_access_key_id=AKIAOTHER\naws_secret_access_key=o\n");
  EXPECT_EQ(Chain()->Get()->access_key_id, "AKIAENV");
  env_["AWS_PROFILE"] = "other";  // the JS SDK then skips the environment keys
  auto chain = Chain();
  EXPECT_EQ(chain->Get()->access_key_id, "AKIAOTHER");
  EXPECT_NE(chain->Source().find("profile other"), std::string::npos);
}

TEST_F(AwsChain, CredentialsFileOverridesConfigFileAndRegionComesFromConfig) {
  env_["AWS_CONFIG_FILE"] = Write(
      "config",
      "[default]\nregion=eu-central-1\naws_access_key_id=AKIACONFIG\naws_secret_access_key=c\n");
  auto from_config = Chain();
  EXPECT_EQ(from_config->Get()->access_key_id, "AKIACONFIG");
  EXPECT_NE(from_config->Source().find("shared config file"), std::string::npos);
  EXPECT_EQ(from_config->ProfileRegion(), "eu-central-1");
  env_["AWS_SHARED_CREDENTIALS_FILE"] =
      Write("credentials", "[default]\naws_access_key_id=AKIACRED\naws_secret_access_key=k\n");
  auto both = Chain();
  EXPECT_EQ(both->Get()->access_key_id, "AKIACRED");
  EXPECT_NE(both->Source().find("shared credentials file"), std::string::npos);
}

TEST_F(AwsChain, SharedFilesBeatWebIdentityFromTheEnvironment) {
  // The JS SDK's order (boto3 would take the web identity first).
  env_["AWS_ROLE_ARN"] = "arn:aws:iam::1:role/r";
  env_["AWS_WEB_IDENTITY_TOKEN_FILE"] = Write("token", "jwt");
  env_["AWS_SHARED_CREDENTIALS_FILE"] =
      Write("credentials", "[default]\naws_access_key_id=AKIAFILE\naws_secret_access_key=f\n");
  EXPECT_EQ(Chain()->Get()->access_key_id, "AKIAFILE");
}

TEST_F(AwsChain, WebIdentityIsSelectedAndABrokenStsIsAClearError) {
  env_["AWS_ROLE_ARN"] = "arn:aws:iam::1:role/r";
  env_["AWS_WEB_IDENTITY_TOKEN_FILE"] = Write("token", "jwt-secret-value");
  env_["AWS_ENDPOINT_URL_STS"] = "http://127.0.0.1:1";  // closed port
  auto chain = Chain();
  EXPECT_TRUE(chain->Refreshable());
  EXPECT_EQ(chain->Source(),
            "web identity: role arn:aws:iam::1:role/r (AWS_ROLE_ARN, AWS_WEB_IDENTITY_TOKEN_FILE)");
  auto c = chain->Get();
  ASSERT_FALSE(c.ok());
  const std::string& m = c.status().message();
  EXPECT_NE(m.find("web identity"), std::string::npos) << m;
  EXPECT_NE(m.find("http://127.0.0.1:1"), std::string::npos) << m;
  EXPECT_NE(m.find("AWS_ENDPOINT_URL_STS"), std::string::npos) << m;
  EXPECT_EQ(m.find("jwt-secret-value"), std::string::npos) << m;
}

TEST_F(AwsChain, MissingWebIdentityTokenFileNamesTheVariable) {
  env_["AWS_ROLE_ARN"] = "arn:aws:iam::1:role/r";
  env_["AWS_WEB_IDENTITY_TOKEN_FILE"] = (dir_ / "absent").string();
  env_["AWS_ENDPOINT_URL_STS"] = "http://127.0.0.1:1";
  auto c = Chain()->Get();
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("AWS_WEB_IDENTITY_TOKEN_FILE"), std::string::npos);
}

TEST_F(AwsChain, ConfigProfileWithWebIdentity) {
  env_["AWS_CONFIG_FILE"] = Write("config",
                                  "[profile irsa]\nrole_arn = arn:aws:iam::2:role/p\n"
                                  "web_identity_token_file = /var/run/token\nregion = us-west-2\n");
  env_["AWS_PROFILE"] = "irsa";
  auto chain = Chain();
  EXPECT_TRUE(chain->Refreshable());
  EXPECT_EQ(chain->ProfileRegion(), "us-west-2");
  EXPECT_EQ(chain->Source().rfind("web identity: role arn:aws:iam::2:role/p (profile irsa", 0), 0u)
      << chain->Source();
}

TEST_F(AwsChain, UnsupportedProfilesFailClearly) {
  env_["AWS_CONFIG_FILE"] =
      Write("config",
            "[default]\ncredential_process = /bin/creds\n"
            "[profile chained]\nrole_arn=arn:aws:iam::1:role/x\nsource_profile=default\n");
  auto process = Chain()->Get();
  ASSERT_FALSE(process.ok());
  EXPECT_NE(process.status().message().find("credential_process"), std::string::npos);
  env_["AWS_PROFILE"] = "chained";
  auto chained = Chain()->Get();
  ASSERT_FALSE(chained.ok());
  EXPECT_NE(chained.status().message().find("source_profile"), std::string::npos);
}

TEST_F(AwsChain, ProfileWithoutCredentialsFallsThrough) {
  env_["AWS_CONFIG_FILE"] = Write("config", "[default]\nregion = eu-north-1\n");
  env_["AWS_CONTAINER_CREDENTIALS_FULL_URI"] = "http://127.0.0.1:1/creds";
  auto chain = Chain();
  EXPECT_EQ(chain->Source().rfind("container credentials: http://127.0.0.1:1/creds", 0), 0u)
      << chain->Source();
  EXPECT_FALSE(chain->Get().ok());  // configured but unreachable: an error, not anonymous
}

TEST_F(AwsChain, ContainerRelativeUriWinsAndForeignHostsAreRefused) {
  env_["AWS_CONTAINER_CREDENTIALS_FULL_URI"] = "http://evil.example.com/creds";
  auto refused = Chain()->Get();
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("AWS_CONTAINER_CREDENTIALS_FULL_URI"),
            std::string::npos);
  env_["AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"] = "/v2/credentials/x";
  EXPECT_EQ(Chain()->Source().rfind("container credentials: http://169.254.170.2/v2/", 0), 0u);
}

TEST_F(AwsChain, InstanceMetadataAbsentIsAnonymous) {
  env_.erase("AWS_EC2_METADATA_DISABLED");
  env_["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = "http://127.0.0.1:1";  // closed
  auto chain = Chain();
  auto c = chain->Get();
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_TRUE(c->anonymous());
  EXPECT_FALSE(chain->Refreshable());
  EXPECT_EQ(chain->Source().rfind("anonymous: nothing found", 0), 0u);
}

}  // namespace
}  // namespace mx::cloud
