"""mx.p2p against a real mx-server: this process publishes tensors from its own memory with
mx.p2p.publish_source; the CLI in other processes lists the source READY (`mx p2p
sources`) and loads the tensors byte for byte through the chain's p2p step (`mx load
--digest`); mx.p2p.receive reads them back; stop(), garbage collection and interpreter
exit make the source leave READY; what cannot be served from its own memory is refused."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import support
from support import CleanEnviron, tensor_bytes

import numpy
import torch

import mx
from harness import mx_binary, run
from server_harness import MxServer

MODEL = "org/p2p-py"
PKG = os.environ.get("MX_PYTHON_PATH") or str(support.REPO / "build" / "python" / "pkg")


def digest(tensors: dict) -> str:
    """What `mx load --digest` prints: sha256 over "name sha256(bytes)\\n" in name order."""
    lines = "".join(f"{name} {hashlib.sha256(raw).hexdigest()}\n"
                    for name, raw in sorted(tensors.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def raw_bytes(t) -> bytes:
    return t.tobytes() if isinstance(t, numpy.ndarray) else tensor_bytes(t.detach())


class P2pTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp(prefix="mx-py-p2p-"))
        # Its hub is a closed loopback port: only the p2p step can serve a load.
        cls.mx_server = MxServer(cls.tmp, cls.tmp / "server-cache",
                                 env={"HF_ENDPOINT": "http://127.0.0.1:9",
                                      "HF_HUB_OFFLINE": "1"}).start()

    @classmethod
    def tearDownClass(cls):
        cls.mx_server.stop()
        import shutil

        shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        self.env = CleanEnviron(MODEL_EXPRESS_URL=self.mx_server.address,
                                MX_WORKER_HOST="127.0.0.2", MX_WORKER_GRPC_PORT="0",
                                HF_ENDPOINT="http://127.0.0.1:9",
                                MODEL_EXPRESS_CACHE_DIRECTORY=tempfile.mkdtemp(dir=self.tmp)
                                ).__enter__()

    def tearDown(self):
        self.env.__exit__()

    def mx(self, *args, **env):
        e = {"MODEL_EXPRESS_URL": self.mx_server.address, "MX_WORKER_HOST": "127.0.0.3",
             "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "1",
             "MODEL_EXPRESS_CACHE_DIRECTORY": tempfile.mkdtemp(dir=self.tmp)}
        e.update(env)
        r = run([mx_binary(), *args], env=e, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr + r.stdout)
        return json.loads(r.stdout.strip().splitlines()[-1])

    def sources(self, model, *extra):
        return self.mx("p2p", "sources", "--model", model, "--json", *extra)

    def test_publish_list_load_receive_and_stop(self):
        g = torch.Generator().manual_seed(11)
        big = torch.randn(64, 32, generator=g)
        tied = torch.randn(16, 8, generator=g)
        tensors = {
            "big": big,
            "big.rows": big[8:24],  # a contiguous view inside "big": overlapping memory
            "bf16": torch.randn(40, generator=g).bfloat16(),
            "ids": torch.arange(15, dtype=torch.int64).reshape(3, 5),
            "mask": torch.tensor([True, False, True]),
            "embed": tied,
            "lm_head": tied,  # tied weights: the same memory under two names
            "np.half": numpy.arange(64, dtype=numpy.float16).reshape(8, 8),
            "param": torch.nn.Parameter(torch.randn(4, 4, generator=g)),
        }
        want = {n: raw_bytes(t) for n, t in tensors.items()}
        source = mx.p2p.publish_source(MODEL, tensors.items())
        published, reason = source
        self.assertTrue(published, reason)
        self.assertIn(source.mx_source_id, reason)
        self.assertTrue(source.endpoint.startswith("127.0.0.2:"), source.endpoint)
        self.assertTrue(source.worker_id)

        listed = self.sources(MODEL, "--ready")
        self.assertEqual([(s["mx_source_id"], s["worker_id"], s["status"]) for s in listed],
                         [(source.mx_source_id, source.worker_id, "READY")])
        self.assertEqual(listed[0]["endpoint"], source.endpoint)

        # Another process: the chain's p2p step serves every tensor, byte for byte, from
        # this process's memory.
        rep = self.mx("load", MODEL, "--json", "--digest")
        self.assertEqual(rep["served_by"], "p2p", rep)
        self.assertEqual(rep["tensors"], len(tensors))
        self.assertEqual(rep["digest"], digest(want))
        self.assertGreaterEqual(source.bytes_served, sum(len(b) for b in want.values()))

        # mx.p2p.receive: the p2p step alone, in this process.
        with mx.p2p.receive(MODEL) as weights:
            got = {n: tensor_bytes(t) for n, t in weights}
        self.assertEqual(weights.report["served_by"], "p2p")
        self.assertEqual(got, want)

        # Served from the tensors' own memory, not a copy: a change in place is what a
        # peer reads next.
        tensors["ids"][1, 2] = 1234
        with mx.p2p.receive(MODEL) as weights:
            again = dict(weights)
        self.assertEqual(int(again["ids"][1, 2]), 1234)

        source.stop()
        self.assertFalse(source.serving)
        self.assertEqual(self.sources(MODEL, "--ready"), [])
        self.assertEqual([s["status"] for s in self.sources(MODEL)], ["STALE"])
        source.stop()  # idempotent
        with self.assertRaisesRegex(mx.MxError, "no READY p2p source"):
            dict(mx.p2p.receive(MODEL))

    def test_garbage_collection_and_interpreter_exit_stop_the_source(self):
        source = mx.p2p.publish_source(MODEL + "-gc", [("w", torch.ones(8))])
        self.assertEqual(len(self.sources(MODEL + "-gc", "--ready")), 1)
        del source
        gc.collect()
        self.assertEqual(self.sources(MODEL + "-gc", "--ready"), [])

        # A process that publishes and exits with the Source still referenced.
        script = ("import sys, torch, mx\n"
                  f"s = mx.p2p.publish_source({MODEL + '-exit'!r}, [('w', torch.ones(8))])\n"
                  "print(s.mx_source_id, flush=True)\n")
        env = dict(os.environ, PYTHONPATH=PKG)
        r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                           text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        listed = self.sources(MODEL + "-exit")
        self.assertEqual([(s["mx_source_id"], s["status"]) for s in listed],
                         [(r.stdout.strip(), "STALE")])

    def test_refusals(self):
        with self.assertRaisesRegex(ValueError, "w.t: not contiguous"):
            mx.p2p.publish_source(MODEL, [("w.t", torch.ones(4, 3).t())])
        with self.assertRaisesRegex(ValueError, "strided: not C-contiguous"):
            mx.p2p.publish_source(MODEL, [("strided", numpy.ones((4, 4))[:, ::2])])
        with self.assertRaisesRegex(ValueError, "expected a torch tensor"):
            mx.p2p.publish_source(MODEL, [("list", [1, 2, 3])])
        with self.assertRaisesRegex(ValueError, "given twice"):
            mx.p2p.publish_source(MODEL, [("a", torch.ones(2)), ("a", torch.ones(2))])
        # A CUDA tensor (described as the wrapper does; Debian's torch has no CUDA) needs a
        # usable GPU: refused with the reason, nothing published.
        with self.assertRaisesRegex(mx.MxError, "publishing CUDA tensors: .*(CUDA|GPU)"):
            mx._mx.publish_source(MODEL, [("g", 0x7f0000000000, 8, "F32", [2], 0)],
                                  "", "", 0, 1, 1, 1, "", "")
        self.assertEqual(self.sources(MODEL, "--ready"), [])
        # No server configured: not published, and why (the vLLM plugin's contract).
        self.env.set(MODEL_EXPRESS_URL=None)
        source = mx.p2p.publish_source(MODEL, [("w", torch.ones(2))])
        self.assertEqual(source, (False, "no mx-server configured (MODEL_EXPRESS_URL)"))
        self.assertFalse(source)
        self.assertIsNone(source.mx_source_id)
        self.assertTrue(mx.p2p.available())


if __name__ == "__main__":
    unittest.main()
