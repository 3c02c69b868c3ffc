"""mx: ModelExpress's worker side in Python, over the mx C++ library.

    import mx
    path = mx.download("org/name", allow_patterns=["*.safetensors", "*.json"])
    for name, tensor in mx.stream(path):          # torch tensors viewing the streamer's memory
        ...
    with mx.load("org/name") as weights:          # the loader chain: p2p, server, uri, cache, hub
        for name, tensor in weights:
            ...
    print(weights.report["served_by"])

Every call that does I/O releases the GIL. Errors are ``MxError`` (a RuntimeError) with the
C++ library's message, or ``ValueError`` for bad arguments.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from . import _mx
from ._mx import MxError
from . import _tensors
from . import p2p

__all__ = ["MxError", "download", "cache_path", "cache_root", "stream", "load", "fetch_model",
           "ModelLoad", "p2p", "__version__"]
__version__ = _mx.version()

PathLike = Union[str, "os.PathLike[str]"]
Size = Union[int, str, None]


def _size(value: Size) -> Optional[str]:
    return None if value is None else str(value)


def _patterns(value: Union[str, Sequence[str], None]) -> List[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def download(repo_id: str, revision: Optional[str] = None, *,
             allow_patterns: Union[str, Sequence[str], None] = None,
             ignore_patterns: Union[str, Sequence[str], None] = None,
             files: Optional[Sequence[str]] = None, cache_dir: Optional[PathLike] = None,
             local_dir: Optional[PathLike] = None, max_workers: int = 16,
             force_download: bool = False, token: Optional[str] = None) -> str:
    """Downloads a hub repo (or the files the filters select) into the HF cache, as
    ``huggingface_hub.snapshot_download`` does, and returns the snapshot directory.

    Filters: ``allow_patterns`` / ``ignore_patterns`` (fnmatch globs) or exact ``files``.
    The cache root is ``cache_dir``, else MODEL_EXPRESS_CACHE_DIRECTORY, HF_HUB_CACHE,
    $HF_HOME/hub. The hub is HF_ENDPOINT; the token ``token``, else HF_TOKEN."""
    report = _mx.download(repo_id, revision or "main", list(files or []),
                          _patterns(allow_patterns), _patterns(ignore_patterns),
                          os.fspath(cache_dir) if cache_dir else "",
                          os.fspath(local_dir) if local_dir else None, max_workers,
                          force_download, token)
    return report["path"]


def cache_path(repo_id: str, revision: str = "main", *,
               cache_dir: Optional[PathLike] = None) -> Optional[str]:
    """The local snapshot directory of ``repo_id`` at ``revision`` (a branch, tag or
    commit), or None when the local cache does not hold it. No network."""
    return _mx.cache_path(repo_id, revision, os.fspath(cache_dir) if cache_dir else "")


def cache_root(cache_dir: Optional[PathLike] = None) -> str:
    """The cache root the other calls use (see ``download``)."""
    return _mx.cache_root(os.fspath(cache_dir) if cache_dir else "")


class _Pairs:
    """(name, tensor) pairs from a native TensorStream. An iterator class, not a generator:
    a suspended generator frame would keep the last tensor alive, and with a memory limit
    the streamer waits for exactly that memory."""

    def __init__(self, native: Any, convert: Any):
        self._native = native
        self._convert = convert

    def __iter__(self) -> "_Pairs":
        return self

    def __next__(self) -> Tuple[str, Any]:
        name, buffer, dtype, shape, _file = next(self._native)
        return name, self._convert(buffer, dtype, shape)

    def close(self) -> None:
        self._native.close()

    def __del__(self) -> None:
        if hasattr(self, "_native"):
            self.close()


def stream(uri: Union[PathLike, Sequence[PathLike]], device: str = "cpu", *,
           framework: Optional[str] = None, concurrency: Optional[int] = None,
           chunk_bytes: Size = None, memory_limit: Size = None,
           direct_io: Optional[bool] = None, queue: int = 4) -> Iterator[Tuple[str, Any]]:
    """Streams every tensor of the safetensors model at ``uri`` (a directory or file, an
    s3://, gs://, az:// or http(s):// URI, or a hub id in the local cache), yielding
    ``(name, tensor)`` pairs in the file's dtype and shape as their bytes arrive.

    CPU tensors are read-only views of the streamer's memory (no copy): that memory is
    held while any of them lives, and with a ``memory_limit`` the stream waits until the
    caller releases enough of it (keep ``.clone()`` copies, not the views, of more than
    the limit). ``device="cuda"`` copies each tensor to that device and drops the view.
    ``framework``: "torch" (default when torch is installed) or "numpy".

    Knobs default to RUNAI_STREAMER_CONCURRENCY, RUNAI_STREAMER_CHUNK_BYTESIZE,
    RUNAI_STREAMER_MEMORY_LIMIT; sizes take units ("16MiB")."""
    uris = [uri] if isinstance(uri, (str, os.PathLike)) else list(uri)
    convert = _tensors.converter(framework, device)
    native = _mx.stream([os.fspath(u) for u in uris], concurrency, _size(chunk_bytes),
                        _size(memory_limit), direct_io, queue)
    return _Pairs(native, convert)


class ModelLoad:
    """One run of the loader chain (see ``load``): iterate it for ``(name, tensor)`` pairs;
    ``report`` says which strategy served the weights once the iteration ended (also when
    it failed: every step's outcome and reason)."""

    def __init__(self, native: Any, convert: Any):
        self._native = native
        self._pairs = _Pairs(native, convert)

    def __iter__(self) -> Iterator[Tuple[str, Any]]:
        return self._pairs

    @property
    def report(self) -> Optional[Dict[str, Any]]:
        return self._native.report

    def close(self) -> None:
        self._pairs.close()

    def __enter__(self) -> "ModelLoad":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def load(model: str, revision: Optional[str] = None, *, device: str = "cpu",
         framework: Optional[str] = None, provider: str = "hugging-face",
         uri: Optional[str] = None, endpoint: Optional[str] = None,
         cache_dir: Optional[PathLike] = None, shared_storage: Optional[bool] = None,
         concurrency: Optional[int] = None, chunk_bytes: Size = None,
         memory_limit: Size = None, direct_io: Optional[bool] = None,
         queue: int = 4, _p2p_only: bool = False) -> ModelLoad:
    """Loads a model's weights through the loader chain, as ``mx load`` does: p2p (the
    memory of READY sources of the model on the server, see ``mx.p2p``; skipped when no
    server is named or none is READY), server (``endpoint``, else MODEL_EXPRESS_URL /
    MODEL_EXPRESS_ENDPOINT; skipped when none is named), uri (``uri``, else MX_MODEL_URI),
    the local cache, then the hub. Each tensor is delivered once, whichever strategy
    finishes the load. ``shared_storage`` defaults to not MODEL_EXPRESS_NO_SHARED_STORAGE.
    Tensors are as in ``stream``."""
    convert = _tensors.converter(framework, device)
    native = _mx.load(model, revision or "", provider, uri, endpoint or "",
                      os.fspath(cache_dir) if cache_dir else "", shared_storage, concurrency,
                      _size(chunk_bytes), _size(memory_limit), direct_io, queue, _p2p_only)
    return ModelLoad(native, convert)


def fetch_model(name: str, revision: Optional[str] = None, *, provider: str = "hugging-face",
                endpoint: Optional[str] = None, strategy: str = "smart-fallback",
                shared_storage: Optional[bool] = None, cache_dir: Optional[PathLike] = None,
                streams: int = 4) -> Dict[str, Any]:
    """The worker client (``mx model download``): gets the model's files into the local
    cache through mx-server (``endpoint``, else MODEL_EXPRESS_URL, MODEL_EXPRESS_ENDPOINT,
    localhost:8001). ``strategy``: "smart-fallback" (the hub when the server is down),
    "server-only" or "direct". Returns the report: path, commit, files, bytes,
    bytes_streamed, seconds, strategy ("shared-storage", "stream" or "hub")."""
    return _mx.fetch_model(name, revision or "", provider, endpoint or "", strategy,
                           shared_storage, os.fspath(cache_dir) if cache_dir else "", streams)
