#!/usr/bin/env python3
"""Stream benchmark: `mx stream` vs cat (page cache), fio (O_DIRECT) and
`aws s3 cp` (s3rver), on the same synthetic safetensors model.

Driven by bench/stream.sh (see the header there for what is measured and the
env knobs). Python 3 stdlib only; it reuses tests/integration/storage_peers.py
(write_safetensors, S3rver) and harness.py (base_env), plus bench_common.py.
s3rver listens on 127.0.0.1 only and is stopped by PID.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
sys.path.insert(0, str(REPO_ROOT / "tests" / "integration"))

from bench_common import (remove_work, run_main, RESULTS, _on_term, append_results, cpu_model,  # noqa: E402
                          env_int, fmt, machine_busy_s, make_log, proc_cpu)
from harness import MIB, base_env  # noqa: E402
from storage_peers import S3rver, write_safetensors  # noqa: E402

NSHARDS = 8
NTENSORS = 4
BS = 8 * MIB  # fio block size = mx --chunk-size in (b)
FIO_JOBS_PER_SHARD = 2  # 8 shards x 2 = 16 jobs, like mx's default concurrency 16
BUCKET = "models"
PREFIX = "bench/model"
TARGETS = {"a": 0.9, "b": 0.9, "c": 1.5}

log = make_log("stream.sh")


# --------------------------------------------------------------------------
# Measurement helpers
# --------------------------------------------------------------------------


def timed(cmd: list, work: Path, tag: str, env: dict | None = None, timeout: float = 900,
          watch_pid: int | None = None, stdout_null: bool = False) -> dict:
    """Run cmd with stdout (or /dev/null) and stderr to files; wall time
    fork->exit, CPU and minor faults of the child (and its reaped children)
    from wait4, the machine's busy CPU over the interval, and watch_pid's CPU
    (s3rver) over the interval. (wait4's ru_maxrss is not used: Linux carries
    the forking Python's high-water mark over into the child.)"""
    out_p, err_p = Path(os.devnull) if stdout_null else work / f"{tag}.out", work / f"{tag}.err"
    full = base_env()
    full.update(env or {})
    with open(out_p, "wb") as out, open(err_p, "wb") as err:
        busy0 = machine_busy_s()[0]
        w0 = proc_cpu(watch_pid) if watch_pid else 0.0
        t0 = time.monotonic()
        p = subprocess.Popen([str(c) for c in cmd], stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                             env=full, start_new_session=True)
        killed = []

        def _kill():
            killed.append(True)
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass

        timer = threading.Timer(timeout, _kill)
        timer.start()
        try:
            _, status, ru = os.wait4(p.pid, 0)
        finally:
            timer.cancel()
        wall = time.monotonic() - t0
        w1 = proc_cpu(watch_pid) if watch_pid else 0.0
        busy1 = machine_busy_s()[0]
    p.returncode = os.waitstatus_to_exitcode(status)
    ncpu = os.cpu_count() or 1
    return {"rc": p.returncode if not killed else "timeout", "wall": wall,
            "cpu": ru.ru_utime + ru.ru_stime, "sys": ru.ru_stime, "minflt": ru.ru_minflt,
            "machine_pct": 100.0 * (busy1 - busy0) / (wall * ncpu) if wall > 0 else 0.0,
            "watch_cpu": w1 - w0, "stdout": "" if stdout_null else out_p.read_text(errors="replace"),
            "stderr": err_p.read_text(errors="replace")[-2000:]}


def mx_json(r: dict) -> dict | None:
    lines = [ln for ln in r["stdout"].strip().splitlines() if ln.strip()]
    if not lines:
        return None
    try:
        return json.loads(lines[-1])
    except ValueError:
        return None


# --------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------


def fs_type(path: Path) -> str:
    r = subprocess.run(["df", "--output=fstype", str(path)], capture_output=True, text=True)
    lines = r.stdout.split()
    return lines[-1] if r.returncode == 0 and len(lines) >= 2 else "?"


def make_model(model: Path, size_mib: int) -> tuple[list[Path], int, int]:
    """8 shards x 4 BF16 tensors. Returns (shards, file bytes, tensor bytes)."""
    model.mkdir(parents=True)
    tensor_bytes = max(2, (size_mib * MIB // (NSHARDS * NTENSORS)) // 2 * 2)
    shards = []
    for i in range(NSHARDS):
        p = model / f"model-{i + 1:05d}-of-{NSHARDS:05d}.safetensors"
        write_safetensors(p, {f"layers.{i}.w{j}": ("BF16", (tensor_bytes // 2,)) for j in range(NTENSORS)},
                          seed=1000 + i)
        shards.append(p)
    return shards, sum(p.stat().st_size for p in shards), tensor_bytes * NSHARDS * NTENSORS


def fio_cmd(shards: list[Path], per_shard: int) -> tuple[list[str], int]:
    """fio over the shards: per_shard jobs per shard, each a contiguous run of
    whole 8 MiB blocks. Returns (argv, bytes it will read)."""
    cmd = ["fio", "--output-format=json", "--direct=1", "--rw=read", f"--bs={BS}", "--ioengine=psync",
           "--group_reporting", "--invalidate=1"]
    total = 0
    for i, p in enumerate(shards):
        blocks = p.stat().st_size // BS
        k = max(1, min(per_shard, blocks))
        start = 0
        for j in range(k):
            n = blocks // k + (1 if j < blocks % k else 0)
            if n == 0:
                continue
            cmd += [f"--name=s{i}j{j}", f"--filename={p}", f"--offset={start * BS}", f"--size={n * BS}"]
            total += n * BS
            start += n
    return cmd, total


def fio_result(r: dict) -> dict:
    s = r["stdout"]
    try:
        j = json.loads(s[s.index("{"):])
        rd = j["jobs"][0]["read"]
        return {"io_bytes": int(rd["io_bytes"]), "fio_mbps": rd["bw_bytes"] / 1e6, "fio_runtime_ms": rd["runtime"]}
    except (ValueError, KeyError, IndexError) as e:
        return {"parse_error": str(e)}


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def row_ok(r: dict) -> bool:
    return r["rc"] == 0 and r.get("bytes", 0) > 0 and r.get("valid", True)


def wall_mbps(r: dict) -> float:
    return r["bytes"] / r["wall"] / 1e6


def self_mbps(r: dict) -> float | None:
    """The tool's own throughput: mx's gb_per_second, fio's read bw."""
    if "mx_gbps" in r:
        return r["mx_gbps"] * 1000
    return r.get("fio_mbps")


def best(runs: list[dict], basis: str = "wall") -> dict | None:
    key = wall_mbps if basis == "wall" else (lambda r: self_mbps(r) or 0.0)
    good = [r for r in runs if row_ok(r)]
    return max(good, key=key) if good else None


SCEN = {"a": "a) page cache", "b": "b) O_DIRECT cold", "c": "c) S3 (s3rver)"}
MX = {"a": "mx stream", "b": "mx stream --direct", "c": "mx stream s3://"}
PEER = {"a": "cat", "b": "fio 16 jobs", "c": "aws s3 cp"}
# Ratio basis per target: wall clock where the peer reports nothing itself (cat,
# aws); for fio its own read bw vs mx's own gb_per_second (both exclude process
# start-up, which for fio's 16 forked jobs is ~0.3-0.4 s).
BASIS = {"a": "wall", "b": "self", "c": "wall"}
REF_READ = "read() into fresh mmap, 1 thread (reference)"


def report(info: dict, runs: dict, s3cpu: dict) -> tuple[str, bool]:
    """runs: (scenario, tool) -> list of run dicts."""
    L = [f"## mx stream vs cat / fio / aws s3 cp (bench/stream.sh), {info['date']}", ""]
    L.append(f"Machine: nproc {info['nproc']}, kernel {info['kernel']}, CPU {info['cpu']}; "
             f"load average at start {info['load']}; bench/work on {info['fstype']}.")
    L.append("")
    L.append(f"Model: {NSHARDS} safetensors shards x {NTENSORS} BF16 tensors of "
             f"{info['tensor_bytes'] // NSHARDS // NTENSORS / MIB:g} MiB = {info['file_bytes']} file bytes "
             f"({info['file_bytes'] / MIB:.0f} MiB; tensor bytes {info['tensor_bytes']}), written in "
             f"{info['gen_s']:.1f} s. mx `{info['mx_bin']}`; {info['runs']} runs per tool, interleaved, best kept. "
             f"seconds = wall clock fork-to-exit; MB/s = bytes read / wall s / 1e6 (fio: the "
             f"{info['fio_bytes']} bytes of whole 8 MiB blocks it reads). self = the tool's own timing "
             f"(mx JSON seconds / gb_per_second; fio read runtime / bw_bytes). CPU s = user+sys of the tool "
             f"(wait4, children included); minflt = its minor page faults; machine CPU = whole-machine "
             f"non-idle / (nproc x wall). peak RSS is mx's JSON peak_rss_bytes (VmHWM).")
    L.append("")
    L.append(f"Commands: a) `cat SHARDS > /dev/null` after two warming reads vs `mx stream DIR --json`; "
             f"the reference row reads each shard with one read() loop into a fresh anonymous mmap "
             f"(freed per shard), i.e. the cost of landing the bytes in new memory, which cat (one reused "
             f"128 KiB buffer) never pays. b) `fio --direct=1 --rw=read --bs=8M --ioengine=psync "
             f"--group_reporting` with {info['fio16']} jobs (2 per shard, each one contiguous half: "
             f"`--filename=SHARD --offset=0|HALF --size=HALF`) to match mx's 16 parallel 8 MiB reads, and "
             f"with 8 jobs (one whole shard each, no target) vs `mx stream DIR --direct --chunk-size 8MiB "
             f"--json`. c) `/usr/bin/aws s3 cp --recursive --only-show-errors s3://models/bench/model DEST "
             f"--endpoint-url URL` (awscli defaults: 10 concurrent requests, 8 MiB parts; DEST on disk) vs "
             f"`mx stream s3://models/bench/model --json`, same S3rver.env().")
    L.append("")
    R = ["", "| scenario | mx vs | basis | mx MB/s | peer MB/s | ratio | target |",
         "|---|---|---|---:|---:|---:|---|"]
    ratios = {}
    for sc in SCEN:
        peers = [PEER[sc]] + ([REF_READ] if sc == "a" else []) + (["fio 8 jobs"] if sc == "b" else [])
        bases = ["wall", "self"] if sc == "b" else ["wall"]
        for peer in peers:
            for basis in bases:
                m, p = best(runs.get((sc, MX[sc]), []), basis), best(runs.get((sc, peer), []), basis)
                f = wall_mbps if basis == "wall" else self_mbps
                mv, pv = (f(m) if m else None), (f(p) if p else None)
                ratio = mv / pv if mv and pv else None
                is_target = peer == PEER[sc] and basis == BASIS[sc]
                if is_target:
                    ratios[sc] = (ratio, mv, pv)
                R.append(f"| {SCEN[sc]} | {peer} | {basis} | {fmt(mv, '.1f')} | {fmt(pv, '.1f')} | "
                         f"{'n/a' if ratio is None else f'{ratio:.2f}x'} | "
                         f"{f'>= {TARGETS[sc]}x' if is_target else '-'} |")
    L.append("| scenario | tool | run | seconds | MB/s | self s (MB/s) | ratio mx/peer | peak RSS MiB | CPU s (sys) | minflt | machine CPU | status |")
    L.append("|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---|")
    for (sc, tool), rr in runs.items():
        b = best(rr, BASIS[sc])
        for i, r in enumerate(rr, 1):
            s = self_mbps(r)
            self_rep = ""
            if "mx_seconds" in r:
                self_rep = f"{r['mx_seconds']:.2f} ({s:.1f})"
            elif "fio_mbps" in r:
                self_rep = f"{r['fio_runtime_ms'] / 1000:.2f} ({s:.1f})"
            rat = ""
            if r is b and tool == MX[sc] and ratios.get(sc, (None,))[0] is not None:
                rat = f"{ratios[sc][0]:.2f}x ({BASIS[sc]})"
            rss = f"{r['mx_rss'] / MIB:.1f}" if "mx_rss" in r else "-"
            status = "ok" if row_ok(r) else f"FAILED rc {r['rc']}" + (f" {r.get('why', '')}" if r.get('why') else "")
            L.append(f"| {SCEN[sc]} | {tool} | {i}{' (best)' if r is b else ''} | {r['wall']:.2f} | "
                     f"{wall_mbps(r):.1f} | {self_rep} | {rat} | {rss} | {r['cpu']:.2f} ({r['sys']:.2f}) | {r['minflt']} | "
                     f"{r['machine_pct']:.0f}% | {status} |")
    L += R
    if s3cpu:
        L.append("")
        L.append("s3rver (Node, one process) CPU during each S3 run (/proc/PID/stat utime+stime):")
        L.append("")
        for (tool, i), (cpu, wall) in s3cpu.items():
            L.append(f"- {tool} run {i}: s3rver {cpu:.2f} CPU s over {wall:.2f} s wall = "
                     f"{100 * cpu / wall:.0f}% of one core")
    L.append("")
    L.append("| target | measured | result |")
    L.append("|---|---|---|")
    passed = True
    lines = []
    for sc, need in TARGETS.items():
        peer = {"a": "cat", "b": "fio (16 jobs, bs 8M; own bw vs mx's own GB/s)", "c": "aws s3 cp"}[sc]
        ratio, m, p = ratios.get(sc, (None, None, None))
        ok = ratio is not None and ratio >= need
        passed &= ok
        meas = f"{ratio:.2f}x ({m:.1f} vs {p:.1f} MB/s)" if ratio is not None else "n/a (a run failed)"
        L.append(f"| {SCEN[sc]}: mx >= {need}x {peer} | {meas} | {'PASS' if ok else '**FAIL**'} |")
        lines.append(f"- {'PASS' if ok else 'FAIL'}: {SCEN[sc]}: mx >= {need}x {peer}: {meas}")
    mx_runs = [r for (sc, t), rr in runs.items() if t.startswith("mx") for r in rr]
    all_ok = all(row_ok(r) for r in mx_runs)
    passed &= all_ok
    meas = f"{sum(row_ok(r) for r in mx_runs)}/{len(mx_runs)} ok"
    L.append(f"| every mx run exit 0 with {NSHARDS} files, {NSHARDS * NTENSORS} tensors, all tensor bytes | "
             f"{meas} | {'PASS' if all_ok else '**FAIL**'} |")
    lines.append(f"- {'PASS' if all_ok else 'FAIL'}: every mx run exit 0 with all files/tensors/bytes: {meas}")
    L.append("")
    L += lines
    L.append("")
    return "\n".join(L) + "\n", passed


def read_fresh(paths: list[str]) -> int:
    """Reference reader for a): each file with plain read() calls into a fresh
    anonymous mmap (page faults on first touch, like any new tensor buffer),
    unmapped after each file."""
    import mmap
    for p in paths:
        n = os.path.getsize(p)
        m = mmap.mmap(-1, max(n, 1))
        mv = memoryview(m)
        with open(p, "rb", buffering=0) as f:
            got = 0
            while got < n:
                k = f.readinto(mv[got:])
                if not k:
                    raise RuntimeError(f"{p}: short read at {got}")
                got += k
        mv.release()
        m.close()
    return 0


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def main() -> int:
    if sys.argv[1:2] == ["--read-fresh"]:
        return read_fresh(sys.argv[2:])
    signal.signal(signal.SIGTERM, _on_term)
    size_mib = env_int("BENCH_SIZE_MIB", 2048)
    nruns = max(1, env_int("BENCH_RUNS", 2))
    mx_bin = os.environ.get("MX_BIN", str(REPO_ROOT / "build/src/cli/mx"))
    info = {"nproc": os.cpu_count(), "kernel": platform.release(), "cpu": cpu_model("?"),
            "load": " ".join(f"{x:.2f}" for x in os.getloadavg()), "runs": nruns,
            "mx_bin": os.path.relpath(mx_bin, REPO_ROOT),
            "date": subprocess.run(["date", "-u"], capture_output=True, text=True).stdout.strip()}
    base = HERE / "work"
    made_base = not base.exists()
    base.mkdir(parents=True, exist_ok=True)
    info["fstype"] = fs_type(base)
    if info["fstype"] in ("tmpfs", "ramfs", "?"):
        log(f"bench/work is on {info['fstype']}: O_DIRECT needs a disk filesystem")
        return 2
    work = Path(tempfile.mkdtemp(prefix="stream-", dir=base))
    s3 = None
    runs: dict[tuple[str, str], list[dict]] = {}
    s3cpu: dict = {}
    try:
        log(f"work dir {work} ({info['fstype']}); model {size_mib} MiB; {nruns} runs per tool")
        t0 = time.monotonic()
        model = work / "model"
        shards, file_bytes, tensor_bytes = make_model(model, size_mib)
        os.sync()
        info.update(gen_s=time.monotonic() - t0, file_bytes=file_bytes, tensor_bytes=tensor_bytes)
        log(f"wrote {NSHARDS} shards, {file_bytes} bytes in {info['gen_s']:.1f} s")
        timeout = 120 + file_bytes / 20e6  # 20 MB/s floor

        def mx_run(args, tag, env=None, watch=None):
            r = timed([mx_bin, "stream", *args, "--json"], work, tag, env=env, timeout=timeout, watch_pid=watch)
            j = mx_json(r)
            r["bytes"] = file_bytes
            if j is None:
                r["valid"], r["why"] = False, "no JSON"
            else:
                r["mx_seconds"], r["mx_rss"] = float(j["seconds"]), int(j["peak_rss_bytes"])
                r["mx_gbps"] = float(j["gb_per_second"])
                r["valid"] = (j.get("files") == NSHARDS and j.get("tensors") == NSHARDS * NTENSORS
                              and j.get("bytes") == tensor_bytes)
                if not r["valid"]:
                    r["why"] = f"got files {j.get('files')} tensors {j.get('tensors')} bytes {j.get('bytes')}"
            if r["rc"] != 0:
                r["why"] = r["stderr"].strip().splitlines()[-1][:200] if r["stderr"].strip() else ""
            return r

        def show(sc, tool, i, r):
            runs.setdefault((sc, tool), []).append(r)
            extra = ""
            if "mx_seconds" in r:
                extra = f" (mx self {r['mx_seconds']:.2f} s, RSS {r['mx_rss'] / MIB:.1f} MiB)"
            if "fio_mbps" in r:
                extra = f" (fio self {r['fio_mbps']:.1f} MB/s)"
            log(f"{SCEN[sc]} {tool} run {i}: rc {r['rc']} {r['wall']:.2f} s "
                f"{r['bytes'] / r['wall'] / 1e6:.1f} MB/s CPU {r['cpu']:.2f} s (sys {r['sys']:.2f}) "
                f"minflt {r['minflt']} machine {r['machine_pct']:.0f}%"
                + extra + (f" [{r.get('why')}]" if r.get("why") else ""))

        # ---- a) page cache -------------------------------------------------
        for _ in range(2):
            subprocess.run(["cat", *map(str, shards)], stdout=subprocess.DEVNULL, check=True)
        for i in range(1, nruns + 1):
            r = timed(["cat", *shards], work, f"a-cat-{i}", timeout=timeout, stdout_null=True)
            r["bytes"] = file_bytes
            show("a", "cat", i, r)
            show("a", "mx stream", i, mx_run([model], f"a-mx-{i}"))
            r = timed([sys.executable, __file__, "--read-fresh", *shards], work, f"a-ref-{i}", timeout=timeout)
            r["bytes"] = file_bytes
            show("a", REF_READ, i, r)

        # ---- b) O_DIRECT ---------------------------------------------------
        fio16, fio16_bytes = fio_cmd(shards, FIO_JOBS_PER_SHARD)
        fio8, fio8_bytes = fio_cmd(shards, 1)
        info["fio16"] = sum(1 for a in fio16 if a.startswith("--name="))
        info["fio_bytes"] = fio16_bytes
        for i in range(1, nruns + 1):
            for tool, cmd, nbytes in (("fio 16 jobs", fio16, fio16_bytes), ("fio 8 jobs", fio8, fio8_bytes)):
                r = timed(cmd, work, f"b-{tool.replace(' ', '')}-{i}", timeout=timeout)
                r.update(fio_result(r))
                r["bytes"] = r.get("io_bytes", nbytes)
                if r.get("parse_error") or r["bytes"] != nbytes:
                    r["valid"], r["why"] = False, r.get("parse_error", f"read {r['bytes']} of {nbytes}")
                show("b", tool, i, r)
            show("b", "mx stream --direct", i, mx_run([model, "--direct", "--chunk-size", "8MiB"], f"b-mx-{i}"))

        # ---- c) S3 ---------------------------------------------------------
        s3 = S3rver(work).start()
        t0 = time.monotonic()
        s3.upload_dir(model, PREFIX)
        os.sync()
        log(f"s3rver pid {s3.proc.pid} on {s3.endpoint}; uploaded in {time.monotonic() - t0:.1f} s")
        env = s3.env()
        env["AWS_EC2_METADATA_DISABLED"] = "true"
        src = f"s3://{BUCKET}/{PREFIX}"
        for i in range(1, nruns + 1):
            dest = work / f"aws-dest-{i}"
            dest.mkdir()
            r = timed(["/usr/bin/aws", "s3", "cp", "--recursive", "--only-show-errors", src, dest,
                       "--endpoint-url", s3.endpoint], work, f"c-aws-{i}", env=env, timeout=timeout,
                      watch_pid=s3.proc.pid)
            got = sorted(p.name for p in dest.iterdir()) if dest.exists() else []
            got_bytes = sum((dest / n).stat().st_size for n in got)
            r["bytes"] = file_bytes
            if got != [p.name for p in shards] or got_bytes != file_bytes:
                r["valid"], r["why"] = False, f"dest has {len(got)} files, {got_bytes} bytes"
            shutil.rmtree(dest, ignore_errors=True)
            os.sync()
            s3cpu[("aws s3 cp", i)] = (r["watch_cpu"], r["wall"])
            show("c", "aws s3 cp", i, r)
            r = mx_run([src], f"c-mx-{i}", env=env, watch=s3.proc.pid)
            s3cpu[("mx stream", i)] = (r["watch_cpu"], r["wall"])
            show("c", "mx stream s3://", i, r)
        s3.stop()
        s3 = None

        text, passed = report(info, runs, s3cpu)
        print()
        print(text, end="")
        append_results(text, log, RESULTS)
        return 0 if passed else 1
    finally:
        if s3 is not None:
            s3.stop()
        remove_work(work, base, made_base)


if __name__ == "__main__":
    sys.exit(main())
