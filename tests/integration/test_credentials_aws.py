"""The AWS default credential chain, end to end: for each environment of a table (each link
alone, two links at once, a rotating token file, a token that expires mid-read, nothing at
all, a broken link) mx and the official SDK (tests/sdk_oracle/aws.mjs: the JS SDK's
fromNodeProviderChain) run with the same variables against the same stand-ins
(aws_token_peers.py) and must agree on the link and the credential. mx then streams a
model through a SigV4-checking proxy in front of s3rver, which lets through only requests
signed with a credential the stand-ins issued: the session token that reached storage is
compared with the one the SDK obtained. No mx output may contain a secret or token."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import unittest
from pathlib import Path

from aws_token_peers import ContainerStandIn, ImdsStandIn, Registry, S3AuthProxy, StsStandIn
from harness import free_port, mx_binary, run
from storage_peers import S3rver, write_model

HERE = Path(__file__).resolve().parent
ORACLE = HERE.parent / "sdk_oracle" / "aws.mjs"
URI = "s3://models/org/model"
ROLE = "arn:aws:iam::123456789012:role/mx-reader"
PROFILE_ROLE = "arn:aws:iam::123456789012:role/mx-profile-reader"

# Every AWS variable a developer's shell might hold: removed, then set per case.
AWS_VARS = [
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_CREDENTIAL_EXPIRATION",
    "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_SESSION_NAME", "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_EC2_METADATA_DISABLED", "AWS_EC2_METADATA_SERVICE_ENDPOINT",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL_STS", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "AWS_SDK_LOAD_CONFIG",
    "MX_S3_ADDRESSING_STYLE",
]


def digests(expected: dict) -> dict:
    return {k: hashlib.sha256(v).hexdigest() for k, v in expected.items()}


def mx_link(source: str) -> str:
    """mx's --explain-credentials text -> the oracle's link name."""
    if source.startswith("web identity"):
        return "shared files: web identity" if "(profile " in source else "web identity"
    for name in ("environment", "shared files", "container", "instance metadata", "anonymous"):
        if source.startswith(name):
            return name
    return "?" + source


class AwsCredentialChainTest(unittest.TestCase):
    outputs: list = []  # every mx stdout/stderr of the suite (checked for secrets last)
    static_secrets = {"stale-token", "env-secret-Zq9", "env-session-Zq9", "file-secret-Xw3", "default-secret-Kp7",
                      "S3RVER-not-issued-secret"}

    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp(prefix="mx-aws-cred-"))
        cls.home = cls.tmp / "home"
        cls.home.mkdir()
        cls.expected = digests(write_model(cls.tmp / "model", shards=2, seed=11, big=256 << 10))
        cls.s3 = S3rver(cls.tmp).start()
        cls.s3.upload_dir(cls.tmp / "model", "org/model")
        cls.registry = Registry()
        cls.jwt_file = cls.tmp / "irsa-token"
        cls.profile_jwt_file = cls.tmp / "profile-token"
        cls.pod_token_file = cls.tmp / "eks-pod-identity-token"
        cls.sts = StsStandIn(cls.registry, [cls.jwt_file, cls.profile_jwt_file]).start()
        cls.container = ContainerStandIn(cls.registry, token_file=cls.pod_token_file).start()
        cls.imds = ImdsStandIn(cls.registry).start()
        cls.proxy = S3AuthProxy(cls.registry, cls.s3.port).start()
        cls.closed = free_port()  # nothing listens here: instance metadata "absent"

    @classmethod
    def tearDownClass(cls):
        for peer in (cls.proxy, cls.imds, cls.container, cls.sts):
            peer.stop()
        cls.s3.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        self.jwt_file.write_text("jwt-irsa-1")
        self.profile_jwt_file.write_text("jwt-profile-1")
        self.pod_token_file.write_text("eks-pod-token-1")
        self.sts.rotate, self.sts.refuse, self.sts.lifetime_s = False, None, 3600
        self.proxy.expire_at_first_read = None
        for peer in (self.sts, self.container, self.imds, self.proxy):
            peer.clear()

    # -- helpers -------------------------------------------------------------------------

    def env(self, **extra) -> dict:
        e = {k: None for k in AWS_VARS}
        e.update({"HOME": str(self.home), "AWS_REGION": "us-east-1",
                  "AWS_ENDPOINT_URL": self.proxy.endpoint, "AWS_ENDPOINT_URL_STS": self.sts.endpoint,
                  "AWS_EC2_METADATA_SERVICE_ENDPOINT": f"http://127.0.0.1:{self.closed}",
                  "MX_LOG_LEVEL": "debug"})
        e.update(extra)
        return e

    def write(self, name: str, text: str) -> str:
        p = self.tmp / name
        p.write_text(text)
        return str(p)

    def mx(self, *args, env: dict):
        r = run([mx_binary(), *args], env=env, timeout=300)
        self.outputs.append(r.stdout + r.stderr)
        return r

    def explain(self, env: dict) -> str:
        r = self.mx("stream", "--explain-credentials", URI, env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        line = r.stdout.strip().splitlines()[-1]
        self.assertTrue(line.startswith(URI + ": "), line)
        return line[len(URI) + 2:]

    def stream(self, env: dict):
        r = self.mx("stream", "--json", "--tensor-digests", URI, env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        report = json.loads(r.stdout.strip().splitlines()[-1])
        self.assertEqual(report["tensor_sha256"], self.expected)

    def oracle(self, env: dict) -> dict:
        e = dict(env)
        e.pop("MX_LOG_LEVEL", None)
        r = run(["node", str(ORACLE)], env=e, timeout=120)
        self.assertTrue(r.stdout.strip(), r.stderr)
        return json.loads(r.stdout.strip().splitlines()[-1])

    def agree(self, env: dict, link: str, issuer: str) -> tuple[dict, list]:
        """The SDK and mx pick `link`; mx reads the model with a credential from `issuer`;
        returns (the SDK's answer, the (akid, token) pairs that reached storage)."""
        sdk = self.oracle(env)
        self.assertTrue(sdk["ok"], sdk)
        self.assertEqual(sdk["link"], link, sdk)
        source = self.explain(env)
        self.assertEqual(mx_link(source), link, source)
        self.proxy.clear()
        self.stream(env)
        seen = self.proxy.seen()
        self.assertTrue(seen)
        with self.registry.lock:
            by_akid = {c["AccessKeyId"]: c for c in self.registry.issued}
        for akid, _ in seen:
            self.assertEqual(by_akid[akid]["issuer"], issuer)
        return sdk, seen

    def assert_same_credential(self, sdk: dict, seen: list):
        """Every request mx made carried exactly the credential the SDK obtained."""
        self.assertEqual({a for a, _ in seen}, {sdk["accessKeyId"]})
        self.assertEqual({t for _, t in seen}, {sdk["sessionToken"]})

    # -- each link alone -----------------------------------------------------------------

    def test_environment_keys(self):
        self.registry.register_static("AKIAENVKEYS", "env-secret-Zq9", "env-session-Zq9")
        env = self.env(AWS_ACCESS_KEY_ID="AKIAENVKEYS", AWS_SECRET_ACCESS_KEY="env-secret-Zq9",
                       AWS_SESSION_TOKEN="env-session-Zq9")
        sdk, seen = self.agree(env, "environment", "static")
        self.assert_same_credential(sdk, seen)
        self.assertEqual(self.explain(env), "environment (AWS_ACCESS_KEY_ID, AWS_SESSION_TOKEN)")

    def test_web_identity_irsa_only(self):
        # Only the IRSA variables: the role, the projected token, STS and S3 endpoints, region.
        env = self.env(AWS_ROLE_ARN=ROLE, AWS_WEB_IDENTITY_TOKEN_FILE=str(self.jwt_file),
                       AWS_ROLE_SESSION_NAME="mx-test")
        sdk, seen = self.agree(env, "web identity", "sts")
        self.assert_same_credential(sdk, seen)
        self.assertEqual(self.explain(env),
                         f"web identity: role {ROLE} (AWS_ROLE_ARN, AWS_WEB_IDENTITY_TOKEN_FILE)")
        calls = [r for r in self.sts.snapshot() if r["status"] == 200]
        self.assertTrue(calls)
        for r in calls:  # the documented request: unsigned form POST
            self.assertEqual((r["action"], r["version"], r["role_arn"]),
                             ("AssumeRoleWithWebIdentity", "2011-06-15", ROLE))
            self.assertIsNone(r["authorization"])
            self.assertEqual(r["web_identity_token"], "jwt-irsa-1")
        # The control: the proxy refuses what the stand-ins did not issue (here s3rver's own
        # keys), so the read above really carried the STS credential.
        bad = self.mx("stream", "--json", URI,
                      env=self.env(AWS_ACCESS_KEY_ID="S3RVER", AWS_SECRET_ACCESS_KEY="S3RVER"))
        self.assertNotEqual(bad.returncode, 0)
        self.assertIn("InvalidAccessKeyId", [r["code"] for r in self.proxy.snapshot()])

    def test_shared_credentials_file_profile(self):
        self.registry.register_static("AKIAFILEDEV", "file-secret-Xw3")
        self.registry.register_static("AKIAFILEDEFAULT", "default-secret-Kp7")
        creds = self.write("credentials", "[default]\naws_access_key_id = AKIAFILEDEFAULT\n"
                                          "aws_secret_access_key = default-secret-Kp7\n\n"
                                          "[dev]\naws_access_key_id = AKIAFILEDEV\n"
                                          "aws_secret_access_key = file-secret-Xw3\n")
        env = self.env(AWS_SHARED_CREDENTIALS_FILE=creds, AWS_PROFILE="dev")
        sdk, seen = self.agree(env, "shared files", "static")
        self.assertEqual(sdk["accessKeyId"], "AKIAFILEDEV")
        self.assertEqual({a for a, _ in seen}, {"AKIAFILEDEV"})
        self.assertEqual({t for _, t in seen}, {None})
        self.assertEqual(self.explain(env), f"shared files: profile dev (shared credentials file {creds})")

    def test_config_file_web_identity_profile(self):
        config = self.write("config", f"[profile irsa]\nrole_arn = {PROFILE_ROLE}\n"
                                      f"web_identity_token_file = {self.profile_jwt_file}\n"
                                      "role_session_name = mx-profile\nregion = us-east-1\n"
                                      "[irsa]\nrole_arn = arn:aws:iam::1:role/not-a-config-profile\n")
        env = self.env(AWS_CONFIG_FILE=config, AWS_PROFILE="irsa")
        sdk, seen = self.agree(env, "shared files: web identity", "sts")
        self.assert_same_credential(sdk, seen)
        roles = {r["role_arn"] for r in self.sts.snapshot()}
        self.assertEqual(roles, {PROFILE_ROLE})

    def test_container_full_uri_with_token_file(self):
        url = f"{self.container.endpoint}/v1/credentials"
        env = self.env(AWS_CONTAINER_CREDENTIALS_FULL_URI=url,
                       AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=str(self.pod_token_file))
        sdk, seen = self.agree(env, "container", "container")
        self.assert_same_credential(sdk, seen)
        self.assertEqual({r["authorization"] for r in self.container.snapshot()}, {"eks-pod-token-1"})
        self.assertEqual(self.explain(env), f"container credentials: {url} "
                                            "(AWS_CONTAINER_CREDENTIALS_FULL_URI, "
                                            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE)")
        # The token as a variable instead (ECS, older EKS setups); the file wins when both are set.
        env = self.env(AWS_CONTAINER_CREDENTIALS_FULL_URI=url,
                       AWS_CONTAINER_AUTHORIZATION_TOKEN="eks-pod-token-1")
        sdk, seen = self.agree(env, "container", "container")
        self.assert_same_credential(sdk, seen)
        env["AWS_CONTAINER_AUTHORIZATION_TOKEN"] = "stale-token"
        env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"] = str(self.pod_token_file)
        sdk, seen = self.agree(env, "container", "container")
        self.assert_same_credential(sdk, seen)

    def test_instance_metadata_v2(self):
        env = self.env(AWS_EC2_METADATA_SERVICE_ENDPOINT=self.imds.endpoint)
        sdk, seen = self.agree(env, "instance metadata", "imds")
        self.assert_same_credential(sdk, seen)
        self.assertEqual(self.explain(env), f"instance metadata: role mx-node-role ({self.imds.endpoint})")
        records = self.imds.snapshot()
        self.assertTrue(any(r["method"] == "PUT" and r["status"] == 200 for r in records))
        self.assertFalse([r for r in records if r["status"] == 401])  # always with a token

    def test_instance_metadata_v1_fallback(self):
        # A service without IMDSv2 (the token call answers 403): the SDK falls back to
        # IMDSv1, and so does mx, unless AWS_EC2_METADATA_V1_DISABLED forbids it.
        self.imds.token_status = 403
        try:
            env = self.env(AWS_EC2_METADATA_SERVICE_ENDPOINT=self.imds.endpoint)
            sdk, seen = self.agree(env, "instance metadata", "imds")
            self.assert_same_credential(sdk, seen)
            env["AWS_EC2_METADATA_V1_DISABLED"] = "true"
            self.assertFalse(self.oracle(env)["ok"])
            r = self.mx("stream", "--explain-credentials", URI, env=env)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("AWS_EC2_METADATA_V1_DISABLED", r.stderr)
        finally:
            self.imds.token_status = None

    # -- precedence ----------------------------------------------------------------------

    def test_environment_keys_beat_web_identity(self):
        self.registry.register_static("AKIAENVKEYS", "env-secret-Zq9", "env-session-Zq9")
        env = self.env(AWS_ACCESS_KEY_ID="AKIAENVKEYS", AWS_SECRET_ACCESS_KEY="env-secret-Zq9",
                       AWS_SESSION_TOKEN="env-session-Zq9", AWS_ROLE_ARN=ROLE,
                       AWS_WEB_IDENTITY_TOKEN_FILE=str(self.jwt_file))
        sdk, seen = self.agree(env, "environment", "static")
        self.assert_same_credential(sdk, seen)
        self.assertFalse(self.sts.snapshot())  # STS never asked

    def test_shared_files_beat_web_identity_and_profile_beats_environment(self):
        # The JS SDK's order (boto3 differs in both): the shared files come before the web
        # identity variables, and AWS_PROFILE makes it skip the environment keys.
        self.registry.register_static("AKIAFILEDEFAULT", "default-secret-Kp7")
        self.registry.register_static("AKIAFILEDEV", "file-secret-Xw3")
        creds = self.write("credentials", "[default]\naws_access_key_id = AKIAFILEDEFAULT\n"
                                          "aws_secret_access_key = default-secret-Kp7\n"
                                          "[dev]\naws_access_key_id = AKIAFILEDEV\n"
                                          "aws_secret_access_key = file-secret-Xw3\n")
        env = self.env(AWS_SHARED_CREDENTIALS_FILE=creds, AWS_ROLE_ARN=ROLE,
                       AWS_WEB_IDENTITY_TOKEN_FILE=str(self.jwt_file))
        sdk, seen = self.agree(env, "shared files", "static")
        self.assertEqual((sdk["accessKeyId"], {a for a, _ in seen}), ("AKIAFILEDEFAULT", {"AKIAFILEDEFAULT"}))
        env = self.env(AWS_SHARED_CREDENTIALS_FILE=creds, AWS_PROFILE="dev",
                       AWS_ACCESS_KEY_ID="AKIAENVKEYS", AWS_SECRET_ACCESS_KEY="env-secret-Zq9")
        sdk, seen = self.agree(env, "shared files", "static")
        self.assertEqual((sdk["accessKeyId"], {a for a, _ in seen}), ("AKIAFILEDEV", {"AKIAFILEDEV"}))

    # -- refresh -------------------------------------------------------------------------

    def test_rotating_token_file(self):
        # Credentials that are always within the refresh margin make every request fetch
        # anew; the stand-in rotates the projected token after each answer and accepts only
        # the current one, so mx must re-read the file at each refresh.
        self.sts.rotate, self.sts.lifetime_s = True, 200
        env = self.env(AWS_ROLE_ARN=ROLE, AWS_WEB_IDENTITY_TOKEN_FILE=str(self.jwt_file))
        sdk, seen = self.agree(env, "web identity", "sts")
        ok_calls = [r for r in self.sts.snapshot() if r["status"] == 200]
        self.assertFalse([r for r in self.sts.snapshot() if r["status"] != 200])
        jwts = [r["web_identity_token"] for r in ok_calls]
        self.assertEqual(jwts[0], "jwt-irsa-1")  # the oracle's call
        self.assertGreaterEqual(len(set(jwts[1:])), 3, jwts)  # mx's calls, each a new token
        issued_to_mx = {(r["issued"], r["session_token"]) for r in ok_calls[1:]}
        self.assertTrue(set(seen) <= issued_to_mx)
        self.assertGreaterEqual(len(set(seen)), 2)

    def test_expired_token_is_refreshed(self):
        # The proxy revokes the session token at the first ranged read (400 ExpiredToken, as S3) and
        # STS then issues a new one: mx must renew once and finish the read.
        def expire(token):
            self.registry.revoke(token)
            with self.sts.lock:
                self.sts.generation += 1

        env = self.env(AWS_ROLE_ARN=ROLE, AWS_WEB_IDENTITY_TOKEN_FILE=str(self.jwt_file))
        with self.sts.lock:
            self.sts.generation += 1  # a fresh pair, never revoked before
        sdk = self.oracle(env)
        self.proxy.expire_at_first_read = expire
        self.sts.clear()
        sdk2, seen = self.agree(env, "web identity", "sts")
        self.assertEqual(sdk2["accessKeyId"], sdk["accessKeyId"])
        refused = [r for r in self.proxy.snapshot() if r["code"] == "ExpiredToken"]
        self.assertTrue(refused)
        first = refused[0]["session_token"]
        self.assertEqual(first, sdk["sessionToken"])  # mx had the SDK's credential first
        after = {t for _, t in seen} - {first}
        self.assertEqual(len(after), 1, seen)  # then exactly one new token
        self.assertGreaterEqual(len([r for r in self.sts.snapshot() if r["status"] == 200]), 3)

    # -- nothing, and broken -------------------------------------------------------------

    def test_nothing_configured_is_anonymous(self):
        env = self.env()
        sdk = self.oracle(env)
        self.assertFalse(sdk["ok"])
        self.assertIn("Could not load credentials from any providers", sdk["error"])
        source = self.explain(env)
        self.assertEqual(source,
                         "anonymous: nothing found; tried environment, web identity, shared files "
                         f"({self.home}/.aws/credentials, {self.home}/.aws/config), container, "
                         f"instance metadata (http://127.0.0.1:{self.closed}: no role credentials)")
        # Unsigned requests, as before: s3rver serves them (a public bucket).
        self.stream(self.env(AWS_ENDPOINT_URL=self.s3.endpoint))

    def test_broken_web_identity_is_a_clear_error(self):
        self.sts.refuse = (403, "AccessDenied")
        env = self.env(AWS_ROLE_ARN=ROLE, AWS_WEB_IDENTITY_TOKEN_FILE=str(self.jwt_file))
        sdk = self.oracle(env)
        self.assertFalse(sdk["ok"])
        for args in (("stream", "--explain-credentials", URI), ("stream", "--json", URI)):
            r = self.mx(*args, env=env)
            self.assertNotEqual(r.returncode, 0)
            for part in ("web identity", self.sts.endpoint, "AWS_ENDPOINT_URL_STS", "AccessDenied",
                         "<redacted>"):  # the stand-in echoed the token; mx does not
                self.assertIn(part, r.stderr)
            self.assertNotIn("jwt-irsa-1", r.stderr)
        self.assertFalse(self.proxy.snapshot())  # never fell through to anonymous reads

    def test_broken_container_endpoint_is_a_clear_error(self):
        url = f"http://127.0.0.1:{self.closed}/v1/credentials"
        env = self.env(AWS_CONTAINER_CREDENTIALS_FULL_URI=url,
                       AWS_EC2_METADATA_SERVICE_ENDPOINT=self.imds.endpoint)
        r = self.mx("stream", "--explain-credentials", URI, env=env)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("container credentials", r.stderr)
        self.assertIn("AWS_CONTAINER_CREDENTIALS_FULL_URI", r.stderr)
        foreign = self.env(AWS_CONTAINER_CREDENTIALS_FULL_URI="http://192.0.2.1/creds")
        r = self.mx("stream", "--explain-credentials", URI, env=foreign)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("not accepted", r.stderr)

    def test_hostile_container_answers(self):
        # Oversized, not JSON, a field missing or of the wrong type, already expired, a header
        # injection in the token: mx refuses each with an error naming the endpoint (no fall
        # to anonymous), and nothing is read.
        url = f"{self.container.endpoint}/v1/credentials"
        env = self.env(AWS_CONTAINER_CREDENTIALS_FULL_URI=url,
                       AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=str(self.pod_token_file))
        good = {"AccessKeyId": "ASIAHOSTILE", "SecretAccessKey": "s", "Token": "t",
                "Expiration": "2099-01-01T00:00:00Z"}
        answers = [b"{" + b" " * (2 << 20) + b"}", b"<html>not json</html>", b"[]",
                   json.dumps({k: v for k, v in good.items() if k != "Token"}).encode(),
                   json.dumps(dict(good, AccessKeyId=7)).encode(),
                   json.dumps(dict(good, Expiration="2001-01-01T00:00:00Z")).encode(),
                   json.dumps(dict(good, Token="t\r\nX-Injected: 1")).encode()]
        try:
            for answer in answers:
                self.container.answer = answer
                r = self.mx("stream", "--json", URI, env=env)
                self.assertNotEqual(r.returncode, 0, answer[:60])
                self.assertIn(f"container credentials at {url}", r.stderr)
                self.assertNotIn("Traceback", r.stderr)
        finally:
            self.container.answer = None
        self.assertFalse(self.proxy.snapshot())

    # -- last: no secret in any output ---------------------------------------------------

    def test_zz_no_secret_in_any_mx_output(self):
        if len(self.outputs) < 10:
            self.skipTest("checks the outputs of the whole class; run it all")
        secrets = self.registry.secrets() | self.static_secrets | {
            "jwt-irsa-1", "jwt-profile-1", "eks-pod-token-1"}
        secrets |= {f"jwt-irsa-{i}" for i in range(2, 200)}
        for out in self.outputs:
            for s in secrets:
                self.assertNotIn(s, out, f"a secret appears in mx output: {out[:300]!r}")


if __name__ == "__main__":
    unittest.main()
