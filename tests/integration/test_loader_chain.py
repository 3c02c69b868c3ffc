"""`mx load` runs the loader chain (p2p, server, MX_MODEL_URI, local cache, hub) against real
peers (mx-server, the hub stand-in, a model directory): each strategy serves in turn, in
fallback order, the report names it, and what reached memory equals the files (a digest
over every tensor, computed from the safetensors bytes here)."""

from __future__ import annotations

import hashlib
import json
import time
import unittest
from pathlib import Path

from harness import free_port, mx_binary, run
from server_harness import HubAndServersCase
from storage_peers import write_model


def digest(expected: dict) -> str:
    """The digest `mx load --digest` prints: sha256 over "name sha256\\n" lines in name order."""
    lines = "".join(f"{key.split('/', 1)[1]} {hashlib.sha256(data).hexdigest()}\n"
                    for key, data in sorted(expected.items(), key=lambda kv: kv[0].split('/', 1)[1]))
    return hashlib.sha256(lines.encode()).hexdigest()


class LoaderChainTest(HubAndServersCase):
    PREFIX = "mx-chain-"

    @classmethod
    def make_repos(cls, tmp):
        cls.model_dir = tmp / "model"
        cls.expected = write_model(cls.model_dir, shards=2, seed=7, big=1 << 20)
        (cls.model_dir / "config.json").write_text('{"model_type": "llama"}')
        return {"org/st": {"revisions": {"main": cls.model_dir}}}

    def load(self, *args, env=None):
        e = {"MX_AUTH_TOKEN_PATH": str(self.tmp / "no-token"), "HF_ENDPOINT": self.hub.endpoint,
             "MODEL_EXPRESS_URL": None, "MODEL_EXPRESS_ENDPOINT": None, "MX_MODEL_URI": None}
        e.update(env or {})
        started = time.monotonic()
        r = run([mx_binary(), "load", "org/st", "--json", "--digest", *args], env=e, timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        out = json.loads(r.stdout.strip().splitlines()[-1])
        out["wall"] = time.monotonic() - started
        self.assertEqual(out["digest"], digest(self.expected))
        self.assertEqual(out["tensors"], len(self.expected))
        self.assertEqual(out["bytes"], sum(len(b) for b in self.expected.values()))
        return out

    def hub_paths(self):
        return {k: v for k, v in self.hub.stats()["requests_by_path"].items()
                if not k.startswith("/_control")}

    def outcomes(self, out):
        return [(s["strategy"], s["outcome"]) for s in out["steps"]]

    def test_each_strategy_serves_in_fallback_order(self):
        client_cache = Path(self.tmp) / f"client-{free_port()}"
        # 1. The server (streamed into the client's own cache: not shared storage here).
        s = self.server()
        out = self.load("-e", s.address, "--cache-path", client_cache, "--no-shared-storage")
        self.assertEqual(out["served_by"], "server")
        self.assertEqual(self.outcomes(out), [("p2p", "skipped"), ("server", "served")])
        self.assertTrue(out["path"].startswith(str(client_cache)))
        hub_calls = self.hub_paths()
        s.stop()
        # 2. The server is gone: MX_MODEL_URI serves, after a failed server step that cost
        #    at most the connect timeout.
        dead = f"127.0.0.1:{free_port()}"
        empty = Path(self.tmp) / f"empty-{free_port()}"
        out = self.load("-e", dead, "--cache-path", empty, env={"MX_MODEL_URI": self.model_dir})
        self.assertEqual(out["served_by"], "uri")
        self.assertEqual(self.outcomes(out),
                         [("p2p", "skipped"), ("server", "failed"), ("uri", "served")])
        self.assertLess(out["steps"][1]["seconds"], 5)
        # 3. No server named, no URI: the local cache the server step filled serves, offline.
        out = self.load("--cache-path", client_cache, env={"HF_ENDPOINT": f"http://{dead}"})
        self.assertEqual(out["served_by"], "cache")
        self.assertEqual(self.outcomes(out), [("p2p", "skipped"), ("server", "skipped"),
                                              ("uri", "skipped"), ("cache", "served")])
        self.assertEqual(self.hub_paths(), hub_calls)  # nobody went to the hub since
        # 4. Nothing anywhere but the hub.
        out = self.load("--cache-path", empty)
        self.assertEqual(out["served_by"], "hub")
        self.assertEqual(self.outcomes(out)[-2:], [("cache", "skipped"), ("hub", "served")])
        self.assertTrue((empty / "models--org--st").is_dir())

    def test_nothing_serves_names_every_step(self):
        dead = f"http://127.0.0.1:{free_port()}"
        r = run([mx_binary(), "load", "org/st", "-e", dead[7:], "--json", "--cache-path",
                 Path(self.tmp) / "none"],
                env={"HF_ENDPOINT": dead, "MX_AUTH_TOKEN_PATH": str(self.tmp / "no-token"),
                     "MX_MODEL_URI": None, "MODEL_EXPRESS_URL": None}, timeout=120)
        self.assertEqual(r.returncode, 1)
        out = json.loads(r.stdout.strip().splitlines()[-1])
        self.assertFalse(out["success"])
        self.assertEqual([s["strategy"] for s in out["steps"]],
                         ["p2p", "server", "uri", "cache", "hub"])
        for name in ("server failed", "uri skipped", "cache skipped", "hub failed"):
            self.assertIn(name, out["error"])


if __name__ == "__main__":
    unittest.main()
