"""mx.stream: tensors equal to a plain read of the file, views of the streamer's memory (no
copy), alive as long as the caller keeps them, peak memory bounded by the memory limit."""

from __future__ import annotations

import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import unittest
from pathlib import Path

import support  # noqa: F401  (sys.path)
from support import MIB, CleanEnviron, plain_read, tensor_bytes, write_safetensors

import numpy
import torch

import mx
from mx import _mx, _tensors


def sample_tensors(seed: int) -> dict:
    """One tensor of every kind the converter handles, including a scalar and an empty one."""
    g = torch.Generator().manual_seed(seed)
    f32 = torch.randn(7, 5, generator=g)
    return {
        "f64": ("F64", (3, 2), tensor_bytes(torch.randn(3, 2, generator=g, dtype=torch.float64))),
        "f32": ("F32", (7, 5), tensor_bytes(f32)),
        "f16": ("F16", (4, 3), tensor_bytes(torch.randn(4, 3, generator=g).half())),
        "bf16": ("BF16", (2, 3, 4), tensor_bytes(torch.randn(2, 3, 4, generator=g).bfloat16())),
        "i64": ("I64", (6,), tensor_bytes(torch.randint(-2**40, 2**40, (6,), generator=g))),
        "i32": ("I32", (2, 2), tensor_bytes(torch.randint(-9999, 9999, (2, 2), generator=g,
                                                          dtype=torch.int32))),
        "i16": ("I16", (3,), tensor_bytes(torch.tensor([-3, 0, 30000], dtype=torch.int16))),
        "i8": ("I8", (5,), tensor_bytes(torch.tensor([-128, -1, 0, 1, 127], dtype=torch.int8))),
        "u8": ("U8", (4, 4), bytes(range(16))),
        "bool": ("BOOL", (3,), bytes([1, 0, 1])),
        "u16": ("U16", (2,), bytes([0xff, 0xff, 0x01, 0x00])),
        "f8": ("F8_E4M3", (2, 2), bytes([0x38, 0xb8, 0x00, 0x7e])),
        "scalar": ("F32", (), tensor_bytes(torch.tensor(2.5))),
        "empty": ("F32", (0, 3), b""),
        "f4": ("F4", (2, 4), bytes([0x12, 0x34, 0x56, 0x78])),  # packed: 2 values a byte
    }


class StreamTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp(prefix="mx-py-stream-"))
        cls.model = cls.tmp / "model"
        cls.layout = {}
        for i, shard in enumerate(("model-00001-of-00002.safetensors",
                                   "model-00002-of-00002.safetensors")):
            tensors = {f"s{i}.{k}": v for k, v in sample_tensors(i).items()}
            for name, lay in write_safetensors(cls.model / shard, tensors).items():
                cls.layout[name] = (cls.model / shard, lay)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        self.env = CleanEnviron().__enter__()

    def tearDown(self):
        self.env.__exit__()

    def expected(self, name):
        path, lay = self.layout[name]
        if lay[0] == "F4":  # packed sub-byte values: the raw bytes, 1-D
            lay = (lay[0], (lay[3] - lay[2],), lay[2], lay[3])
        return plain_read(path, lay, _tensors.torch_dtype(lay[0]))

    def test_tensors_equal_a_plain_read_in_the_files_dtype_and_shape(self):
        got = dict(mx.stream(self.model))
        self.assertEqual(set(got), set(self.layout))
        for name, tensor in got.items():
            want = self.expected(name)
            with self.subTest(name=name):
                self.assertIsInstance(tensor, torch.Tensor)
                self.assertEqual(tensor.dtype, want.dtype)
                if self.layout[name][1][0] != "F4":  # packed types come 1-D
                    self.assertEqual(tuple(tensor.shape), self.layout[name][1][1])
                self.assertEqual(tuple(tensor.shape), tuple(want.shape))
                self.assertTrue(torch.equal(tensor, want))
        # The types torch has keep their own dtype; those it lacks come as same-width raw bits.
        self.assertEqual(got["s0.bf16"].dtype, torch.bfloat16)
        self.assertEqual(got["s0.f8"].dtype, getattr(torch, "float8_e4m3fn", torch.uint8))
        self.assertEqual((got["s0.f4"].dtype, tuple(got["s0.f4"].shape)), (torch.uint8, (4,)))

    def test_tensors_view_the_streamers_buffers(self):
        native = _mx.stream([str(self.model)])
        seen = 0
        for name, buffer, dtype, shape, _file in native:
            if buffer.nbytes == 0:
                continue
            tensor = _tensors.to_torch(buffer, dtype, shape)
            array = _tensors.to_numpy(buffer, dtype, shape)
            self.assertEqual(tensor.data_ptr(), buffer.address, name)
            self.assertEqual(array.__array_interface__["data"][0], buffer.address, name)
            self.assertFalse(array.flags.writeable)
            seen += 1
        self.assertGreater(seen, 20)

    def test_numpy_arrays(self):
        got = dict(mx.stream(str(self.model), framework="numpy"))
        self.assertEqual(got["s1.bf16"].dtype, numpy.uint16)  # numpy has no bfloat16
        self.assertEqual(got["s1.f8"].dtype, numpy.uint8)
        for name, array in got.items():
            want = self.expected(name)
            if want.dtype == torch.bfloat16:
                want = want.view(torch.int16)
            with self.subTest(name=name):
                self.assertIsInstance(array, numpy.ndarray)
                self.assertTrue(numpy.array_equal(array.view(want.numpy().dtype), want.numpy()))

    def test_tensors_outlive_the_stream(self):
        kept = list(mx.stream(self.model, memory_limit=-1))
        gc.collect()
        self.assertEqual(len(kept), len(self.layout))
        for name, tensor in kept:
            self.assertTrue(torch.equal(tensor, self.expected(name)), name)

    def test_abandoned_stream_stops(self):
        started = time.monotonic()
        it = mx.stream(self.model, queue=1)
        next(it)
        it.close()
        del it
        gc.collect()
        self.assertLess(time.monotonic() - started, 5)

    def test_errors_carry_the_library_message(self):
        with self.assertRaisesRegex(mx.MxError, "no such file or directory"):
            list(mx.stream(self.tmp / "absent"))
        with self.assertRaisesRegex(ValueError, "chunk_bytes"):
            mx.stream(self.model, chunk_bytes="lots")
        with self.assertRaisesRegex(ValueError, "framework"):
            mx.stream(self.model, framework="jax")
        bad = self.tmp / "bad"
        bad.mkdir(exist_ok=True)
        (bad / "model.safetensors").write_bytes(b"\xff" * 8 + b"{}")
        with self.assertRaises(mx.MxError):
            list(mx.stream(bad))
        self.assertTrue(issubclass(mx.MxError, RuntimeError))

    def test_streamer_environment_knobs(self):
        self.env.set(RUNAI_STREAMER_CONCURRENCY="0")
        with self.assertRaisesRegex(ValueError, "RUNAI_STREAMER_CONCURRENCY"):
            mx.stream(self.model)
        self.env.set(RUNAI_STREAMER_CONCURRENCY="2", RUNAI_STREAMER_CHUNK_BYTESIZE="4KiB")
        self.assertEqual(len(list(mx.stream(self.model))), len(self.layout))


# Run in a child process: streams the model with a memory limit, checks every tensor
# against the file and drops it; prints the peak RSS above the baseline.
RSS_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import torch, mx
    path, keep = sys.argv[1], sys.argv[2] == "keep"
    layout = json.load(open(sys.argv[3]))

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

    fds = {}
    kept = []
    # Reset the peak RSS ("5" > clear_refs), so VmHWM is this stream's peak alone.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = status("VmRSS")
    count = 0
    for name, tensor in mx.stream(path):
        file, dtype, start, end = layout[name]
        want = bytearray(end - start)
        fd = fds.setdefault(file, os.open(file, os.O_RDONLY))
        os.preadv(fd, [want], start)
        if not torch.equal(tensor, torch.frombuffer(want, dtype=tensor.dtype).reshape(tensor.shape)):
            sys.exit("tensor %s differs from the file" % name)
        del want
        if keep:
            kept.append(tensor)
        del tensor
        count += 1
    print(json.dumps({"peak": status("VmHWM") - base, "tensors": count}))
