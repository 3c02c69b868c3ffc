#!/usr/bin/env python3
"""Fetch benchmark: a worker installing a model from mx-server without shared storage.

Driven by bench/fetch.sh (see the header there for what is measured and the env knobs).
Reuses serve_bench.py's steps (model preparation, mx-server start, the StreamModelFiles
into-memory client) so the into-memory figure is the same measurement bench/serve.sh makes.
Every server listens on 127.0.0.1 only and is stopped by PID.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
sys.path.insert(0, str(REPO_ROOT / "tests" / "integration"))
sys.path.insert(0, str(HERE))

from bench_common import (RESULTS, _on_term, append_results, cpu_model, env_int, fmt,  # noqa: E402
                          make_log, remove_work, run_main, stop, targets_table)
from harness import MIB, base_env  # noqa: E402
from serve_bench import REPO_ID, prepare_model, start_server, stream_bench, warm  # noqa: E402

log = make_log("fetch.sh")
# Chunk sizes tried for the default (--transfer-chunk-size), into tmpfs.
CHUNKS = (262144, 1048576, 4194304)


def drop_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    subprocess.run(["sync"], check=False)


def timed(cmd: list, timeout: float) -> tuple[float, subprocess.CompletedProcess]:
    """Wall seconds and the result; r.cpu is the command's user+sys CPU seconds."""
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    r = subprocess.run([str(c) for c in cmd], env=base_env(), capture_output=True, text=True,
                       timeout=timeout)
    wall = time.monotonic() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    r.cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return wall, r


