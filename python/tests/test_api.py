"""mx.download, mx.cache_path, mx.fetch_model and mx.load against the hub stand-in and a
real mx-server; the GIL is released while the library waits."""

from __future__ import annotations

import threading
import time
import unittest
from pathlib import Path

import support
from support import CleanEnviron, plain_read, tensor_bytes, write_safetensors

import torch

import mx
from server_harness import HubAndServersCase


class ApiTest(HubAndServersCase):
    PREFIX = "mx-py-api-"

    @classmethod
    def make_repos(cls, tmp: Path) -> dict:
        cls.content = tmp / "content"
        g = torch.Generator().manual_seed(3)
        cls.layout = write_safetensors(cls.content / "model.safetensors", {
            "w": ("F32", (32, 4), tensor_bytes(torch.randn(32, 4, generator=g))),
            "b": ("BF16", (4,), tensor_bytes(torch.randn(4, generator=g).bfloat16())),
        })
        (cls.content / "config.json").write_text("{}")
        (cls.content / "README.md").write_text("# m\n")
        return {"org/m": {"revisions": {"main": cls.content}}}

    def setUp(self):
        super().setUp()
        self.env = CleanEnviron(HF_ENDPOINT=self.hub.endpoint,
                                MODEL_EXPRESS_CACHE_DIRECTORY=self.cache).__enter__()

    def tearDown(self):
        self.env.__exit__()
        super().tearDown()

    def test_download_with_filters_and_cache_path(self):
        self.assertIsNone(mx.cache_path("org/m"))
        path = mx.download("org/m", allow_patterns=["*.json", "*.safetensors"],
                           ignore_patterns="config.json")
        self.assertEqual(sorted(p.name for p in Path(path).iterdir()), ["model.safetensors"])
        self.assertEqual(Path(path).parent.parent, self.cache / "models--org--m")
        self.assertEqual(mx.cache_path("org/m"), path)
        commit = Path(path).name
        self.assertEqual(mx.cache_path("org/m", commit), path)
        self.assertEqual(mx.cache_root(), str(self.cache))
        # What was downloaded streams back equal to the hub's file.
        for name, tensor in mx.stream(path):
            self.assertTrue(torch.equal(tensor, plain_read(self.content / "model.safetensors",
                                                           self.layout[name])), name)

    def test_bad_arguments_are_value_errors(self):
        with self.assertRaises(ValueError):
            mx.cache_path("../etc")
        with self.assertRaises(ValueError):
            mx.download("org/m", revision="bad\nrev")
        with self.assertRaises(ValueError):
            mx.fetch_model("org/m", strategy="sometimes")
        with self.assertRaisesRegex(mx.MxError, "org/absent"):
            mx.download("org/absent")

    def test_fetch_model_through_mx_server(self):
        server = self.server(cache=self.tmp / "server-cache")
        report = mx.fetch_model("org/m", endpoint=server.address, shared_storage=False)
        self.assertEqual(report["strategy"], "stream")
        self.assertEqual(report["files"], 3)
        self.assertEqual(Path(report["path"]), Path(mx.cache_path("org/m")))
        # MODEL_EXPRESS_URL names the server when no endpoint is given.
        self.env.set(MODEL_EXPRESS_URL=f"http://{server.address}",
                     MODEL_EXPRESS_NO_SHARED_STORAGE="1")
        other = self.tmp / "other-cache"
        again = mx.fetch_model("org/m", cache_dir=other)
        self.assertEqual(again["strategy"], "stream")
        self.assertTrue(str(again["path"]).startswith(str(other)))

    def test_load_reports_the_chain(self):
        with mx.load("org/m") as weights:
            got = dict(weights)
        self.assertEqual(set(got), {"w", "b"})
        self.assertEqual(got["b"].dtype, torch.bfloat16)
        self.assertEqual(weights.report["served_by"], "hub")
        self.assertEqual([s["strategy"] for s in weights.report["steps"]],
                         ["p2p", "server", "uri", "cache", "hub"])
        self.assertTrue(mx.p2p.available())
        self.assertIn("no server configured", weights.report["steps"][0]["reason"])

    def test_the_gil_is_released_while_waiting(self):
        # A server that never answers: fetch_model waits its connect timeout (~3 s) in C++.
        dead = f"127.0.0.1:{support.harness.free_port()}"
        ticks = []
        stop = threading.Event()

        def tick():
            while not stop.is_set():
                ticks.append(time.monotonic())
                time.sleep(0.01)

        t = threading.Thread(target=tick)
        t.start()
        started = time.monotonic()
        try:
            with self.assertRaisesRegex(mx.MxError, "not reachable"):
                mx.fetch_model("org/m", endpoint=dead, strategy="server-only")
        finally:
            stop.set()
            t.join()
        waited = [x for x in ticks if x > started + 0.2]
        self.assertGreater(time.monotonic() - started, 1.0)
        self.assertGreater(len(waited), 20)  # the other thread kept running meanwhile


if __name__ == "__main__":
    unittest.main()
