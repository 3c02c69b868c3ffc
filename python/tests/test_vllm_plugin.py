"""The vLLM plugin against a stand-in of vLLM's plugin loader and model-loader interface
(tests/vllm_standin): selected by VLLM_PLUGINS=modelexpress through importlib.metadata
entry points, registered as load formats mx / mx-source / mx-target, and loading a real
torch.nn.Module through each strategy of the chain in fallback order (a real mx-server and
the hub stand-in), saying which one served it."""

from __future__ import annotations

import gc
import importlib.metadata
import tempfile
import threading
import tomllib
import unittest
from pathlib import Path

import support
from support import CleanEnviron, plain_read, tensor_bytes, write_safetensors

import torch

import mx
import mx.vllm_plugin
import vllm.model_executor.model_loader as loader_registry
import vllm.plugins
from server_harness import HubAndServersCase
from vllm.config import LoadConfig, ModelConfig, VllmConfig
from vllm.model_executor.model_loader.base_loader import BaseModelLoader


def reset_vllm():
    """A fresh stand-in process state: no plugin loaded, no loader registered."""
    vllm.plugins.plugins_loaded = False
    loader_registry._LOAD_FORMAT_TO_MODEL_LOADER.clear()
    mx.vllm_plugin._registered.clear()


class Tiny(torch.nn.Module):
    """A small model whose parameters and buffer start at zero."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(16, 8)
        self.norm = torch.nn.LayerNorm(8)
        self.register_buffer("scale", torch.zeros(8, dtype=torch.bfloat16))
        with torch.no_grad():
            for p in self.parameters():
                p.zero_()


class TinyWithLoadWeights(Tiny):
    """A vLLM-style model: takes the (name, tensor) iterator itself."""

    def load_weights(self, weights):
        self.seen = []
        state = self.state_dict(keep_vars=True)
        with torch.no_grad():
            for name, tensor in weights:
                self.seen.append(name)
                state[name].copy_(tensor)
        return set(self.seen)


class Renamed(Tiny):
    """Parameters under other names than the checkpoint's (as vLLM's fused ones are)."""

    def __init__(self):
        super().__init__()
        self.lin = self.fc
        del self.fc

    def load_weights(self, weights):
        state = self.state_dict(keep_vars=True)
        with torch.no_grad():
            for name, tensor in weights:
                state[name.replace("fc.", "lin.")].copy_(tensor)


class Three(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(128, 128, bias=False)
        self.b = torch.nn.Linear(128, 128, bias=False)
        self.c = torch.nn.Linear(128, 128, bias=False)


class ThreeWithLoadWeights(Three):
    """Loads as vLLM's models do: a plain for loop over the pairs."""

    def load_weights(self, weights):
        params = dict(self.named_parameters())
        with torch.no_grad():
            for name, tensor in weights:
                params[name].copy_(tensor)


def tiny_checkpoint(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "fc.weight": ("F32", (8, 16), tensor_bytes(torch.randn(8, 16, generator=g))),
        "fc.bias": ("F32", (8,), tensor_bytes(torch.randn(8, generator=g))),
        "norm.weight": ("F32", (8,), tensor_bytes(torch.randn(8, generator=g))),
        "norm.bias": ("F32", (8,), tensor_bytes(torch.randn(8, generator=g))),
        "scale": ("BF16", (8,), tensor_bytes(torch.randn(8, generator=g).bfloat16())),
    }


