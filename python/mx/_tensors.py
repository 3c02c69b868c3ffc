"""Views of the streamer's buffers as torch tensors or numpy arrays, without a copy.

Each tensor arrives as a ``TensorBuffer`` (read-only bytes that own the streamer's hold on
its memory). ``torch.frombuffer`` / ``numpy.frombuffer`` make a view of those bytes that
keeps the buffer object, and so the memory, alive for as long as the view lives.

Types a framework lacks come as the same-width raw integers (the bits unchanged):
numpy gets BF16 as uint16 and every F8 type as uint8; torch releases without unsigned or
float8 types get U16/U32/U64 as int16/int32/int64 and F8 as uint8. The sub-byte types
(F4, F6_*) always come as a 1-D uint8 array of the packed bytes.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Sequence

# safetensors dtype -> (torch attribute, fallback torch attribute of the same width)
_TORCH = {
    "BOOL": ("bool", None), "U8": ("uint8", None), "I8": ("int8", None),
    "I16": ("int16", None), "U16": ("uint16", "int16"), "F16": ("float16", None),
    "BF16": ("bfloat16", None), "I32": ("int32", None), "U32": ("uint32", "int32"),
    "F32": ("float32", None), "I64": ("int64", None), "U64": ("uint64", "int64"),
    "F64": ("float64", None), "C64": ("complex64", None),
    "F8_E5M2": ("float8_e5m2", "uint8"), "F8_E4M3": ("float8_e4m3fn", "uint8"),
    "F8_E8M0": ("float8_e8m0fnu", "uint8"), "F8_E4M3FNUZ": ("float8_e4m3fnuz", "uint8"),
    "F8_E5M2FNUZ": ("float8_e5m2fnuz", "uint8"),
}
_NUMPY = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "U16": "uint16",
    "F16": "float16", "BF16": "uint16", "I32": "int32", "U32": "uint32", "F32": "float32",
    "I64": "int64", "U64": "uint64", "F64": "float64", "C64": "complex64",
    "F8_E5M2": "uint8", "F8_E4M3": "uint8", "F8_E8M0": "uint8", "F8_E4M3FNUZ": "uint8",
    "F8_E5M2FNUZ": "uint8",
}
_PACKED = ("F4", "F6_E2M3", "F6_E3M2")  # sub-byte: raw bytes, shape not applied

# The buffers are read-only (they may be read-only file mappings): torch.frombuffer warns
# that writing to such a tensor is undefined, which is this module's documented contract.
# A filter for this module's calls only (catch_warnings per call would not be thread-safe).
warnings.filterwarnings("ignore", message="The given buffer is not writable",
                        category=UserWarning, module=__name__)


def torch_dtype(name: str):
    """The torch dtype a safetensors dtype arrives as (see the module docstring)."""
    import torch

    if name in _PACKED:
        return torch.uint8
    attr, fallback = _TORCH[name]
    found = getattr(torch, attr, None)
    return found if found is not None else getattr(torch, fallback)


def numpy_dtype(name: str):
    import numpy

    return numpy.dtype("uint8" if name in _PACKED else _NUMPY[name])


def to_torch(buffer: Any, dtype: str, shape: Sequence[int]):
    import torch

    dt = torch_dtype(dtype)
    shape = tuple(shape) if dtype not in _PACKED else (buffer.nbytes,)
    if buffer.nbytes == 0:
        return torch.empty(shape, dtype=dt)
    return torch.frombuffer(buffer, dtype=dt).reshape(shape)


def to_numpy(buffer: Any, dtype: str, shape: Sequence[int]):
    import numpy

    dt = numpy_dtype(dtype)
    shape = tuple(shape) if dtype not in _PACKED else (buffer.nbytes,)
    return numpy.frombuffer(buffer, dtype=dt).reshape(shape)


def converter(framework: str | None, device: str) -> Callable[[Any, str, Sequence[int]], Any]:
    """The function that turns (buffer, dtype, shape) into what the caller asked for."""
    if framework is None:
        try:
            import torch  # noqa: F401

            framework = "torch"
        except ImportError:
            framework = "numpy"
    if framework == "numpy":
        if device != "cpu":
            raise ValueError("numpy arrays live on the CPU: device must be 'cpu'")
        return to_numpy
    if framework != "torch":
        raise ValueError(f"framework must be 'torch' or 'numpy', not {framework!r}")
    if device == "cpu":
        return to_torch

    def to_device(buffer, dtype, shape):
        # The view is copied to the device and dropped, so the streamer's buffer goes back
        # to its pool as soon as the copy is done.
        return to_torch(buffer, dtype, shape).to(device)

    return to_device
