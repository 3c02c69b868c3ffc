"""P2P transfer: this process as a source of a model's weights for other workers, and the
target side that receives them from such sources.

Source: ``publish_source(model, tensors)`` serves the memory of CPU tensors (no copy; CUDA
tensors through pinned host staging, untested on a GPU) to
peers and publishes this process to mx-server (MODEL_EXPRESS_URL) as a READY source of
``model``. The worker binds and advertises MX_WORKER_HOST (default 127.0.0.1) on
MX_WORKER_GRPC_PORT (default 6555; 0 = any free port) and heartbeats every
MX_HEARTBEAT_INTERVAL_SECS (default 30). ``Source.stop()``, garbage collection of the
Source, or interpreter exit marks it STALE.

Target: ``mx.load`` tries READY sources first (the chain's p2p step); ``receive`` is that
step alone.
"""

from __future__ import annotations

import atexit
import weakref
from typing import Any, Iterable, List, Optional, Tuple

from . import _mx


def available() -> bool:
    """True when this build has the P2P transfer engine."""
    return _mx.p2p_available()


class Source(tuple):
    """The outcome of ``publish_source``: a ``(published, reason)`` pair (so
    ``published, reason = publish_source(...)`` works) with the running source's
    ``mx_source_id``, ``worker_id``, ``endpoint`` (its WorkerService) and
    ``transfer_endpoint`` (None when not published). It keeps the published tensors alive
    until ``stop()``; truthy only when published."""

    def __new__(cls, published: bool, reason: str, native: Any = None,
                keep: Optional[List[Any]] = None) -> "Source":
        self = super().__new__(cls, (published, reason))
        self._native = native
        self._keep = keep or []  # the tensors whose memory the worker serves
        return self

    @property
    def published(self) -> bool:
        return self[0]

    @property
    def reason(self) -> str:
        return self[1]

    def _get(self, attr: str) -> Optional[Any]:
        return None if self._native is None else getattr(self._native, attr)

    @property
    def mx_source_id(self) -> Optional[str]:
        return self._get("mx_source_id")

    @property
    def worker_id(self) -> Optional[str]:
        return self._get("worker_id")

    @property
    def endpoint(self) -> Optional[str]:
        return self._get("endpoint")

    @property
    def transfer_endpoint(self) -> Optional[str]:
        return self._get("transfer_endpoint")

    @property
    def bytes_served(self) -> int:
        return self._get("bytes_served") or 0

    @property
    def serving(self) -> bool:
        return self._native is not None and not self._native.stopped

    def stop(self) -> None:
        """Marks the source STALE (best effort, bounded) and stops serving; the tensors are
        released afterwards. Idempotent."""
        native = getattr(self, "_native", None)
        if native is not None:
            native.stop()
            self._keep = []

    def __bool__(self) -> bool:
        return bool(self[0])

    def __repr__(self) -> str:
        if self._native is None:
            return f"Source(published=False, reason={self[1]!r})"
        return (f"Source(mx_source_id={self.mx_source_id!r}, worker_id={self.worker_id!r}, "
                f"endpoint={self.endpoint!r}, serving={self.serving})")

    def __del__(self) -> None:
        self.stop()


# Every running source, stopped at interpreter exit (objects still alive then may never be
# collected, and a source left READY would be tried by peers until its heartbeat expires).
_running: "weakref.WeakSet[Any]" = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for native in list(_running):
        native.stop()


_TORCH_TO_SAFETENSORS = {
    "bool": "BOOL", "uint8": "U8", "int8": "I8", "int16": "I16", "uint16": "U16",
    "float16": "F16", "bfloat16": "BF16", "int32": "I32", "uint32": "U32", "float32": "F32",
    "int64": "I64", "uint64": "U64", "float64": "F64", "complex64": "C64",
    "float8_e5m2": "F8_E5M2", "float8_e4m3fn": "F8_E4M3", "float8_e8m0fnu": "F8_E8M0",
    "float8_e4m3fnuz": "F8_E4M3FNUZ", "float8_e5m2fnuz": "F8_E5M2FNUZ",
}
_NUMPY_TO_SAFETENSORS = {
    "bool": "BOOL", "uint8": "U8", "int8": "I8", "int16": "I16", "uint16": "U16",
    "float16": "F16", "int32": "I32", "uint32": "U32", "float32": "F32", "int64": "I64",
    "uint64": "U64", "float64": "F64", "complex64": "C64",
}