class PluginSelectionTest(unittest.TestCase):
    def setUp(self):
        reset_vllm()

    def test_vllm_plugins_modelexpress_selects_it(self):
        with CleanEnviron(VLLM_PLUGINS="modelexpress"):
            vllm.plugins.load_general_plugins()
            for fmt in ("mx", "mx-source", "mx-target"):
                loader = loader_registry.get_model_loader(LoadConfig(load_format=fmt))
                self.assertIsInstance(loader, BaseModelLoader)
                self.assertEqual(type(loader).__name__, "MxModelLoader")

    def test_other_plugins_selected_leave_it_out(self):
        with CleanEnviron(VLLM_PLUGINS="someone_else"):
            vllm.plugins.load_general_plugins()
            with self.assertRaisesRegex(ValueError, "not supported"):
                loader_registry.get_model_loader(LoadConfig(load_format="mx"))

    def test_every_plugin_when_unset_registers_once(self):
        with CleanEnviron():
            vllm.plugins.load_general_plugins()
        self.assertEqual(set(loader_registry._LOAD_FORMAT_TO_MODEL_LOADER),
                         {"mx", "mx-source", "mx-target"})
        self.assertEqual(len(set(loader_registry._LOAD_FORMAT_TO_MODEL_LOADER.values())), 1)

    def test_a_vllm_without_loader_registration_gets_a_warning(self):
        saved = loader_registry.register_model_loader
        del loader_registry.register_model_loader
        try:
            with self.assertLogs("mx.vllm", "WARNING") as logs:
                mx.vllm_plugin.register()
        finally:
            loader_registry.register_model_loader = saved
        self.assertIn("register_model_loader", logs.output[0])
        self.assertEqual(loader_registry._LOAD_FORMAT_TO_MODEL_LOADER, {})

    def test_entry_points_are_the_packages(self):
        found = {e.name: e.value for e in
                 importlib.metadata.entry_points(group="vllm.general_plugins")}
        self.assertEqual(found, {"modelexpress": "mx.vllm_plugin:register",
                                 "mx": "mx.vllm_plugin:register"})
        pyproject = tomllib.loads((support.HERE.parent / "pyproject.toml").read_text())
        self.assertEqual(pyproject["project"]["entry-points"]["vllm.general_plugins"], found)