def mx_install(mx_bin: str, port: int, dest: Path, model_bytes: int, timeout: float,
               chunk: int | None = None) -> dict:
    """`mx model download --no-shared-storage` into a fresh cache; checks the report."""
    extra = ["--transfer-chunk-size", str(chunk)] if chunk else []
    wall, r = timed([mx_bin, "model", "download", REPO_ID, "-e", f"127.0.0.1:{port}",
                     "--cache-path", dest, "--no-shared-storage", "-s", "server-only",
                     "-f", "json", "-q", *extra], timeout)
    res = {"rc": r.returncode, "wall": wall, "cpu": r.cpu, "stderr": r.stderr.strip()[-300:]}
    try:
        rep = json.loads(r.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        return res
    ok = (r.returncode == 0 and rep.get("strategy") == "stream"
          and rep.get("bytes_streamed") == model_bytes)
    res.update(ok=ok, mbps=model_bytes / wall / 1e6)
    return res


def mx_install_parallel(mx_bin: str, port: int, dests: list[Path], model_bytes: int,
                        timeout: float) -> dict:
    t0 = time.monotonic()
    procs = [subprocess.Popen([mx_bin, "model", "download", REPO_ID, "-e", f"127.0.0.1:{port}",
                               "--cache-path", str(d), "--no-shared-storage", "-s", "server-only",
                               "-f", "json", "-q"], env=base_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for d in dests]
    ok, times = True, []
    for p in procs:
        out, _ = p.communicate(timeout=timeout)
        times.append(time.monotonic() - t0)
        try:
            rep = json.loads(out.strip().splitlines()[-1])
            ok = ok and p.returncode == 0 and rep.get("bytes_streamed") == model_bytes
        except (json.JSONDecodeError, IndexError):
            ok = False
    wall = max(times)
    return {"ok": ok, "wall": wall, "mbps": len(dests) * model_bytes / wall / 1e6,
            "per_worker": [round(t, 2) for t in times]}


def modelcache_install(port: int, dest: Path, model_bytes: int, timeout: float) -> dict:
    wall, r = timed(["/usr/bin/python3", HERE / "modelcache_client.py", f"127.0.0.1:{port}",
                     REPO_ID, dest], timeout)
    res = {"rc": r.returncode, "wall": wall, "cpu": r.cpu, "stderr": r.stderr.strip()[-300:]}
    try:
        rep = json.loads(r.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        return res
    res.update(ok=r.returncode == 0 and rep.get("bytes") == model_bytes,
               mbps=model_bytes / wall / 1e6)
    return res


def disk_write(work: Path, nbytes: int) -> float:
    """MB/s of dd writing nbytes to `work`'s file system with fdatasync: the disk's limit."""
    target = work / "dd.bin"
    t0 = time.monotonic()
    subprocess.run(["dd", "if=/dev/zero", f"of={target}", "bs=4M", f"count={nbytes // (4 * MIB)}",
                    "conv=fdatasync"], capture_output=True, check=True)
    secs = time.monotonic() - t0
    target.unlink()
    return (nbytes // (4 * MIB)) * 4 * MIB / secs / 1e6


def sha256_rate() -> float:
    """MB/s of one core hashing with sha256 (hashlib: OpenSSL, as mx uses): every installed
    byte must be hashed, so this bounds a verified install on a machine this size."""
    import hashlib
    buf = os.urandom(64 * MIB)
    t0 = time.monotonic()
    h = hashlib.sha256()
    for _ in range(8):
        h.update(buf)
    return 8 * len(buf) / (time.monotonic() - t0) / 1e6


def best(rows: list[dict]) -> dict:
    good = [r for r in rows if r.get("ok")]
    return max(good, key=lambda r: r["mbps"]) if good else (rows[-1] if rows else {})


def main() -> int:
    signal.signal(signal.SIGTERM, _on_term)
    size_mib = env_int("BENCH_SIZE_MIB", 2048)
    nruns = max(1, env_int("BENCH_RUNS", 2))
    workers = max(2, env_int("BENCH_WORKERS", 4))
    mx_bin = os.environ.get("MX_BIN", str(REPO_ROOT / "build/src/cli/mx"))
    server_bin = os.environ.get("MX_SERVER_BIN", str(REPO_ROOT / "build/src/server/mx-server"))
    bench_bin = os.environ.get("MX_STREAM_BENCH_BIN", str(REPO_ROOT / "build/bench/mx_stream_bench"))
    info = {"nproc": os.cpu_count(), "kernel": platform.release(), "cpu": cpu_model(),
            "load": " ".join(f"{x:.2f}" for x in os.getloadavg()), "runs": nruns}
    base = HERE / "work"
    made_base = not base.exists()
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="fetch-", dir=base))
    server = None
    try:
        log(f"work dir {work}; model {size_mib} MiB; {nruns} runs each")
        cache, model_bytes, nfiles = prepare_model(work, size_mib, mx_bin)
        warm(cache)
        timeout = 120 + 4 * model_bytes / 20e6
        disk = max(disk_write(work, min(model_bytes, 1 << 30)) for _ in range(nruns))
        log(f"disk (dd, fdatasync): {disk:.1f} MB/s")
        sha = max(sha256_rate() for _ in range(2))
        log(f"sha256, one core: {sha:.1f} MB/s")
        # The model is in the server's cache; offline, the server resolves main from it.
        server, port = start_server(server_bin, cache, work, {"HF_HUB_OFFLINE": "1"})
        mem, mx, mc, par, mx_shm, mc_shm = [], [], [], [], [], []
        by_chunk: dict[int, list] = {}
        # The same installs into tmpfs (BENCH_TMPFS=0 skips them): fsync costs nothing there,
        # so they show the software's own cost where the disk would hide it.
        shm = None
        if os.environ.get("BENCH_TMPFS", "1") != "0" and Path("/dev/shm").is_dir():
            shm = Path(tempfile.mkdtemp(prefix="mx-fetch-bench-", dir="/dev/shm"))
        for i in range(nruns):
            r = stream_bench(bench_bin, port, 1, 1 << 20, server.pid, timeout)
            r["ok"] = r["rc"] == 0 and r.get("bytes") == model_bytes
            mem.append(r)
            log(f"run {i + 1} into memory: {fmt(r.get('mbps'))} MB/s")
            d = work / f"mx-{i}"
            r = mx_install(mx_bin, port, d, model_bytes, timeout)
            mx.append(r)
            log(f"run {i + 1} mx install: {fmt(r.get('mbps'))} MB/s {r['wall']:.2f} s ok {r.get('ok')}"
                + (f" stderr {r['stderr']}" if not r.get("ok") else ""))
            drop_dir(d)
            d = work / f"mc-{i}" / "model"
            d.parent.mkdir()
            r = modelcache_install(port, d, model_bytes, timeout)
            mc.append(r)
            log(f"run {i + 1} ModelCacheClient-style: {fmt(r.get('mbps'))} MB/s {r['wall']:.2f} s"
                + (f" stderr {r['stderr']}" if not r.get("ok") else ""))
            drop_dir(d.parent)
            if shm:
                d = shm / f"mx-{i}"
                r = mx_install(mx_bin, port, d, model_bytes, timeout)
                mx_shm.append(r)
                log(f"run {i + 1} mx install into tmpfs: {fmt(r.get('mbps'))} MB/s "
                    f"{r['wall']:.2f} s ok {r.get('ok')}")
                shutil.rmtree(d, ignore_errors=True)
                d = shm / f"mc-{i}" / "model"
                d.parent.mkdir()
                r = modelcache_install(port, d, model_bytes, timeout)
                mc_shm.append(r)
                log(f"run {i + 1} ModelCacheClient-style into tmpfs: {fmt(r.get('mbps'))} MB/s "
                    f"{r['wall']:.2f} s")
                shutil.rmtree(d.parent, ignore_errors=True)
            for chunk in CHUNKS if shm else ():
                d = shm / f"chunk-{i}-{chunk}"
                r = mx_install(mx_bin, port, d, model_bytes, timeout, chunk)
                by_chunk.setdefault(chunk, []).append(r)
                log(f"run {i + 1} mx install into tmpfs, chunk {chunk}: {fmt(r.get('mbps'))} MB/s")
                shutil.rmtree(d, ignore_errors=True)
            ds = [work / f"par-{i}-{k}" for k in range(workers)]
            r = mx_install_parallel(mx_bin, port, ds, model_bytes, timeout)
            par.append(r)
            log(f"run {i + 1} {workers} mx installs at once: {fmt(r.get('mbps'))} MB/s aggregate, "
                f"{r['wall']:.2f} s ok {r['ok']}")
            for d in ds:
                drop_dir(d)
        stop(server)
        server = None
        if shm:
            shutil.rmtree(shm, ignore_errors=True)
        bm, bx, bc, bp = best(mem), best(mx), best(mc), best(par)
        bxs, bcs = best(mx_shm), best(mc_shm)
        gib = model_bytes / (1 << 30)
        lines = [f"## Worker install without shared storage (bench/fetch.sh), "
                 f"{time.strftime('%a %b %d %H:%M:%S UTC %Y', time.gmtime())}, nproc {info['nproc']}",
                 "",
                 f"Model: {REPO_ID}, {nfiles} files, {model_bytes} bytes ({gib:.2f} GiB); mx-server on "
                 f"127.0.0.1 with the model in its (warm) cache; installs into fresh directories on "
                 f"the same disk, removed and `sync`ed after each run. Best of {nruns} runs. CPU "
                 f"{info['cpu']}, kernel {info['kernel']}, load at start {info['load']}.",
                 "",
                 "| what | MB/s | seconds | vs into memory | client CPU s | all runs MB/s |",
                 "|---|---:|---:|---:|---:|---|"]

        def row(name, b, rows):
            secs = b.get("seconds", b.get("wall"))
            ratio = b["mbps"] / bm["mbps"] if b.get("mbps") and bm.get("mbps") else None
            cpu = b.get("cpu", b.get("client_cpu"))
            return (f"| {name} | {fmt(b.get('mbps'))} | {fmt(secs, '.2f')} | {fmt(ratio, '.2f')}x | "
                    f"{fmt(cpu, '.2f')} | "
                    + ", ".join(fmt(r.get("mbps")) for r in rows) + " |")
        lines.append(row("StreamModelFiles into memory, 1 client, 1 MiB chunks (serve.sh's client)",
                         bm, mem))
        lines.append(row("mx model download --no-shared-storage (sha256/sha1 verified, fsynced, HF "
                         "cache)", bx, mx))
        lines.append(row("ModelCacheClient-style grpcio client (1 call, 1 MiB, temp dir + rename, "
                         "no hash, no fsync)", bc, mc))
        lines.append(row(f"{workers} mx installs at once (aggregate)", bp, par))
        if shm:
            lines.append(row("mx model download --no-shared-storage into tmpfs (/dev/shm)", bxs,
                             mx_shm))
            lines.append(row("ModelCacheClient-style grpcio client into tmpfs", bcs, mc_shm))
        for chunk, rows in sorted(by_chunk.items()):
            lines.append(row(f"mx install into tmpfs, --transfer-chunk-size {chunk // 1024} KiB",
                             best(rows), rows))
        lines.append(f"| disk: dd 1 GiB with fdatasync (the disk's own limit) | {disk:.1f} | | "
                     f"{fmt(disk / bm['mbps'] if bm.get('mbps') else None, '.2f')}x | | |")
        lines.append(f"| sha256 on one core (hashlib / OpenSSL, what mx hashes with) | {sha:.1f} | | "
                     f"{fmt(sha / bm['mbps'] if bm.get('mbps') else None, '.2f')}x | | |")
        lines.append("")
        if bp:
            lines.append(f"{workers} installs at once finished at {bp.get('per_worker')} s.")
            lines.append("")
        checks = []
        if bx.get("mbps") and bm.get("mbps"):
            ratio = bx["mbps"] / bm["mbps"]
            checks.append(("mx install >= 0.8x StreamModelFiles into memory",
                           f"{bx['mbps']:.1f} vs {bm['mbps']:.1f} MB/s ({ratio:.2f}x); disk limit "
                           f"{disk:.1f} MB/s", ratio >= 0.8))
        else:
            checks.append(("mx install >= 0.8x StreamModelFiles into memory", "no result", False))
        if bx.get("mbps") and bc.get("mbps"):
            ratio = bx["mbps"] / bc["mbps"]
            checks.append(("mx install >= 1.5x the ModelCacheClient-style client",
                           f"{bx['wall']:.2f} s vs {bc['wall']:.2f} s ({ratio:.2f}x)", ratio >= 1.5))
        else:
            checks.append(("mx install >= 1.5x the ModelCacheClient-style client", "no result", False))
        for tag, x, c in (("tmpfs", bxs, bcs),) if shm else ():
            if x.get("mbps") and bm.get("mbps") and c.get("mbps"):
                checks.append((f"({tag}) mx install >= 0.8x StreamModelFiles into memory",
                               f"{x['mbps']:.1f} vs {bm['mbps']:.1f} MB/s "
                               f"({x['mbps'] / bm['mbps']:.2f}x)", x["mbps"] >= 0.8 * bm["mbps"]))
                checks.append((f"({tag}) mx install >= 1.5x the ModelCacheClient-style client",
                               f"{x['wall']:.2f} s vs {c['wall']:.2f} s "
                               f"({c['wall'] / x['wall']:.2f}x)", c["wall"] >= 1.5 * x["wall"]))
        checks.append((f"{workers} installs at once all complete and verified",
                       f"{'yes' if bp.get('ok') else 'no'}", bool(bp.get("ok"))))
        lines += targets_table(checks)
        text = "\n".join(lines) + "\n"
        print()
        print(text, end="")
        append_results(text, log, RESULTS)
        return 0 if all(ok for _, _, ok in checks) else 1
    finally:
        stop(server)
        remove_work(work, base, made_base)


if __name__ == "__main__":
    run_main(main, "fetch.sh")