def _describe(name: Any, tensor: Any) -> Tuple[Tuple[str, int, int, str, List[int], int], Any]:
    """(name, address, bytes, safetensors dtype, shape, CUDA device or -1) of one tensor, and
    the object that keeps its memory alive. ValueError for what cannot be served from its own memory."""
    if not isinstance(name, str):
        raise ValueError(f"tensor names must be str, got {type(name).__name__}")
    module = type(tensor).__module__.split(".")[0]
    if module == "torch":
        import torch

        if tensor.device.type == "cuda":
            # Served through pinned host staging (untested on a GPU: see the README).
            device = tensor.device.index
            if device is None:
                device = torch.cuda.current_device()
        elif tensor.device.type == "cpu":
            device = -1
        else:
            raise ValueError(f"{name}: only CPU and CUDA tensors can be published (this one "
                             f"is on {tensor.device})")
        if tensor.layout != torch.strided or not tensor.is_contiguous():
            raise ValueError(f"{name}: not contiguous; publish tensor.contiguous() (a copy) "
                             "instead")
        if tensor.is_conj() or tensor.is_neg():
            raise ValueError(f"{name}: a lazily conjugated/negated view; resolve it first")
        dtype = _TORCH_TO_SAFETENSORS.get(str(tensor.dtype).replace("torch.", ""))
        if dtype is None:
            raise ValueError(f"{name}: torch dtype {tensor.dtype} has no safetensors dtype")
        # detach(): shares the storage and keeps it even if the caller rebinds param.data.
        keep = tensor.detach()
        return (name, keep.data_ptr(), keep.numel() * keep.element_size(), dtype,
                list(keep.shape), device), keep
    if module == "numpy":
        if not tensor.flags.c_contiguous:
            raise ValueError(f"{name}: not C-contiguous; publish numpy.ascontiguousarray(a) "
                             "(a copy) instead")
        if tensor.dtype.byteorder == ">":
            raise ValueError(f"{name}: big-endian arrays cannot be published")
        dtype = _NUMPY_TO_SAFETENSORS.get(tensor.dtype.name)
        if dtype is None:
            raise ValueError(f"{name}: numpy dtype {tensor.dtype} has no safetensors dtype")
        address = tensor.__array_interface__["data"][0]
        return (name, address, int(tensor.nbytes), dtype, [int(d) for d in tensor.shape],
                -1), tensor
    raise ValueError(f"{name}: expected a torch tensor or numpy array, got "
                     f"{type(tensor).__name__}")


def publish_source(model: str, tensors: Iterable[Tuple[str, Any]], *,
                   endpoint: Optional[str] = None, revision: str = "", rank: int = 0,
                   tp_size: int = 1, pp_size: int = 1, ep_size: int = 1, dtype: str = "",
                   quantization: str = "") -> Source:
    """Serves ``tensors`` ((name, CPU torch tensor or numpy array) pairs) of ``model`` to
    other workers from their own memory, without a copy, and publishes this process as a
    READY source on mx-server (``endpoint``, else MODEL_EXPRESS_URL /
    MODEL_EXPRESS_ENDPOINT). Returns a ``Source``: ``(False, reason)`` when no server is
    configured; otherwise ``(True, ...)`` with the running source, which keeps the tensors
    alive (do not modify them while it serves) until ``stop()``.

    ValueError for a tensor that cannot be served from its own memory (not contiguous, on a
    device other than the CPU or CUDA, a dtype safetensors lacks); MxError when the server or the worker's ports
    fail."""
    if not available():
        return Source(False, "this build has no P2P transfer engine")
    if not _mx.server_configured(endpoint or ""):
        return Source(False, "no mx-server configured (MODEL_EXPRESS_URL)")
    described, keep = [], []
    for name, tensor in tensors:
        d, k = _describe(name, tensor)
        described.append(d)
        keep.append(k)
    native = _mx.publish_source(model, described, endpoint or "", revision, rank, tp_size,
                                pp_size, ep_size, dtype, quantization)
    _running.add(native)
    return Source(True, f"published as source {native.mx_source_id} at {native.endpoint}",
                  native, keep)


def receive(model: str, revision: Optional[str] = None, *, endpoint: Optional[str] = None,
            device: str = "cpu", framework: Optional[str] = None) -> Any:
    """Receives ``model``'s tensors from the READY P2P sources (the target side): ``mx.load``
    with the p2p step alone, so it fails (MxError, with the step's reason) instead of
    falling back to the server, a URI, the cache or the hub. Returns the ``mx.ModelLoad``
    to iterate for ``(name, tensor)`` pairs."""
    from . import load

    return load(model, revision, endpoint=endpoint, device=device, framework=framework,
                _p2p_only=True)
