"""Shared helpers of the Python package's tests: the import path of the built package
(MX_PYTHON_PATH, set by ctest; else the default build tree), the integration harness
(tests/integration: hub stand-in, mx-server), a safetensors writer and an environment
guard for tests that run the C++ library in this process."""

from __future__ import annotations

import json
import os
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, os.environ.get("MX_PYTHON_PATH") or str(REPO / "build" / "python" / "pkg"))
sys.path.insert(1, str(REPO / "tests" / "integration"))
sys.path.insert(2, str(HERE / "vllm_standin"))

import harness  # noqa: E402  (tests/integration)

MIB = 1 << 20

# safetensors dtype -> (torch dtype name, element bytes)
DTYPES = {
    "F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2),
    "BF16": ("bfloat16", 2), "I64": ("int64", 8), "I32": ("int32", 4), "I16": ("int16", 2),
    "I8": ("int8", 1), "U8": ("uint8", 1), "BOOL": ("bool", 1), "U16": ("int16", 2),
    "F8_E4M3": ("uint8", 1),
}


def tensor_bytes(t) -> bytes:
    """The raw bytes of a torch tensor (little-endian, as safetensors stores them)."""
    import torch

    t = t.contiguous()
    if t.numel() == 0:
        return b""
    return t.reshape(-1).view(torch.uint8).numpy().tobytes()


def write_safetensors(path, tensors: dict) -> dict:
    """Writes {name: (dtype, shape, raw bytes)} as one safetensors file; returns
    {name: (dtype, shape, absolute start, end)} for reading the bytes back plainly."""
    header, offset, blobs = {}, 0, []
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in blobs:
            f.write(raw)
    start = 8 + len(text)
    return {name: (h["dtype"], tuple(h["shape"]), start + h["data_offsets"][0],
                   start + h["data_offsets"][1]) for name, h in header.items()}


def plain_read(path, layout, torch_dtype=None):
    """A tensor read the plain way: torch.frombuffer over the file's bytes."""
    import torch

    dtype, shape, start, end = layout
    with open(path, "rb") as f:
        f.seek(start)
        raw = bytearray(f.read(end - start))
    dt = torch_dtype or getattr(torch, DTYPES[dtype][0])
    if not raw:
        return torch.empty(shape, dtype=dt)
    return torch.frombuffer(raw, dtype=dt).reshape(shape)


class CleanEnviron:
    """os.environ as the harness's base_env() (no proxies, HF_* or cloud variables of the
    developer's), plus `extra`; restored on exit. The C++ library reads the environment
    in this process, so this is what isolates it."""

    def __init__(self, **extra):
        self.extra = {k: v for k, v in extra.items()}

    def __enter__(self):
        self.saved = dict(os.environ)
        env = harness.base_env()
        for k in [k for k in env if k.startswith(("HF_", "MODEL_EXPRESS_", "MX_MODEL_URI",
                                                   "RUNAI_STREAMER_", "VLLM_"))]:
            del env[k]
        env["MX_AUTH_TOKEN_PATH"] = "/nonexistent/mx-test-token"
        for k, v in self.extra.items():
            if v is not None:
                env[k] = str(v)
        os.environ.clear()
        os.environ.update(env)
        return self

    def set(self, **values):
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = str(v)

    def __exit__(self, *exc):
        os.environ.clear()
        os.environ.update(self.saved)
