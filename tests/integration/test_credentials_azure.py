"""Azure credentials: mx's chain against @azure/identity's DefaultAzureCredential (the
oracle, tests/sdk_oracle/azure.mjs), both pointed at the same stand-ins (azure_token_peers:
an HTTPS Azure AD, IMDS / App Service managed identity), and mx reading Azurite with each kind
of credential: a bearer token from workload identity (Azurite over HTTPS, --oauth basic),
the Dynamo guide's AZURE_ACCOUNT_NAME / AZURE_ACCOUNT_KEY and UseDevelopmentStorage=true.

Nothing leaves 127.0.0.0/8: every endpoint variable points at a stand-in or at a closed
127.0.0.1 port, and the oracle refuses any other connection. The last test greps every mx
output of the suite for the secrets and tokens used."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import unittest
from pathlib import Path

from azure_token_peers import (STORAGE_RESOURCE, STORAGE_SCOPE, AzureAD, AzuriteOAuth,
                               ManagedIdentity, RefusingProxy, jwt_claims, make_client_certificate,
                               make_tls_cert)
from harness import base_env, free_port, mx_binary, run
from storage_peers import AZURITE_ACCOUNT, AZURITE_KEY, Azurite, write_model

HERE = Path(__file__).resolve().parent
ORACLE = HERE.parent / "sdk_oracle" / "azure.mjs"
NODE_MODULES = HERE.parent / "sdk_oracle" / "node_modules" / "@azure" / "identity"

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
SP_SECRET = "sp-Secret~value.0123456789abcdef"
SP_CLIENT = "11111111-aaaa-4bbb-8ccc-000000000001"
CERT_CLIENT = "22222222-aaaa-4bbb-8ccc-000000000002"
WI_CLIENT = "33333333-aaaa-4bbb-8ccc-000000000003"
MI_CLIENT = "44444444-aaaa-4bbb-8ccc-000000000004"

# mx's link (the start of --explain-credentials' answer) -> the SDK's credential class.
SDK_CLASS = {"environment": "EnvironmentCredential", "workload identity": "WorkloadIdentityCredential",
             "managed identity": "ManagedIdentityCredential"}

# Every variable either side reads; each run starts from none of them.
AZURE_VARS = ["AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH",
              "AZURE_CLIENT_CERTIFICATE_PASSWORD", "AZURE_USERNAME", "AZURE_PASSWORD",
              "AZURE_FEDERATED_TOKEN_FILE", "AZURE_AUTHORITY_HOST", "AZURE_POD_IDENTITY_AUTHORITY_HOST",
              "IDENTITY_ENDPOINT", "IDENTITY_HEADER", "IDENTITY_SERVER_THUMBPRINT", "IMDS_ENDPOINT",
              "MSI_ENDPOINT", "MSI_SECRET", "AZURE_TOKEN_CREDENTIALS", "AZURE_STORAGE_ACCOUNT",
              "AZURE_STORAGE_KEY", "AZURE_ACCOUNT_NAME", "AZURE_ACCOUNT_KEY",
              "AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_BLOB_ENDPOINT",
              "AZURE_ADDITIONALLY_ALLOWED_TENANTS", "AZURE_REGIONAL_AUTHORITY_NAME", "AZURE_LOG_LEVEL",
              "DEFAULT_IDENTITY_CLIENT_ID", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE",
              "NODE_EXTRA_CA_CERTS", "MX_LOG_LEVEL"]


def closed_port() -> int:
    return free_port()  # free a moment ago: nothing listens there


def digests(expected: dict) -> dict:
    return {k: hashlib.sha256(v).hexdigest() for k, v in expected.items()}


@unittest.skipUnless(shutil.which("node") and NODE_MODULES.is_dir() and shutil.which("azurite-blob"),
                     "needs node, the SDK oracle (scripts/install-deps.sh) and azurite")
class AzureCredentialsTest(unittest.TestCase):
    mx_outputs: list[str] = []  # every stdout/stderr mx printed in this suite
    secrets: set[str] = set()   # every secret, key and token the suite used or saw issued

    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp(prefix="mx-cred-azure-"))
        cls.tls = make_tls_cert(cls.tmp)
        cls.aad = AzureAD(cls.tls).start()
        cls.mi = ManagedIdentity().start()
        cls.cert_path, cert_der = make_client_certificate(cls.tmp)
        cls.aad.secrets[SP_CLIENT] = SP_SECRET
        cls.aad.certificates[CERT_CLIENT] = cert_der
        cls.token_file = cls.tmp / "federated-token"
        cls.token_file.write_text("federated-token-generation-1\n")
        cls.aad.federated[WI_CLIENT] = lambda: cls.token_file.read_text().strip()
        cls.model = cls.tmp / "model"
        cls.expected = digests(write_model(cls.model, shards=3, seed=11, big=1 << 20))
        cls.azurite = AzuriteOAuth(cls.tmp, cls.tls).start()
        cls.azurite.upload_dir(cls.model, "org/model")
        key_pem = cls.cert_path.read_text().split("-----END PRIVATE KEY-----")[0]
        cls.secrets |= {SP_SECRET, cls.mi.identity_header, AZURITE_KEY,
                        "federated-token-generation-1",
                        key_pem.split("-----BEGIN PRIVATE KEY-----")[1].strip().splitlines()[1]}

    @classmethod
    def tearDownClass(cls):
        cls.aad.stop()
        cls.mi.stop()
        cls.azurite.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        self.aad.reset()
        self.mi.reset()
        self.token_file.write_text("federated-token-generation-1\n")
        self.aad.on_federated = None

    # -- running both sides ----------------------------------------------------------------

    def env(self, extra: dict) -> dict:
        env = {k: None for k in AZURE_VARS}
        env.update({"HOME": str(self.tmp / "home"), "NODE_EXTRA_CA_CERTS": str(self.tls[0]),
                    "CURL_CA_BUNDLE": str(self.tls[0]), "AZURE_AUTHORITY_HOST": self.aad.authority,
                    # No real IMDS: the default address would be 169.254.169.254.
                    "AZURE_POD_IDENTITY_AUTHORITY_HOST": f"http://127.0.0.1:{closed_port()}",
                    "AZURE_STORAGE_ACCOUNT": AZURITE_ACCOUNT,
                    "AZURE_STORAGE_BLOB_ENDPOINT": self.azurite.endpoint})
        env.update(extra)
        return env

    def mx(self, *args, env: dict, timeout=300) -> subprocess.CompletedProcess:
        r = run([mx_binary(), *args], env=env, timeout=timeout)
        self.mx_outputs.extend([r.stdout, r.stderr])
        return r

    def explain(self, env: dict) -> subprocess.CompletedProcess:
        return self.mx("stream", "--explain-credentials", f"az://{self.azurite.container}/org/model", env=env)

    def oracle(self, env: dict, calls: int = 1) -> dict:
        full = base_env()
        for k, v in {**env, "MX_ORACLE_CALLS": str(calls)}.items():
            if v is None:
                full.pop(k, None)
            else:
                full[k] = str(v)
        r = subprocess.run(["node", str(ORACLE)], env=full, capture_output=True, text=True, timeout=180)
        self.assertEqual(r.returncode, 0, r.stderr)
        out = json.loads(r.stdout.strip().splitlines()[-1])
        self.secrets.update(out.get("tokens") or [])
        return out

    def stream(self, env: dict, uri=None, verify=True) -> dict:
        r = self.mx("stream", "--json", "--tensor-digests", *(["--verify"] if verify else []),
                    uri or f"az://{self.azurite.container}/org/model", env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        report = json.loads(r.stdout.strip().splitlines()[-1])
        self.assertEqual(report["tensor_sha256"], self.expected)
        return report

    def peer_for(self, link: str):
        return self.mi if link.startswith("managed identity") else self.aad

    def issued(self, peer, who: str) -> list[dict]:
        recs = peer.token_records(who)
        self.secrets.update(r["token"] for r in recs)
        self.secrets.update(r["assertion"] for r in recs if r.get("assertion"))
        return recs

    def check_agree(self, extra: dict, want_class: str, want_mx_link: str, want_source=None):
        """mx and the SDK pick the same link, send the same request, get the same kind of token."""
        env = self.env(extra)
        sdk = self.oracle(env)
        self.assertTrue(sdk["ok"], sdk)
        self.assertEqual(sdk["credential"], want_class, sdk)
        if want_source:
            self.assertEqual(sdk["source"], want_source, sdk)
        r = self.explain(env)
        self.assertEqual(r.returncode, 0, r.stderr)
        said = r.stdout.split(": ", 1)[1]
        self.assertTrue(said.startswith(want_mx_link), said)
        self.assertEqual(SDK_CLASS[next(k for k in SDK_CLASS if said.startswith(k))], sdk["credential"])
        peer = self.peer_for(want_mx_link)
        mx_recs, sdk_recs = self.issued(peer, "mx"), self.issued(peer, "sdk")
        self.assertEqual(len(mx_recs), 1, peer.records)
        self.assertGreaterEqual(len(sdk_recs), 1, peer.records)
        m, s = mx_recs[0], sdk_recs[-1]
        # The token each got is the one the stand-in issued for that request, and the same kind.
        self.assertEqual(s["token"], sdk["tokens"][0])
        self.assertEqual(jwt_claims(m["token"])["mx_link"], jwt_claims(s["token"])["mx_link"])
        for field in ("path", "grant_type", "client_id", "scope", "assertion_type", "tenant",
                      "api_version", "resource", "link"):
            self.assertEqual(m.get(field), s.get(field), field)
        return m, s, said

    # -- the table: one environment -> the link both pick, the request, the token --------

    def table(self):
        sp = {"AZURE_TENANT_ID": TENANT, "AZURE_CLIENT_ID": SP_CLIENT, "AZURE_CLIENT_SECRET": SP_SECRET}
        cert = {"AZURE_TENANT_ID": TENANT, "AZURE_CLIENT_ID": CERT_CLIENT,
                "AZURE_CLIENT_CERTIFICATE_PATH": str(self.cert_path)}
        wi = {"AZURE_TENANT_ID": TENANT, "AZURE_CLIENT_ID": WI_CLIENT,
              "AZURE_FEDERATED_TOKEN_FILE": str(self.token_file)}
        imds = {"AZURE_POD_IDENTITY_AUTHORITY_HOST": self.mi.host}
        app = {"IDENTITY_ENDPOINT": self.mi.app_service_endpoint, "IDENTITY_HEADER": self.mi.identity_header}
        env_link, wi_link = "environment (client secret)", "workload identity"
        # name, environment, SDK class, SDK managed identity source, mx's link, more checks
        return [
            ("service principal secret", sp, "EnvironmentCredential", None, env_link,
             lambda m, s, said: (self.assertTrue(m["secret_ok"]), self.assertIn(SP_CLIENT, said))),
            # Both assertions verified against the registered certificate (mx: RS256 + x5t; the
            # SDK now sends PS256 + x5t#S256).
            ("service principal certificate", cert, "EnvironmentCredential", None,
             "environment (client certificate)",
             lambda m, s, said: (self.assertEqual(m["assertion_check"], "valid RS256"),
                                 self.assertTrue(s["assertion_check"].startswith("valid"), s))),
            ("workload identity", wi, "WorkloadIdentityCredential", None, wi_link,
             lambda m, s, said: (self.assertEqual(m["assertion"], "federated-token-generation-1"),
                                 self.assertEqual(s["assertion"], m["assertion"]),
                                 self.assertIn("AZURE_FEDERATED_TOKEN_FILE", said))),
            ("managed identity, IMDS, system-assigned", imds, "ManagedIdentityCredential", None,
             "managed identity (IMDS)", lambda m, s, said: self.assertIsNone(m["client_id"])),
            ("managed identity, IMDS, user-assigned", {**imds, "AZURE_CLIENT_ID": MI_CLIENT},
             "ManagedIdentityCredential", None, "managed identity (IMDS)",
             lambda m, s, said: self.assertEqual(m["client_id"], MI_CLIENT)),
            ("managed identity, App Service", app, "ManagedIdentityCredential", "AppService",
             "managed identity (App Service)",
             lambda m, s, said: self.assertEqual(m["api_version"], "2019-08-01")),
            ("environment beats workload identity", {**wi, **sp}, "EnvironmentCredential", None,
             env_link, None),
            ("workload identity beats managed identity", {**app, **imds, **wi},
             "WorkloadIdentityCredential", None, wi_link,
             lambda m, s, said: self.assertEqual(self.mi.token_records(), [])),
            ("environment beats managed identity", {**imds, **sp}, "EnvironmentCredential", None,
             env_link, lambda m, s, said: self.assertEqual(self.mi.token_records(), [])),
            ("AZURE_TOKEN_CREDENTIALS=ManagedIdentityCredential",
             {**sp, **imds, "AZURE_TOKEN_CREDENTIALS": "ManagedIdentityCredential"},
             "ManagedIdentityCredential", None, "managed identity (IMDS)",
             lambda m, s, said: self.assertEqual(self.aad.token_records(), [])),
        ]

    def test_table_mx_agrees_with_the_sdk(self):
        cases = self.table()
        self.assertGreaterEqual(len(cases), 8)
        for name, extra, sdk_class, sdk_source, mx_link, more in cases:
            with self.subTest(name):
                self.setUp()
                m, s, said = self.check_agree(extra, sdk_class, mx_link, want_source=sdk_source)
                if more:
                    more(m, s, said)

    # -- nothing, failures, rotation, renewal ----------------------------------------------

    def test_nothing_configured(self):
        env = self.env({})
        sdk = self.oracle(env)
        self.assertFalse(sdk["ok"], sdk)
        self.assertIn("ChainedTokenCredential authentication failed", sdk["error"])
        r = self.explain(env)
        self.assertEqual(r.returncode, 0, r.stderr)
        said = r.stdout.split(": ", 1)[1]
        self.assertTrue(said.startswith("anonymous: nothing found; tried"), said)
        for link in ("AZURE_STORAGE_KEY", "environment", "workload identity", "managed identity"):
            self.assertIn(link, said)
        # Azurite's container is private: the anonymous read is refused, naming what was tried.
        r = self.mx("stream", "--json", f"az://{self.azurite.container}/org/model", env=env)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("no credential was found", r.stderr)

    def test_configured_link_that_fails_is_an_error_not_anonymous(self):
        env = self.env({"AZURE_TENANT_ID": TENANT, "AZURE_CLIENT_ID": SP_CLIENT,
                        "AZURE_CLIENT_SECRET": "wrong-" + SP_SECRET})
        self.secrets.add("wrong-" + SP_SECRET)
        self.assertFalse(self.oracle(env)["ok"])
        r = self.explain(env)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("environment (client secret)", r.stderr)
        self.assertIn(f"{self.aad.authority}/{TENANT}/oauth2/v2.0/token", r.stderr)
        self.assertIn("HTTP 401 invalid_client", r.stderr)
        self.assertIn("[redacted]", r.stderr)  # the stand-in echoed the secret back
        self.assertNotIn("wrong-" + SP_SECRET, r.stderr)
        self.assertNotIn("anonymous", r.stderr + r.stdout)
        # An App Service endpoint that refuses the header: an error naming it.
        env = self.env({"IDENTITY_ENDPOINT": self.mi.app_service_endpoint, "IDENTITY_HEADER": "wrong-header"})
        r = self.explain(env)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("managed identity (App Service)", r.stderr)
        self.assertIn("HTTP 401", r.stderr)
        self.assertNotIn("wrong-header", r.stderr)

    def test_federated_token_file_rotates(self):
        # The stand-in plays kubelet: after each grant it writes the next token. Tokens live
        # 60 s (inside mx's 5 min refresh margin), so each use fetches again and must send the
        # file's current content, never a cached one.
        self.aad.expires_in = 60
        generation = [1]

        def rotate():
            generation[0] += 1
            self.token_file.write_text(f"federated-token-generation-{generation[0]}\n")
            self.secrets.add(f"federated-token-generation-{generation[0]}")

        self.aad.on_federated = rotate
        env = self.env({"AZURE_TENANT_ID": TENANT, "AZURE_CLIENT_ID": WI_CLIENT,
                        "AZURE_FEDERATED_TOKEN_FILE": str(self.token_file)})
        self.stream(env)
        recs = self.issued(self.aad, "mx")
        self.assertGreaterEqual(len(recs), 3, "a 60 s token is renewed on each use")
        self.assertTrue(all(r["assertion_current"] for r in recs))
        self.assertEqual([r["assertion"] for r in recs],
                         [f"federated-token-generation-{i}" for i in range(1, len(recs) + 1)])
        # The SDK, run in the same environment, sends the file's current content too.
        sdk = self.oracle(env)
        self.assertTrue(sdk["ok"], sdk)
        self.assertEqual(self.issued(self.aad, "sdk")[-1]["assertion"],
                         f"federated-token-generation-{len(recs) + 1}")

    def test_expired_token_is_renewed(self):
        # Short-lived tokens: both the SDK (asked twice) and mx fetch a new one rather than
        # reuse one about to expire.
        self.aad.expires_in = 60
        env = self.env({"AZURE_TENANT_ID": TENANT, "AZURE_CLIENT_ID": SP_CLIENT, "AZURE_CLIENT_SECRET": SP_SECRET})
        sdk = self.oracle(env, calls=2)
        self.assertTrue(sdk["ok"], sdk)
        self.assertNotEqual(sdk["tokens"][0], sdk["tokens"][1])
        self.stream(env)
        self.assertGreaterEqual(len(self.issued(self.aad, "mx")), 2)
        # A token the endpoint says is good for an hour but storage refuses (expired early,
        # revoked): the 401/403 drops it and mx fetches another, once.
        self.aad.reset()
        self.aad.jwt_lifetime_override.append(-60)
        self.aad.expires_in = 3599
        self.stream(env, verify=False)
        recs = self.issued(self.aad, "mx")
        self.assertEqual(len(recs), 2, "the refused token, then one more")
        self.assertLess(jwt_claims(recs[0]["token"])["exp"], time.time())

    def test_token_refused_mid_read_is_renewed(self):
        # The listing succeeds; then storage refuses a ranged GET (403: the token expired or was
        # revoked early). mx drops the token, fetches another and signs that range again.
        proxy = RefusingProxy(self.azurite, self.tls, refuse=1).start()
        try:
            env = self.env({"AZURE_TENANT_ID": TENANT, "AZURE_CLIENT_ID": WI_CLIENT,
                            "AZURE_FEDERATED_TOKEN_FILE": str(self.token_file),
                            "AZURE_STORAGE_BLOB_ENDPOINT": proxy.endpoint})
            self.stream(env, verify=False)
        finally:
            proxy.stop()
        recs = self.issued(self.aad, "mx")
        self.assertEqual(len(recs), 2, "one token, then one more after the 403")
        first, second = recs[0]["token"], recs[1]["token"]
        self.assertEqual(proxy.ranged[0], (first, 403))
        self.assertIn((second, 206), proxy.ranged)

    # -- reading Azurite ---------------------------------------------------------------------

    def test_stream_with_workload_identity_only(self):
        # Only workload identity variables (and where storage is): a bearer token, over HTTPS,
        # that Azurite --oauth basic checks (issuer, audience, lifetime).
        env = self.env({"AZURE_TENANT_ID": TENANT, "AZURE_CLIENT_ID": WI_CLIENT,
                        "AZURE_FEDERATED_TOKEN_FILE": str(self.token_file)})
        self.stream(env)
        self.assertEqual(len(self.issued(self.aad, "mx")), 2)  # the reader and --verify's own
        # The same bearer over plain http is refused by mx before it is sent.
        http_env = dict(env, AZURE_STORAGE_BLOB_ENDPOINT=self.azurite.endpoint.replace("https://", "http://"))
        r = self.mx("stream", "--json", f"az://{self.azurite.container}/org/model", env=http_env)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("only sent over https", r.stderr)

    def test_guide_account_pair_and_development_storage(self):
        plain = Azurite(self.tmp).start()
        try:
            plain.upload_dir(self.model, "org/model")
            env = {k: None for k in AZURE_VARS}
            env.update({"AZURE_ACCOUNT_NAME": AZURITE_ACCOUNT, "AZURE_ACCOUNT_KEY": AZURITE_KEY,
                        "AZURE_STORAGE_BLOB_ENDPOINT": plain.endpoint,
                        "AZURE_POD_IDENTITY_AUTHORITY_HOST": f"http://127.0.0.1:{closed_port()}"})
            r = self.mx("stream", "--explain-credentials", f"az://{plain.container}/org/model", env=env)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("account key for account devstoreaccount1 (AZURE_ACCOUNT_KEY)", r.stdout)
            self.stream(env, f"az://{plain.container}/org/model")
        finally:
            plain.stop()
        # UseDevelopmentStorage=true means Azurite's well-known address, port 10000.
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", 10000))
            except OSError:
                self.skipTest("port 10000 (Azurite's default) is in use")
        dev = Azurite(self.tmp)
        dev.port = 10000
        dev.start()
        try:
            dev.upload_dir(self.model, "org/model")
            env = {k: None for k in AZURE_VARS}
            env["AZURE_STORAGE_CONNECTION_STRING"] = "UseDevelopmentStorage=true"
            r = self.mx("stream", "--explain-credentials", f"az://{dev.container}/org/model", env=env)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("UseDevelopmentStorage=true", r.stdout)
            self.assertIn("http://127.0.0.1:10000/devstoreaccount1", r.stdout)
            self.stream(env, f"az://{dev.container}/org/model")
        finally:
            dev.stop()

    # -- last: no secret in anything mx printed ----------------------------------------------

    def test_zz_no_secret_in_any_mx_output(self):
        self.assertGreater(len(self.mx_outputs), 10, "runs after the other tests of the suite")
        secrets = {s for s in self.secrets if s and len(s) >= 8}
        for text in self.mx_outputs:
            for secret in secrets:
                self.assertNotIn(secret, text, f"a secret ({secret[:6]}...) appears in mx's output")
            # No bearer JWT, whoever issued it.
            self.assertNotIn("eyJhbGciOi", text)


if __name__ == "__main__":
    unittest.main()
