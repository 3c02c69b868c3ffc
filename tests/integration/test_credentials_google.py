"""Google Application Default Credentials: mx against google-auth-library (the oracle,
tests/sdk_oracle/google.mjs) in the same environments, over the same stand-in token
endpoints (google_token_peers.py) and a GCS XML-API stand-in that refuses any request
without a bearer token the token peer issued.

Per environment: the SDK and mx must pick the same link (the SDK's client class, mx's
--explain-credentials line), obtain the same kind of token through the same requests
(the token peer's records: JWT iss/scope with a verified RS256 signature, refresh token,
STS audience/scope/subject token, impersonation scope, metadata scopes), and mx must
read the model byte-identically with it (mx stream --verify --json).

Isolation: HOME and CLOUDSDK_CONFIG are temp dirs, GCE_METADATA_HOST is a closed
127.0.0.x port (or the metadata stand-in), every token_uri/token_url is a stand-in, the
oracle sends the library's fixed oauth2.googleapis.com endpoint to the stand-in and
refuses every non-loopback origin and DNS name (and the test asserts it tried none).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import unittest
from pathlib import Path

from google_token_peers import GcsPeer, GoogleTokenPeer, closed_port, new_rsa_key
from harness import mx_binary, run
from storage_peers import write_model

HERE = Path(__file__).resolve().parent
ORACLE = HERE.parent / "sdk_oracle" / "google.mjs"
SCOPE_RO = "https://www.googleapis.com/auth/devstorage.read_only"
SCOPE_CP = "https://www.googleapis.com/auth/cloud-platform"
SA_EMAIL = "reader@mx-test.iam.gserviceaccount.com"
IMP_EMAIL = "impersonated@mx-test.iam.gserviceaccount.com"
AUDIENCE = "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/pool/providers/prov"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
BUCKET = "models"
URI = f"gs://{BUCKET}/org/model"

# Variables that would change the chain if a developer's shell had them.
CLEARED = ["GOOGLE_APPLICATION_CREDENTIALS", "google_application_credentials", "GCE_METADATA_IP",
           "METADATA_SERVER_DETECTION", "GCS_OAUTH_TOKEN", "CLOUDSDK_AUTH_ACCESS_TOKEN",
           "GOOGLE_OAUTH_ACCESS_TOKEN", "GCS_HMAC_ACCESS_KEY_ID", "GCS_HMAC_SECRET_ACCESS_KEY",
           "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "STORAGE_EMULATOR_HOST",
           "K_SERVICE", "CLOUD_RUN_JOB", "FUNCTION_NAME", "CLOUD_RUN_WORKER_POOL", "GCE_METADATA_TIMEOUT",
           "MX_LOG_LEVEL", "GOOGLE_CLOUD_QUOTA_PROJECT", "DEBUG_AUTH"]


def digests(expected: dict) -> dict:
    return {k: hashlib.sha256(v).hexdigest() for k, v in expected.items()}


class GoogleCredentialsTest(unittest.TestCase):
    outputs: list[str] = []  # every mx stdout/stderr of the suite, for the secret check

    @classmethod
    def setUpClass(cls):
        if shutil.which("node") is None or not (HERE.parent / "sdk_oracle" / "node_modules" /
                                               "google-auth-library").is_dir():
            raise unittest.SkipTest("node or tests/sdk_oracle/node_modules missing (scripts/install-deps.sh)")
        cls.tmp = Path(tempfile.mkdtemp(prefix="mx-google-"))
        cls.bucket_dir = cls.tmp / "bucket"
        cls.expected = digests(write_model(cls.bucket_dir / "org" / "model", shards=3, seed=7))
        cls.tokens = GoogleTokenPeer().start()
        cls.gcs = GcsPeer(cls.bucket_dir, BUCKET, cls.tokens).start()
        cls.pem, public = new_rsa_key()
        cls.tokens.public_keys[SA_EMAIL] = public
        cls.refresh_token = "1//refresh-" + os.urandom(8).hex()
        cls.client_secret = "client-secret-" + os.urandom(8).hex()
        cls.tokens.users[cls.refresh_token] = ("mx-test.apps.googleusercontent.com", cls.client_secret)
        cls.closed = f"127.0.0.66:{closed_port('127.0.0.66')}"
        cls.case = 0

    @classmethod
    def tearDownClass(cls):
        cls.tokens.stop()
        cls.gcs.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        self.tokens.reset()
        self.tokens.expires_in = 3600
        self.tokens.refuse = None
        self.tokens.subject_file = None
        self.tokens.subject_tokens = set()
        self.gcs.reset()
        self.gcs.public = False
        self.gcs.revoke_first = False

    # -- environment -------------------------------------------------------------------------

    def sandbox(self) -> tuple[Path, dict]:
        type(self).case += 1
        sd = self.tmp / f"case{self.case}"
        (sd / "home").mkdir(parents=True)
        (sd / "gcloud").mkdir()
        env = {k: None for k in CLEARED}
        env.update(HOME=sd / "home", CLOUDSDK_CONFIG=sd / "gcloud", GCE_METADATA_HOST=self.closed,
                   GOOGLE_CLOUD_PROJECT="mx-test", MX_ORACLE_OAUTH2_URL=self.tokens.url,
                   GCS_ENDPOINT_URL=self.gcs.url)
        return sd, env

    def write_json(self, path: Path, obj: dict) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(obj))
        return path

    def sa_key(self, path: Path) -> Path:
        return self.write_json(path, {
            "type": "service_account", "project_id": "mx-test", "private_key_id": "kid-1",
            "private_key": self.pem, "client_email": SA_EMAIL, "client_id": "1",
            "token_uri": self.tokens.url + "/token"})

    def user_file(self, path: Path) -> Path:
        return self.write_json(path, {
            "type": "authorized_user", "client_id": "mx-test.apps.googleusercontent.com",
            "client_secret": self.client_secret, "refresh_token": self.refresh_token,
            "token_uri": self.tokens.url + "/token"})

    def external_file(self, path: Path, source: dict, impersonate: bool = False) -> Path:
        obj = {"type": "external_account", "audience": AUDIENCE, "subject_token_type": JWT_TYPE,
               "token_url": self.tokens.url + "/v1/token", "credential_source": source}
        if impersonate:
            obj["service_account_impersonation_url"] = (
                f"{self.tokens.url}/v1/projects/-/serviceAccounts/{IMP_EMAIL}:generateAccessToken")
        return self.write_json(path, obj)

    # -- runs --------------------------------------------------------------------------------

    def oracle(self, env: dict, calls: int = 1, ok: bool = True) -> dict:
        e = dict(env, MX_ORACLE_CALLS=calls)
        r = run(["node", ORACLE], env=e, timeout=120)
        out = json.loads(r.stdout.strip().splitlines()[-1])
        self.assertEqual(out["dns"], [], "the SDK tried DNS names")
        self.assertEqual(out["refused"], [], "the SDK tried non-loopback origins")
        if ok:
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        else:
            self.assertNotEqual(r.returncode, 0, r.stdout)
        return out

    def mx(self, args: list, env: dict, ok: bool = True):
        r = run([mx_binary(), *args], env=env, timeout=300)
        type(self).outputs.append(r.stdout + "\n" + r.stderr)
        if ok:
            self.assertEqual(r.returncode, 0, r.stderr)
        return r

    def explain(self, env: dict) -> str:
        out = self.mx(["stream", "--explain-credentials", URI], env).stdout.strip()
        self.assertTrue(out.startswith(URI + ": "), out)
        return out[len(URI) + 2:]

    def stream(self, env: dict, ok: bool = True):
        r = self.mx(["stream", "--json", "--tensor-digests", "--verify", URI], env, ok=ok)
        if ok:
            report = json.loads(r.stdout.strip().splitlines()[-1])
            self.assertEqual(report["tensor_sha256"], self.expected)
        return r

    # -- the table ---------------------------------------------------------------------------

    def scenarios(self):
        """name -> (build(sd, env) -> env, SDK client class, mx link prefix, token kind,
        record kind and the fields both clients must have sent alike, oracle calls)."""
        t = self.tokens

        def sa_alone(sd, env):
            env["GOOGLE_APPLICATION_CREDENTIALS"] = self.sa_key(sd / "sa.json")
            return env

        def user_alone(sd, env):
            env["GOOGLE_APPLICATION_CREDENTIALS"] = self.user_file(sd / "user.json")
            return env

        def ext_file(sd, env):
            (sd / "subject").write_text("subject-static")
            t.subject_tokens = {"subject-static"}
            env["GOOGLE_APPLICATION_CREDENTIALS"] = self.external_file(
                sd / "ext.json", {"file": str(sd / "subject")})
            return env

        def ext_impersonate(sd, env):
            (sd / "subject").write_text("subject-imp")
            t.subject_tokens = {"subject-imp"}
            env["GOOGLE_APPLICATION_CREDENTIALS"] = self.external_file(
                sd / "ext.json", {"file": str(sd / "subject")}, impersonate=True)
            return env

        def ext_url(sd, env):
            t.subject_tokens = {"subject-from-url"}
            t.url_subject = ("subject-from-url", "X-Subject-Key", "k-123")
            env["GOOGLE_APPLICATION_CREDENTIALS"] = self.external_file(sd / "ext.json", {
                "url": t.url + "/subject", "headers": {"X-Subject-Key": "k-123"},
                "format": {"type": "json", "subject_token_field_name": "id_token"}})
            return env

        def ext_rotating(sd, env):
            (sd / "subject").write_text("subject-0")
            t.subject_tokens = {"subject-0"}
            t.subject_file = sd / "subject"
            t.expires_in = 2  # under the refresh margin: every use exchanges again
            env["GOOGLE_APPLICATION_CREDENTIALS"] = self.external_file(
                sd / "ext.json", {"file": str(sd / "subject")})
            return env

        def gcloud_file(sd, env):
            self.user_file(sd / "gcloud" / "application_default_credentials.json")
            return env

        def gcloud_under_home(sd, env):
            env["CLOUDSDK_CONFIG"] = None
            self.sa_key(sd / "home" / ".config" / "gcloud" / "application_default_credentials.json")
            return env

        def metadata(sd, env):
            env["GCE_METADATA_HOST"] = t.url[len("http://"):]
            return env

        def all_three(sd, env):
            return sa_alone(sd, gcloud_file(sd, metadata(sd, env)))

        def gcloud_and_metadata(sd, env):
            return gcloud_file(sd, metadata(sd, env))

        def expired(sd, env):
            t.expires_in = 2
            return sa_alone(sd, env)

        sa_fields = ("sa", ("iss", "scope", "verified"))
        user_fields = ("user", ("refresh_token", "client_id", "client_secret"))
        sts_fields = ("sts", ("grant_type", "audience", "scope", "requested_token_type",
                              "subject_token_type"))
        return {
            "service_account key alone": (sa_alone, "JWT", f"service account key file: {SA_EMAIL} "
                                          "(GOOGLE_APPLICATION_CREDENTIALS", "sa", sa_fields, 1),
            "authorized_user alone": (user_alone, "UserRefreshClient", "authorized user (refresh token) "
                                      "file (GOOGLE_APPLICATION_CREDENTIALS", "user", user_fields, 1),
            "external_account file-sourced": (ext_file, "IdentityPoolClient", "external account (workload "
                                              f"identity federation): audience {AUDIENCE}, subject token "
                                              "from file", "sts", sts_fields, 1),
            "external_account with impersonation": (ext_impersonate, "IdentityPoolClient", "external account",
                                                    "imp", ("imp", ("email", "scope", "lifetime")), 1),
            "external_account url-sourced json": (ext_url, "IdentityPoolClient", "external account", "sts",
                                                  sts_fields, 1),
            "subject-token file rotates": (ext_rotating, "IdentityPoolClient", "external account", "sts",
                                           sts_fields, 2),
            "gcloud ADC file alone": (gcloud_file, "UserRefreshClient", "authorized user (refresh token) "
                                      "file (gcloud ADC file ", "user", user_fields, 1),
            "gcloud ADC file under HOME": (gcloud_under_home, "JWT", f"service account key file: {SA_EMAIL} "
                                           "(gcloud ADC file ", "sa", sa_fields, 1),
            "metadata server alone": (metadata, "Compute", "metadata server: default service account "
                                      "(GCE_METADATA_HOST=", "md", ("md", ("scopes",)), 1),
            "key file beats gcloud file beats metadata": (all_three, "JWT", "service account key file:",
                                                          "sa", sa_fields, 1),
            "gcloud file beats metadata": (gcloud_and_metadata, "UserRefreshClient", "authorized user",
                                           "user", user_fields, 1),
            "expired token refreshed": (expired, "JWT", "service account key file:", "sa", sa_fields, 2),
        }

    def test_sdk_and_mx_agree(self):
        for name, (build, client, link, kind, (rec_kind, fields), calls) in self.scenarios().items():
            with self.subTest(name):
                self.setUp()
                sd, env = self.sandbox()
                env = build(sd, env)

                sdk = self.oracle(env, calls=calls)
                self.assertEqual(sdk["client"], client)
                self.assertEqual(len(sdk["tokens"]), calls)
                for tok in sdk["tokens"]:
                    self.assertTrue(tok.startswith(f"ya29.{kind}-"), tok)
                sdk_records = [r for r in self.tokens.records if r["kind"] == rec_kind]
                self.assertTrue(sdk_records, self.tokens.kinds())
                if calls > 1:  # the SDK refreshed: a second, different token
                    self.assertEqual(len(set(sdk["tokens"])), calls)

                self.tokens.reset()
                self.assertTrue(self.explain(env).startswith(link), name)
                self.tokens.reset()
                self.gcs.reset()
                self.stream(env)
                used = [tok for tok in self.gcs.seen if tok is not None]
                self.assertEqual(len(used), len(self.gcs.seen), "mx sent an unauthenticated request")
                for tok in used:
                    self.assertTrue(tok.startswith(f"ya29.{kind}-"), (name, tok[:12]))
                mx_records = [r for r in self.tokens.records if r["kind"] == rec_kind]
                self.assertTrue(mx_records, self.tokens.kinds())
                for field in fields:
                    self.assertEqual([r.get(field) for r in mx_records][:1],
                                     [r.get(field) for r in sdk_records][:1], (name, field))
                if rec_kind == "sa":
                    # aud: mx uses the key file's token_uri (as google-auth for Python and Go
                    # do); the Node library always signs for its fixed endpoint.
                    self.assertEqual(mx_records[0]["aud"], self.tokens.url + "/token")
                    self.assertEqual(sdk_records[0]["aud"], "https://oauth2.googleapis.com/token")
                    self.assertEqual(mx_records[0]["exp"] - mx_records[0]["iat"], 3600)
                    self.assertTrue(all(r["verified"] for r in mx_records))
                if kind == "imp":
                    sts = [r for r in self.tokens.records if r["kind"] == "sts"]
                    self.assertEqual(sts[0]["scope"], SCOPE_CP)  # STS asks for cloud-platform
                    self.assertEqual(mx_records[0]["scope"], [SCOPE_RO])
                    self.assertEqual(mx_records[0]["email"], IMP_EMAIL)
                if calls > 1:
                    # Tokens that expire within the refresh margin are fetched again: more than
                    # one token reached the bucket, and (rotation) each exchange presented the
                    # subject token current at the time.
                    self.assertGreaterEqual(len(mx_records), 2)
                    self.assertGreaterEqual(len(set(used)), 2)
                    if self.tokens.subject_file is not None:
                        subjects = [r["subject_token"] for r in mx_records]
                        self.assertEqual(len(set(subjects)), len(subjects), "a subject token reused")

    def test_nothing_configured_is_anonymous(self):
        sd, env = self.sandbox()
        sdk = self.oracle(env, ok=False)
        self.assertIn("Could not load the default credentials", sdk["error"])
        self.assertEqual(
            self.explain(env),
            "anonymous: nothing found; tried GOOGLE_APPLICATION_CREDENTIALS (unset), "
            f"{sd / 'gcloud' / 'application_default_credentials.json'} (absent), "
            f"metadata server {self.closed} (GCE_METADATA_HOST) (no answer)")
        # A public bucket reads anonymously; a private one is refused with a clear error.
        self.gcs.public = True
        self.stream(env)
        self.assertTrue(self.gcs.seen)
        self.assertEqual(set(self.gcs.seen), {None})
        self.gcs.public = False
        r = self.stream(env, ok=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("HTTP 401", r.stderr)
        # METADATA_SERVER_DETECTION=none skips the probe, as in the SDK.
        env["METADATA_SERVER_DETECTION"] = "none"
        self.assertTrue(self.explain(env).endswith("metadata server (METADATA_SERVER_DETECTION=none)"))
        self.assertEqual(self.tokens.records, [])

    def test_token_revoked_midway_is_renewed_after_401(self):
        sd, env = self.sandbox()
        env["GOOGLE_APPLICATION_CREDENTIALS"] = self.sa_key(sd / "sa.json")
        self.gcs.revoke_first = True
        self.stream(env)
        self.assertGreaterEqual(self.gcs.refused, 1)
        self.assertGreaterEqual(self.tokens.kinds().count("sa"), 2)

    def test_explicit_settings_come_first(self):
        sd, env = self.sandbox()
        env["GOOGLE_APPLICATION_CREDENTIALS"] = self.sa_key(sd / "sa.json")
        env["GCS_OAUTH_TOKEN"] = "explicit-token-value"
        self.assertEqual(self.explain(env), "bearer token from the environment")
        env["GCS_OAUTH_TOKEN"] = None
        env["GCS_HMAC_ACCESS_KEY_ID"] = "GOOG1EXAMPLE"
        env["GCS_HMAC_SECRET_ACCESS_KEY"] = "hmac-secret-value"
        self.assertEqual(self.explain(env), "HMAC keys (GCS_HMAC_ACCESS_KEY_ID)")
        self.assertEqual(self.tokens.records, [])

    def test_broken_links_are_clear_errors(self):
        # A key file whose private_key is not a key: both refuse; mx names the variable.
        sd, env = self.sandbox()
        bad = json.loads(self.sa_key(sd / "sa.json").read_text())
        bad["private_key"] = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
        env["GOOGLE_APPLICATION_CREDENTIALS"] = self.write_json(sd / "bad.json", bad)
        self.oracle(env, ok=False)
        r = self.stream(env, ok=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("GOOGLE_APPLICATION_CREDENTIALS", r.stderr)
        self.assertIn("private_key", r.stderr)
        self.assertEqual(self.gcs.seen, [], "mx read anonymously after a broken link")
        r = self.mx(["stream", "--explain-credentials", URI], env, ok=False)
        self.assertNotEqual(r.returncode, 0)

        # A missing file named by the variable.
        env["GOOGLE_APPLICATION_CREDENTIALS"] = sd / "missing.json"
        self.oracle(env, ok=False)
        r = self.stream(env, ok=False)
        self.assertIn("GOOGLE_APPLICATION_CREDENTIALS", r.stderr)

        # The token endpoint refusing: the error names the link, the endpoint, the code.
        env["GOOGLE_APPLICATION_CREDENTIALS"] = self.sa_key(sd / "sa.json")
        self.tokens.refuse = "invalid_grant"
        self.oracle(env, ok=False)
        self.gcs.reset()
        r = self.stream(env, ok=False)
        self.assertIn("service account key file", r.stderr)
        self.assertIn(self.tokens.url + "/token", r.stderr)
        self.assertIn("invalid_grant", r.stderr)
        self.assertEqual(self.gcs.seen, [], "mx read anonymously after a refused token")

    def test_zz_no_secret_in_any_mx_output(self):
        # Runs last (unittest sorts by name): every mx output of the suite so far.
        self.assertTrue(self.outputs, "no mx output collected (run the whole class)")
        secrets = {s for s in self.tokens.secrets() if len(s) >= 8}
        secrets |= {self.refresh_token, self.client_secret}
        secrets |= {line for line in self.pem.splitlines() if len(line) >= 40}
        for out in self.outputs:
            for s in secrets:
                self.assertNotIn(s, out)
        self.assertGreater(len(secrets), 20)


if __name__ == "__main__":
    unittest.main()
