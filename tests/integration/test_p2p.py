"""mx p2p: a worker serves a model from memory, targets pull it byte for byte (embedded and
Redis registries), identity mismatches are refused with the first difference named, a source
killed mid-transfer is replaced by a second source (or the loader chain's next step), stale
sources leave ListSources, and a swarm of receivers survives a peer killed mid-rollout.
Real mx-server, redis-server and mx processes on 127.0.0.x, stopped by PID."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
import unittest
from pathlib import Path

from harness import _stop_process, base_env, mx_binary, run
from server_harness import MxServer, RedisServer
from storage_peers import write_model

MODEL = "acme/p2p-model"


class Worker:
    """One `mx p2p serve` (or `pull --serve`) process; start() waits for its JSON line."""

    def __init__(self, args: list, env: dict):
        full = base_env()
        full.update({k: str(v) for k, v in env.items()})
        self.proc = subprocess.Popen([mx_binary(), "p2p", *map(str, args), "--json"], env=full,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        self.info = None

    def wait_line(self, timeout=30) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited {self.proc.returncode}: {self.proc.stderr.read()}")
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                line = self.proc.stdout.readline()
                if line.strip():
                    self.info = json.loads(line)
                    return self.info
        raise AssertionError("worker printed nothing")

    def kill9(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self):
        _stop_process(self.proc)
        for f in (self.proc.stdout, self.proc.stderr):
            f.close()


class P2pCase(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp(prefix="mx-test-p2p-"))
        cls.model_dir = cls.tmp / "model"
        # 3 shards of ~8 MiB: big enough to be mid-transfer under a rate cap.
        write_model(cls.model_dir, shards=3, big=8 << 20)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        self.procs = []
        self.servers = []

    def tearDown(self):
        for p in self.procs:
            p.stop()
        for s in self.servers:
            s.stop()

    def server(self, env=None) -> MxServer:
        s = MxServer(self.tmp, tempfile.mkdtemp(prefix="cache-", dir=self.tmp), env=env or {})
        self.servers.append(s)
        return s.start()

    def serve(self, server, host, *extra, env=None) -> Worker:
        w = Worker(["serve", self.model_dir, "--model", MODEL, "--dtype", "bfloat16", "--host", host,
                    "--worker-port", "0", *extra],
                   {"MODEL_EXPRESS_URL": server.address, **(env or {})})
        self.procs.append(w)
        w.wait_line()
        return w

    def mx(self, server, *args, timeout=60, env=None):
        e = {"MODEL_EXPRESS_URL": server.address} if server else {"MODEL_EXPRESS_URL": None}
        e.update(env or {})
        return run([mx_binary(), *args], env=e, timeout=timeout)

    def pull(self, server, *extra, ok=True, env=None):
        r = self.mx(server, "p2p", "pull", "--model", MODEL, "--host", "127.0.0.9",
                    "--verify-against", self.model_dir, "--json", *extra, env=env)
        if ok:
            self.assertEqual(r.returncode, 0, r.stderr + r.stdout)
            return json.loads(r.stdout.strip().splitlines()[-1]), r
        return None, r

    def sources(self, server, *extra):
        r = self.mx(server, "p2p", "sources", "--model", MODEL, "--json", *extra)
        self.assertEqual(r.returncode, 0, r.stderr)
        return json.loads(r.stdout)

    # --- the cases ----------------------------------------------------------------------

    def check_round_trip(self, server):
        src = self.serve(server, "127.0.0.2")
        listed = self.sources(server, "--ready")
        self.assertEqual(len(listed), 1)
        entry = listed[0]
        for key in ("mx_source_id", "worker_id", "rank", "status", "endpoint"):
            self.assertIn(key, entry)
        self.assertEqual(entry["status"], "READY")
        self.assertEqual(entry["mx_source_id"], src.info["mx_source_id"])
        self.assertTrue(entry["endpoint"].startswith("127.0.0.2:"), entry)

        # Byte for byte: --verify-against compares every tensor with the files.
        rep, _ = self.pull(server)
        self.assertTrue(rep["verified"])
        self.assertEqual(rep["tensors"], src.info["tensors"])
        self.assertEqual(rep["bytes"], src.info["bytes"])
        self.assertEqual(rep["sources"], [src.info["worker_id"]])
        # A source on this host is read in place (cma) by default; tcp and UCX can be forced,
        # and UCX_TLS picks UCX's own transport.
        ucx = "UCX yes" in run([mx_binary(), "--version"]).stdout
        self.assertEqual(rep["transport"], "cma")
        rep, _ = self.pull(server, "--selector", "rendezvous", env={"MX_P2P_TRANSPORT": "tcp"})
        self.assertEqual((rep["transport"], rep["verified"]), ("tcp", True))
        if ucx:
            rep, _ = self.pull(server, env={"MX_P2P_TRANSPORT": "ucx", "UCX_TLS": "tcp"})
            self.assertEqual((rep["transport"], rep["verified"]), ("ucx", True))

        # Identity mismatch: refused, naming the first difference.
        _, r = self.pull(server, "--dtype", "float16", ok=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("dtype is 'bfloat16', wanted 'float16'", r.stderr)
        _, r = self.pull(server, "--tp-size", "2", ok=False)
        self.assertIn("tensor_parallel_size is 1, wanted 2", r.stderr)

        # Clean exit: STALE at once, gone from the READY list.
        src.proc.send_signal(signal.SIGTERM)
        src.proc.wait(10)
        self.assertEqual(src.proc.returncode, 0)
        self.assertEqual([s["status"] for s in self.sources(server)], ["STALE"])
        self.assertEqual(self.sources(server, "--ready"), [])
        _, r = self.pull(server, ok=False)
        self.assertIn("no READY p2p source", r.stderr)

    def test_token_guards_the_data_port_and_never_shows(self):
        server = self.server()
        token = "tok-" + os.urandom(8).hex()
        src = self.serve(server, "127.0.0.2", env={"MX_P2P_TOKEN": token})
        outputs = []
        for transport in ("cma", "tcp"):
            env = {"MX_P2P_TRANSPORT": transport}
            _, r = self.pull(server, ok=False, env=env)
            outputs.append(r.stdout + r.stderr)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("requires a token (set MX_P2P_TOKEN)", r.stderr)
            _, r = self.pull(server, ok=False, env={**env, "MX_P2P_TOKEN": token + "x"})
            outputs.append(r.stdout + r.stderr)
            self.assertIn("refused our token", r.stderr)
            rep, r = self.pull(server, env={**env, "MX_P2P_TOKEN": token, "MX_LOG_LEVEL": "debug"})
            outputs.append(r.stdout + r.stderr)
            self.assertEqual((rep["transport"], rep["verified"]), (transport, True))
        src.proc.send_signal(signal.SIGTERM)
        src.proc.wait(10)
        outputs.append(src.proc.stderr.read())
        for text in outputs:
            self.assertNotIn(token, text)

    def test_round_trip_embedded_registry(self):
        self.check_round_trip(self.server())

    def test_round_trip_redis_registry(self):
        redis = RedisServer(self.tmp).start()
        try:
            self.check_round_trip(self.server({"MX_METADATA_BACKEND": "redis", "REDIS_URL": redis.url}))
        finally:
            redis.stop()

    def test_source_killed_mid_transfer_second_source_completes(self):
        s = self.server()
        # Each source sends at most 8 MiB/s: the ~25 MiB pull takes about 1.5 s.
        a = self.serve(s, "127.0.0.2", "--max-rate", "8MiB")
        b = self.serve(s, "127.0.0.3", "--max-rate", "8MiB")
        full = base_env()
        full["MODEL_EXPRESS_URL"] = s.address
        pull = subprocess.Popen([mx_binary(), "p2p", "pull", "--model", MODEL, "--host", "127.0.0.9",
                                 "--verify-against", str(self.model_dir), "--json", "--chunk-size", "256KiB"],
                                env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(0.6)
        a.kill9()
        out, err = pull.communicate(timeout=60)
        self.assertEqual(pull.returncode, 0, err)
        rep = json.loads(out.strip().splitlines()[-1])
        self.assertTrue(rep["verified"])
        self.assertIn(b.info["worker_id"], rep["sources"])
        self.assertEqual(len(rep["failed_sources"]), 1, rep)
        self.assertTrue(rep["failed_sources"][0].startswith(a.info["worker_id"]), rep)

    def test_stale_source_leaves_list_after_timeout(self):
        s = self.server({"MX_HEARTBEAT_TIMEOUT_SECS": "2"})
        src = self.serve(s, "127.0.0.2", env={"MX_HEARTBEAT_INTERVAL_SECS": "1"})
        time.sleep(2.5)  # heartbeats keep it READY past the timeout
        self.assertEqual(len(self.sources(s, "--ready")), 1)
        src.kill9()  # no STALE from a killed process: only the timeout removes it
        deadline = time.monotonic() + 10
        while self.sources(s, "--ready") and time.monotonic() < deadline:
            time.sleep(0.3)
        self.assertEqual(self.sources(s, "--ready"), [])

    def test_load_chain_p2p_first_then_next_step(self):
        # Reference: the uri step alone (no server configured: p2p is skipped fast).
        t0 = time.monotonic()
        r = self.mx(None, "load", MODEL, "--uri", self.model_dir, "--digest", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        ref = json.loads(r.stdout.strip().splitlines()[-1])
        self.assertEqual(ref["served_by"], "uri")
        p2p_step = ref["steps"][0]
        self.assertEqual((p2p_step["strategy"], p2p_step["outcome"]), ("p2p", "skipped"))
        self.assertIn("no server configured", p2p_step["reason"])
        self.assertLess(p2p_step["seconds"], 0.5)

        # The server's own step fails fast: its hub is a closed loopback port.
        s = self.server({"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "1"})
        # A server without sources: skipped with that reason.
        r = self.mx(s, "load", MODEL, "--uri", self.model_dir, "--json")
        rep = json.loads(r.stdout.strip().splitlines()[-1])
        self.assertEqual(rep["steps"][0]["outcome"], "skipped")
        self.assertIn("no READY p2p source", rep["steps"][0]["reason"])

        src = self.serve(s, "127.0.0.2", "--max-rate", "8MiB")
        r = self.mx(s, "load", MODEL, "--digest", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        rep = json.loads(r.stdout.strip().splitlines()[-1])
        self.assertEqual(rep["served_by"], "p2p")
        self.assertEqual(rep["digest"], ref["digest"])

        # The only source dies mid-transfer: the chain's next step (MX_MODEL_URI) completes.
        full = base_env()
        full.update({"MODEL_EXPRESS_URL": s.address, "MX_MODEL_URI": str(self.model_dir)})
        load = subprocess.Popen([mx_binary(), "load", MODEL, "--digest", "--json"], env=full,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(0.6)
        src.kill9()
        out, err = load.communicate(timeout=60)
        self.assertEqual(load.returncode, 0, err)
        rep = json.loads(out.strip().splitlines()[-1])
        self.assertEqual(rep["steps"][0]["outcome"], "failed", rep)
        self.assertEqual(rep["served_by"], "uri")
        self.assertEqual(rep["digest"], ref["digest"])

    def test_swarm_of_four_with_a_peer_killed_mid_rollout(self):
        s = self.server()
        seed = self.serve(s, "127.0.0.2", "--max-rate", "8MiB")
        receivers = []
        for i in range(4):
            w = Worker(["pull", "--model", MODEL, "--host", f"127.0.0.{11 + i}", "--worker-port", "0",
                        "--serve", "--max-rate", "8MiB", "--chunk-size", "256KiB",
                        "--verify-against", self.model_dir],
                       {"MODEL_EXPRESS_URL": s.address})
            self.procs.append(w)
            receivers.append(w)
        time.sleep(1.2)  # past the settle window: every receiver is pulling
        receivers[1].kill9()
        reports = [w.wait_line(timeout=45) for i, w in enumerate(receivers) if i != 1]
        for rep in reports:
            self.assertTrue(rep["success"], rep)
            self.assertTrue(rep["verified"], rep)
        # Receivers served each other: the seed was not the only sender.
        from_peers = [src for rep in reports for src in rep["sources"] if src != seed.info["worker_id"]]
        self.assertTrue(from_peers, reports)
        if os.environ.get("MX_P2P_TEST_VERBOSE"):
            print(json.dumps(reports, indent=1))
        # Every survivor ends READY (a source for the next ones); the killed one is not.
        statuses = {e["worker_id"]: e["status"] for e in self.sources(s)}
        for rep in reports:
            self.assertEqual(statuses.get(rep["worker_id"]), "READY", statuses)

    def test_artifact_directory_round_trips_exactly(self):
        s = self.server()
        cache = self.tmp / "vllm-cache"
        files = {"torch_compile_cache/abc/rank_0_0/model.py": os.urandom(70000),
                 "torch_compile_cache/abc/rank_0_0/cache_key": b"k" * 33,
                 "triton/xyz/kernel.cubin": os.urandom(5 << 20),
                 "empty.lock": b""}
        for rel, data in files.items():
            (cache / rel).parent.mkdir(parents=True, exist_ok=True)
            (cache / rel).write_bytes(data)
        w = Worker(["serve-dir", cache, "--model", MODEL, "--kind", "torch-compile",
                    "--engine-version", "vllm-0.11.0", "--gpu-arch", "sm_90", "--host", "127.0.0.4",
                    "--worker-port", "0"], {"MODEL_EXPRESS_URL": s.address})
        self.procs.append(w)
        info = w.wait_line()
        self.assertEqual(info["files"], len(files))
        dest = self.tmp / "restored"
        dest.mkdir()
        (dest / "stale-file").write_text("replaced")
        r = self.mx(s, "p2p", "pull-dir", dest, "--model", MODEL, "--kind", "torch-compile",
                    "--gpu-arch", "SM_90", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        rep = json.loads(r.stdout.strip().splitlines()[-1])
        self.assertEqual((rep["files"], rep["verified"]), (len(files), True))
        got = {str(p.relative_to(dest)): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
        self.assertEqual(got, files)
        self.assertEqual([p.name for p in self.tmp.iterdir() if ".mx-" in p.name], [])
        # Another kind, engine or architecture is refused, naming the difference.
        r = self.mx(s, "p2p", "pull-dir", self.tmp / "x", "--model", MODEL, "--kind", "triton")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("source type is 3, wanted 4", r.stderr)
        r = self.mx(s, "p2p", "pull-dir", self.tmp / "x", "--model", MODEL, "--kind", "torch-compile",
                    "--gpu-arch", "sm_100")
        self.assertIn("gpu_arch is 'sm_90', wanted 'sm_100'", r.stderr)
        self.assertFalse((self.tmp / "x").exists())


if __name__ == "__main__":
    unittest.main()
