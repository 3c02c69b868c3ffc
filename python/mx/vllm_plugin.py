"""The vLLM plugin: load format ``mx`` (and the older ``mx-source`` / ``mx-target`` names)
backed by mx's loader chain.

vLLM finds it through the ``vllm.general_plugins`` entry points ``modelexpress`` and
``mx`` (so ``VLLM_PLUGINS=modelexpress`` selects it) and calls ``register()``, which
registers the loader class with ``vllm.model_executor.model_loader.register_model_loader``
(vLLM's model-loader registration interface; the class derives from
``vllm.model_executor.model_loader.base_loader.BaseModelLoader``). Then
``vllm serve ORG/NAME --load-format mx`` loads the weights through the chain: P2P, then
mx-server (MODEL_EXPRESS_URL; MODEL_EXPRESS_NO_SHARED_STORAGE streams its files instead of
reading a shared cache), then MX_MODEL_URI (the streamer, RUNAI_STREAMER_* knobs), then
the local HF cache, then the hub. After a successful load, when a server is configured, the
worker publishes the model's CPU parameters and buffers as a P2P source (``mx.p2p``), so
the next worker's p2p step can read them; otherwise it logs why not.

vLLM is imported only inside ``register()``: importing this module needs neither vLLM nor
torch.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, Iterable, Iterator, Optional, Tuple

LOAD_FORMATS = ("mx", "mx-source", "mx-target")
logger = logging.getLogger("mx.vllm")

_registered: Dict[str, type] = {}


def _setting(extra: Dict[str, Any], key: str) -> Optional[str]:
    value = extra.get(key)
    return None if value is None else str(value)


class LoaderLogic:
    """What the vLLM loader does, apart from vLLM's base class: ``download_model`` and
    ``load_weights`` with vLLM's signatures. ``last_report`` keeps the chain's report of
    the latest load (which strategy served it, every step's outcome)."""

    def __init__(self, load_config: Any):
        self.load_config = load_config
        extra = getattr(load_config, "model_loader_extra_config", None) or {}
        # Optional overrides from --model-loader-extra-config; the environment otherwise.
        self._endpoint = _setting(extra, "endpoint")
        self._uri = _setting(extra, "uri")
        self._cache_dir = _setting(extra, "cache_dir") or getattr(load_config, "download_dir",
                                                                  None)
        self.last_report: Optional[Dict[str, Any]] = None
        self.published: Optional[Tuple[bool, str]] = None

    # --- vLLM's interface ----------------------------------------------------------------

    def download_model(self, model_config: Any) -> None:
        """Gets the model's files into the local cache (through mx-server when one is
        configured, else from the hub). A local directory or MX_MODEL_URI needs nothing."""
        import mx

        model = model_config.model
        if os.path.isdir(model) or self._uri or os.environ.get("MX_MODEL_URI"):
            return
        server = self._endpoint or os.environ.get("MODEL_EXPRESS_URL") or os.environ.get(
            "MODEL_EXPRESS_ENDPOINT")
        mx.fetch_model(model, getattr(model_config, "revision", None), endpoint=server,
                       strategy="smart-fallback" if server else "direct",
                       cache_dir=self._cache_dir)

    def load_weights(self, model: Any, model_config: Any) -> None:
        """Streams the weights through the chain into ``model``: its own ``load_weights``
        (vLLM's models map checkpoint names onto fused parameters there) when it has one,
        else each parameter or buffer of the same name is filled in place."""
        import mx

        name = model_config.model
        if os.path.isdir(name):
            weights = _DirectoryLoad(name)
        else:
            weights = mx.load(name, getattr(model_config, "revision", None), uri=self._uri,
                              endpoint=self._endpoint, cache_dir=self._cache_dir)
        checkpoint = _Recorded(weights)
        with weights:
            if callable(getattr(model, "load_weights", None)):
                model.load_weights(_owned(checkpoint) if _memory_limited() else checkpoint)
            else:
                _fill_by_name(model, checkpoint)
        self.last_report = weights.report
        logger.info("mx: %s loaded (%s tensors) served by %s", name,
                    self.last_report.get("tensors"), self.last_report.get("served_by"))
        self.published = _publish(name, model, self._endpoint, checkpoint.seen)
        if self.published[0]:
            logger.info("mx: %s", self.published[1])
        else:
            logger.info("mx: not published as a P2P source: %s", self.published[1])


class _Recorded:
    """Passes (name, tensor) pairs through, noting each name and shape (not the tensor: a
    kept reference would hold the streamer's memory)."""

    def __init__(self, pairs: Iterable[Tuple[str, Any]]):
        self._it = iter(pairs)
        self.seen: Dict[str, Tuple[int, ...]] = {}

    def __iter__(self) -> "_Recorded":
        return self

    def __next__(self) -> Tuple[str, Any]:
        name, tensor = next(self._it)
        self.seen[name] = tuple(tensor.shape)
        return name, tensor


def _publish(name: str, model: Any, endpoint: Optional[str],
             checkpoint: Dict[str, Tuple[int, ...]]) -> Any:
    """Publishes the loaded model's parameters and buffers as a P2P source (when a server
    is configured), only when they are the checkpoint's tensors by name and shape: a peer's
    p2p step serves them in place of the checkpoint, so fused or sharded parameters (which
    a peer's load_weights could not map) are not published. The Source serves their memory
    and keeps them alive: it is kept on the model too, so it lives as long as the model
    even when vLLM drops the loader. A tensor that cannot be served (not contiguous, on a
    device other than the CPU or CUDA; CUDA parameters need this build's CUDA support and a
    usable GPU) or a server that fails leaves the model loaded and unpublished, with the
    reason."""
    import mx

    previous = getattr(model, "_mx_p2p_source", None)
    if previous is not None:
        previous.stop()  # reloaded in place: the old source described the old memory
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    mine = {n: tuple(t.shape) for n, t in tensors}
    if mine != checkpoint:
        differ = sorted(set(mine.items()) ^ set(checkpoint.items()))
        return mx.p2p.Source(False, "the model's parameters are not the checkpoint's tensors "
                             f"(by name and shape, e.g. {differ[0][0]}): a peer could not "
                             "load them")
    try:
        source = mx.p2p.publish_source(name, tensors, endpoint=endpoint)
    except (ValueError, mx.MxError) as e:
        logger.warning("mx: publishing %s as a P2P source failed: %s", name, e)
        return mx.p2p.Source(False, str(e))
    if source.published:
        object.__setattr__(model, "_mx_p2p_source", source)
    return source


class _DirectoryLoad:
    """A local model directory (vLLM given a path): the streamer alone, reported as "path"."""

    def __init__(self, path: str):
        import mx

        self._path = path
        self._pairs = mx.stream(path)
        self._count = 0
        self.report: Dict[str, Any] = {}

    def __iter__(self) -> Iterator[Tuple[str, Any]]:
        for pair in self._pairs:
            self._count += 1
            yield pair
        self.report = {"served_by": "path", "path": self._path, "tensors": self._count,
                       "steps": [{"strategy": "path", "outcome": "served", "reason": ""}]}

    def __enter__(self) -> "_DirectoryLoad":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._pairs.close()


def _memory_limited() -> bool:
    """True when RUNAI_STREAMER_MEMORY_LIMIT bounds the streamer's memory."""
    return os.environ.get("RUNAI_STREAMER_MEMORY_LIMIT", "").strip() not in ("", "-1")


def _owned(weights: Iterable[Tuple[str, Any]]) -> Iterator[Tuple[str, Any]]:
    """For a model's own load_weights under a memory limit: its `for` loop keeps the
    previous tensor while it asks for the next one, and a view of the streamer's memory
    kept that way can hold the memory the next tensor needs (a limit of one tensor waits
    forever). So each view is copied and dropped before the model sees it: one copy per
    tensor, only when RUNAI_STREAMER_MEMORY_LIMIT is set."""
    for name, view in weights:
        owned = view.clone()
        del view
        yield name, owned
        del owned


def _fill_by_name(model: Any, weights: Iterable[Tuple[str, Any]]) -> None:
    import torch

    targets = dict(model.named_parameters())
    targets.update(dict(model.named_buffers()))
    filled = set()
    it = iter(weights)
    with torch.no_grad():
        while True:
            # Not a for loop: each view is dropped before the next one is asked for, so a
            # memory limit of one tensor suffices and nothing is copied but into the model.
            pair = next(it, None)
            if pair is None:
                break
            name, tensor = pair
            del pair
            target = targets.get(name)
            if target is None:
                raise KeyError(f"the checkpoint's tensor {name!r} has no parameter in the model")
            if tuple(target.shape) != tuple(tensor.shape):
                raise ValueError(f"{name}: checkpoint shape {tuple(tensor.shape)} != model "
                                 f"shape {tuple(target.shape)}")
            target.copy_(tensor)  # the only copy: streamer memory -> the parameter
            del tensor
            filled.add(name)
    missing = sorted(set(dict(model.named_parameters())) - filled)
    if missing:
        raise ValueError(f"the checkpoint lacks {len(missing)} parameters: {missing[:5]}")


def make_loader_class(base: type) -> type:
    """The loader class for vLLM: ``base`` (vLLM's BaseModelLoader) with mx's logic."""

    class MxModelLoader(LoaderLogic, base):  # type: ignore[misc, valid-type]
        def __init__(self, load_config: Any):
            base.__init__(self, load_config)
            LoaderLogic.__init__(self, load_config)

        def download_model(self, model_config: Any) -> None:
            LoaderLogic.download_model(self, model_config)

        def load_weights(self, model: Any, model_config: Any) -> None:
            LoaderLogic.load_weights(self, model, model_config)

    MxModelLoader.__qualname__ = MxModelLoader.__name__ = "MxModelLoader"
    return MxModelLoader


def register() -> None:
    """vLLM's plugin entry point: registers the load formats (once per process)."""
    if _registered:
        return
    try:
        from vllm.model_executor.model_loader import register_model_loader
        from vllm.model_executor.model_loader.base_loader import BaseModelLoader
    except ImportError as e:
        logger.warning("mx: this vLLM has no model-loader registration interface "
                       "(register_model_loader); load format 'mx' is unavailable: %s", e)
        return
    cls = make_loader_class(BaseModelLoader)
    for name in LOAD_FORMATS:
        register_model_loader(name)(cls)
        _registered[name] = cls