class LoaderChainTest(HubAndServersCase):
    PREFIX = "mx-py-vllm-"

    @classmethod
    def make_repos(cls, tmp: Path) -> dict:
        cls.content = tmp / "content"
        cls.layout = write_safetensors(cls.content / "model.safetensors", tiny_checkpoint(7))
        (cls.content / "config.json").write_text('{"architectures": ["Tiny"]}')
        return {"org/tiny": {"revisions": {"main": cls.content}}}

    def setUp(self):
        super().setUp()
        reset_vllm()
        # A worker publishes itself after a load when a server is configured: on loopback.
        self.env = CleanEnviron(VLLM_PLUGINS="modelexpress", HF_ENDPOINT=self.hub.endpoint,
                                MX_WORKER_HOST="127.0.0.4", MX_WORKER_GRPC_PORT="0").__enter__()
        vllm.plugins.load_general_plugins()

    def tearDown(self):
        self.env.__exit__()
        super().tearDown()

    def worker_cache(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="worker-cache-", dir=self.tmp))

    def load(self, fmt="mx", model_cls=Tiny):
        loader = loader_registry.get_model_loader(LoadConfig(load_format=fmt))
        config = ModelConfig(model="org/tiny")
        model = loader.load_model(VllmConfig(LoadConfig(load_format=fmt), config, model_cls),
                                  config)
        return loader, model

    def assert_weights_from_file(self, model):
        state = model.state_dict()
        self.assertEqual(set(state), set(self.layout))
        for name, lay in self.layout.items():
            want = plain_read(self.content / "model.safetensors", lay)
            self.assertTrue(torch.equal(state[name], want), name)
            self.assertTrue(state[name].any(), name)  # not the zeros it started with

    def outcomes(self, report):
        return [(s["strategy"], s["outcome"]) for s in report["steps"]]

    def test_each_strategy_serves_in_fallback_order(self):
        # 1. mx-server (its files streamed into this worker's cache: no shared storage).
        server = self.server()
        cache = self.worker_cache()
        self.env.set(MODEL_EXPRESS_URL=f"http://{server.address}",
                     MODEL_EXPRESS_NO_SHARED_STORAGE="1", MODEL_EXPRESS_CACHE_DIRECTORY=cache)
        loader, model = self.load()
        self.assertEqual(loader.last_report["served_by"], "server")
        self.assertEqual(self.outcomes(loader.last_report),
                         [("p2p", "skipped"), ("server", "served")])
        # MODEL_EXPRESS_NO_SHARED_STORAGE honoured: no warning about a shared cache that
        # does not hold the files (the fallback to streaming when shared storage is assumed).
        self.assertEqual(loader.last_report["warnings"], [])
        self.assert_weights_from_file(model)
        self.assertIsNotNone(mx.cache_path("org/tiny", cache_dir=cache))
        # Published as a P2P source after the load; stopped before its server is.
        self.assertTrue(loader.published[0], loader.published)
        self.assertIs(model._mx_p2p_source, loader.published)
        loader.published.stop()

        # 2. The server is down: MX_MODEL_URI (a plain directory), into an empty cache.
        server.stop()
        self.env.set(MX_MODEL_URI=self.content, MODEL_EXPRESS_CACHE_DIRECTORY=self.worker_cache())
        loader, model = self.load("mx-source")
        self.assertEqual(loader.last_report["served_by"], "uri")
        self.assertEqual(self.outcomes(loader.last_report),
                         [("p2p", "skipped"), ("server", "failed"), ("uri", "served")])
        self.assert_weights_from_file(model)

        # 3. No server, no URI: the local cache step 1 filled (the hub is not asked).
        self.env.set(MODEL_EXPRESS_URL=None, MX_MODEL_URI=None, MODEL_EXPRESS_CACHE_DIRECTORY=cache)
        self.hub.reset()
        loader, model = self.load("mx-target")
        self.assertEqual(loader.last_report["served_by"], "cache")
        self.assertEqual([o for _, o in self.outcomes(loader.last_report)],
                         ["skipped", "skipped", "skipped", "served"])
        self.assert_weights_from_file(model)
        self.assertEqual(self.hub.stats().get("requests", 0), 0, self.hub.stats())

        # 4. An empty cache: the hub.
        empty = self.worker_cache()
        self.env.set(MODEL_EXPRESS_CACHE_DIRECTORY=empty)
        loader, model = self.load(model_cls=TinyWithLoadWeights)
        self.assertEqual(loader.last_report["served_by"], "hub")
        self.assertEqual(self.outcomes(loader.last_report)[-2:],
                         [("cache", "skipped"), ("hub", "served")])
        self.assert_weights_from_file(model)
        self.assertEqual(sorted(model.seen), sorted(self.layout))  # its own load_weights ran
        self.assertIsNotNone(mx.cache_path("org/tiny", cache_dir=empty))

    def test_p2p_serves_a_second_worker_after_a_first_published(self):
        server = self.server()
        self.env.set(MODEL_EXPRESS_URL=f"http://{server.address}",
                     MODEL_EXPRESS_NO_SHARED_STORAGE="1",
                     MODEL_EXPRESS_CACHE_DIRECTORY=self.worker_cache())
        first, first_model = self.load()
        self.assertEqual(first.last_report["served_by"], "server")
        self.assertTrue(first.published[0], first.published)
        self.assertTrue(first.published.endpoint.startswith("127.0.0.4:"))
        del first  # the model alone keeps its source alive (vLLM may drop the loader)
        gc.collect()
        self.assertTrue(first_model._mx_p2p_source.serving)

        # A second worker with an empty cache and no hub: the p2p step serves it, from the
        # first worker's parameters and buffers.
        self.env.set(MODEL_EXPRESS_CACHE_DIRECTORY=self.worker_cache(),
                     HF_ENDPOINT="http://127.0.0.1:9")
        self.hub.reset()
        second, model = self.load(model_cls=TinyWithLoadWeights)
        self.assertEqual(self.outcomes(second.last_report), [("p2p", "served")])
        self.assert_weights_from_file(model)
        self.assertEqual(sorted(model.seen), sorted(self.layout))
        self.assertEqual(self.hub.stats().get("requests", 0), 0)
        # A model whose parameters are not the checkpoint's names is not published.
        third, _ = self.load(model_cls=Renamed)
        self.assertEqual(third.last_report["served_by"], "p2p")
        self.assertFalse(third.published[0])
        self.assertIn("not the checkpoint's tensors", third.published[1])
        second.published.stop()
        first_model._mx_p2p_source.stop()

    def test_no_strategy_left_fails_with_every_reason(self):
        self.env.set(MODEL_EXPRESS_CACHE_DIRECTORY=self.worker_cache(), HF_HUB_OFFLINE="1")
        with self.assertRaisesRegex(mx.MxError, "hub skipped: HF_HUB_OFFLINE"):
            self.load()

    def test_download_model_fills_the_cache(self):
        loader = loader_registry.get_model_loader(LoadConfig(load_format="mx"))
        # From the hub when no server is named ...
        cache = self.worker_cache()
        self.env.set(MODEL_EXPRESS_CACHE_DIRECTORY=cache)
        loader.download_model(ModelConfig(model="org/tiny"))
        path = mx.cache_path("org/tiny", cache_dir=cache)
        self.assertTrue((Path(path) / "model.safetensors").is_file())
        # ... through mx-server when one is.
        server = self.server()
        cache = self.worker_cache()
        self.env.set(MODEL_EXPRESS_CACHE_DIRECTORY=cache, MODEL_EXPRESS_URL=server.address,
                     MODEL_EXPRESS_NO_SHARED_STORAGE="true", HF_ENDPOINT="http://127.0.0.1:9")
        loader.download_model(ModelConfig(model="org/tiny"))
        self.assertIsNotNone(mx.cache_path("org/tiny", cache_dir=cache))

    def test_model_directory_and_extra_config(self):
        # vLLM given a local directory: streamed directly.
        loader = loader_registry.get_model_loader(LoadConfig(load_format="mx"))
        config = ModelConfig(model=str(self.content))
        model = loader.load_model(VllmConfig(LoadConfig(), config, Tiny), config)
        self.assertEqual(loader.last_report["served_by"], "path")
        self.assert_weights_from_file(model)
        # --model-loader-extra-config {"uri": ...} stands in for MX_MODEL_URI.
        load_config = LoadConfig(load_format="mx",
                                 model_loader_extra_config={"uri": str(self.content)})
        loader = loader_registry.get_model_loader(load_config)
        config = ModelConfig(model="org/tiny")
        self.env.set(MODEL_EXPRESS_CACHE_DIRECTORY=self.worker_cache())
        model = loader.load_model(VllmConfig(load_config, config, Tiny), config)
        self.assertEqual(loader.last_report["served_by"], "uri")
        self.assert_weights_from_file(model)
        # ... and {"endpoint", "cache_dir"} for MODEL_EXPRESS_URL and the cache root.
        server = self.server()
        cache = self.worker_cache()
        self.env.set(MODEL_EXPRESS_NO_SHARED_STORAGE="1")
        load_config = LoadConfig(load_format="mx", model_loader_extra_config={
            "endpoint": server.address, "cache_dir": str(cache)})
        loader = loader_registry.get_model_loader(load_config)
        model = loader.load_model(VllmConfig(load_config, config, Tiny), config)
        self.assertEqual(loader.last_report["served_by"], "server")
        self.assertIsNotNone(mx.cache_path("org/tiny", cache_dir=cache))
        self.assert_weights_from_file(model)

    def test_a_memory_limit_of_one_tensor_loads_both_kinds_of_model(self):
        # RUNAI_STREAMER_MEMORY_LIMIT=0 (the largest tensor) leaves room for one 64 KiB
        # tensor at a time: a loop that still holds the previous tensor when it asks for the
        # next one would wait forever for its memory.
        content = self.tmp / "three"
        g = torch.Generator().manual_seed(5)
        layout = write_safetensors(content / "model.safetensors", {
            n: ("F32", (128, 128), tensor_bytes(torch.randn(128, 128, generator=g)))
            for n in ("a.weight", "b.weight", "c.weight")})
        self.env.set(MX_MODEL_URI=content, RUNAI_STREAMER_MEMORY_LIMIT="0",
                     MODEL_EXPRESS_CACHE_DIRECTORY=self.worker_cache())
        for model_cls in (Three, ThreeWithLoadWeights):
            done = []
            worker = threading.Thread(target=lambda: done.append(self.load(model_cls=model_cls)),
                                      daemon=True)
            worker.start()
            worker.join(20)
            self.assertTrue(done, f"{model_cls.__name__}: the load did not finish")
            loader, model = done[0]
            self.assertEqual(loader.last_report["served_by"], "uri")
            for name, lay in layout.items():
                want = plain_read(content / "model.safetensors", lay)
                self.assertTrue(torch.equal(model.state_dict()[name], want), name)

    def test_wrong_model_shape_is_refused(self):
        class Wider(Tiny):
            def __init__(self):
                super().__init__()
                self.fc = torch.nn.Linear(16, 9)

        self.env.set(MX_MODEL_URI=self.content)
        with self.assertRaisesRegex(ValueError, "fc.weight"):
            self.load(model_cls=Wider)


if __name__ == "__main__":
    unittest.main()