""")


class PeakMemoryTest(unittest.TestCase):
    """A 64 MiB model under a 16 MiB limit: the views cost no memory of their own, so the
    peak stays near the limit; keeping them all (the contrast run) costs the model's size,
    which is what a copy per tensor would cost too."""

    TENSOR = 4 * MIB
    COUNT = 16

    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp(prefix="mx-py-rss-"))
        layout = {}
        for shard in range(2):
            tensors = {}
            for i in range(cls.COUNT // 2):
                raw = os.urandom(cls.TENSOR)  # I32: random bits hold no NaN to spoil equality
                tensors[f"layer{shard}.{i}.weight"] = ("I32", (cls.TENSOR // 4 // 256, 256), raw)
            path = cls.tmp / "model" / f"model-{shard}.safetensors"
            for name, (dtype, shape, start, end) in write_safetensors(path, tensors).items():
                layout[name] = [str(path), dtype, start, end]
        cls.layout_file = cls.tmp / "layout.json"
        cls.layout_file.write_text(json.dumps(layout))

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def run_child(self, keep: bool, limit: str) -> dict:
        env = support.harness.base_env()
        env.update({"PYTHONPATH": os.pathsep.join(sys.path[:1]),
                    "RUNAI_STREAMER_MEMORY_LIMIT": limit})
        r = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(self.tmp / "model"),
                            "keep" if keep else "drop", str(self.layout_file)],
                           env=env, capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        out = json.loads(r.stdout.strip().splitlines()[-1])
        self.assertEqual(out["tensors"], self.COUNT)
        return out

    def test_a_wait_for_held_memory_answers_ctrl_c(self):
        # Keeping every view under a 16 MiB limit leaves the stream waiting for memory the
        # caller holds; SIGINT interrupts the wait and the process exits.
        script = textwrap.dedent("""
            import sys, mx
            kept = []
            print("streaming", flush=True)
            try:
                for pair in mx.stream(sys.argv[1]):
                    kept.append(pair)
            except KeyboardInterrupt:
                print("interrupted after", len(kept), flush=True)
        """)
        env = support.harness.base_env()
        env.update({"PYTHONPATH": os.pathsep.join(sys.path[:1]),
                    "RUNAI_STREAMER_MEMORY_LIMIT": "16MiB"})
        child = subprocess.Popen([sys.executable, "-c", script, str(self.tmp / "model")],
                                 env=env, stdout=subprocess.PIPE, text=True)
        try:
            self.assertEqual(child.stdout.readline().strip(), "streaming")
            time.sleep(1.5)
            self.assertIsNone(child.poll(), "the stream should be waiting for memory")
            child.send_signal(signal.SIGINT)
            out, _ = child.communicate(timeout=15)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        self.assertRegex(out, r"interrupted after [0-4]\b")
        self.assertEqual(child.returncode, 0)

    def test_close_from_another_thread_ends_a_waiting_next(self):
        # Two held tensors fill the 16 MiB limit: a next() on another thread waits for
        # memory until close() ends the stream under it.
        with CleanEnviron(RUNAI_STREAMER_MEMORY_LIMIT="16MiB"):
            it = mx.stream(self.tmp / "model")
            kept = [next(it), next(it)]
            outcome = []

            def waiter():
                try:
                    outcome.append(next(it))
                except StopIteration:
                    outcome.append("stopped")

            t = threading.Thread(target=waiter, daemon=True)
            t.start()
            t.join(0.5)
            self.assertTrue(t.is_alive(), outcome)  # waiting for memory
            it.close()
            t.join(10)
            self.assertEqual(outcome, ["stopped"])
            with self.assertRaises(StopIteration):
                next(it)
            del kept

    def test_peak_rss_stays_near_the_memory_limit(self):
        model = self.TENSOR * self.COUNT
        dropped = self.run_child(keep=False, limit="16MiB")
        # The limit (16 MiB of mapped file) plus one 4 MiB plain read for the comparison,
        # with room for the interpreter: far below the 64 MiB model.
        self.assertLess(dropped["peak"], 32 * MIB, dropped)
        kept = self.run_child(keep=True, limit="-1")
        self.assertGreater(kept["peak"], model - 8 * MIB, kept)


if __name__ == "__main__":
    unittest.main()
