#!/usr/bin/env python3
"""Serve benchmark: mx-server StreamModelFiles vs iperf3 on loopback.

Driven by bench/serve.sh (see the header there for what is measured and the
env knobs). Python 3 stdlib only; it reuses tests/integration/harness.py
(make_repo, HubStub, run, free_port, base_env, _stop_process) through
bench_common.py. Every server listens on 127.0.0.x only and is stopped by PID.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
sys.path.insert(0, str(REPO_ROOT / "tests" / "integration"))

from bench_common import (remove_work, run_main, targets_table, RESULTS, Terminated, _on_term, append_results,  # noqa: E402
                          cpu_model, env_int, fmt, machine_busy_s, make_log, proc_stat, stop)
from harness import MIB, HubStub, base_env, free_port, make_repo, run  # noqa: E402

REPO_ID = "org/bench"
NSHARDS = 4
CLIENTS = (1, 4)
CHUNKS = (32768, 1048576, 4194304)

log = make_log("serve.sh")


def env_pairs(name: str) -> dict[str, str]:
    """KEY=VALUE words from env var name (e.g. BENCH_SERVER_ENV)."""
    out = {}
    for w in os.environ.get(name, "").split():
        k, sep, v = w.partition("=")
        if not sep or not k:
            raise RuntimeError(f"{name}: expected KEY=VALUE words, got {w!r}")
        out[k] = v
    return out


# --------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------


def wait_tcp(host: str, port: int, proc: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def listening(port: int) -> bool:
    """Is something LISTENing on TCP port (any address)? Reads /proc/net/tcp
    so that the probe does not take iperf3 -1's single connection."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for ln in lines:
            f = ln.split()
            if len(f) > 3 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


def proc_status(pid: int, key: str) -> int:
    """A /proc/PID/status field in KiB (0 if unreadable)."""
    try:
        for ln in Path(f"/proc/{pid}/status").read_text().splitlines():
            if ln.startswith(key + ":"):
                return int(ln.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


# --------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------


def prepare_model(work: Path, size_mib: int, mx_bin: str) -> tuple[Path, int, int]:
    """Generate the repo, serve it with HubStub, `mx download` it into CACHE.
    Returns (cache dir, model bytes, number of files)."""
    shard = max(MIB, size_mib * MIB // NSHARDS)
    files = {f"model-{i:05d}-of-{NSHARDS:05d}.safetensors": shard for i in range(1, NSHARDS + 1)}
    files["config.json"] = json.dumps({
        "architectures": ["BenchForCausalLM"], "model_type": "bench", "hidden_size": 4096,
        "num_hidden_layers": 32, "num_attention_heads": 32, "vocab_size": 32000,
        "torch_dtype": "bfloat16"}, indent=2) + "\n"
    files["tokenizer.json"] = json.dumps(
        {"version": "1.0", "model": {"type": "BPE", "vocab": {f"t{i}": i for i in range(2000)}}}) + "\n"
    t0 = time.monotonic()
    content = make_repo(work / "repo", files)
    total = sum((content / p).stat().st_size for p in files)
    log(f"generated {len(files)} files, {total} bytes in {time.monotonic() - t0:.1f} s")
    cache = work / "cache"
    t0 = time.monotonic()
    with HubStub(work, {REPO_ID: {"revisions": {"main": content}}}) as hub:
        r = run([mx_bin, "download", REPO_ID, "--cache-dir", cache, "--json"],
                env={"HF_ENDPOINT": hub.endpoint}, timeout=900)
    if r.returncode != 0:
        raise RuntimeError(f"mx download failed ({r.returncode}):\n{r.stderr[-2000:]}")
    log(f"mx download into {cache}: {time.monotonic() - t0:.1f} s")
    shutil.rmtree(content)  # the generated copy is no longer needed
    return cache, total, len(files)


def warm(cache: Path) -> int:
    """Read every blob once (cat > /dev/null) so the page cache holds it."""
    blobs = sorted(p for p in cache.rglob("*") if p.is_file() and "blobs" in p.parts)
    if blobs:
        subprocess.run(["cat", *map(str, blobs)], stdout=subprocess.DEVNULL, check=True)
    return sum(p.stat().st_size for p in blobs)


def iperf3(streams: int, seconds: int, work: Path) -> dict:
    port = free_port()
    srv_log = open(work / f"iperf3-s-{streams}.log", "wb")
    srv = subprocess.Popen(["iperf3", "-s", "-B", "127.0.0.1", "-p", str(port), "-1"],
                           stdin=subprocess.DEVNULL, stdout=srv_log, stderr=subprocess.STDOUT,
                           start_new_session=True, env=base_env())
    try:
        deadline = time.monotonic() + 10
        while not listening(port):
            if srv.poll() is not None or time.monotonic() > deadline:
                return {"error": f"iperf3 server did not start (rc {srv.poll()})"}
            time.sleep(0.05)
        cmd = ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds), "-J"]
        if streams > 1:
            cmd += ["-P", str(streams)]
        r = run(cmd, timeout=seconds + 30)
        try:
            j = json.loads(r.stdout)
        except json.JSONDecodeError:
            return {"error": f"iperf3 rc {r.returncode}: {r.stderr[-300:]}"}
        if j.get("error"):
            return {"error": j["error"]}
        s = j["end"]["sum_received"]
        cpu = j["end"].get("cpu_utilization_percent", {})
        return {"mbps": s["bits_per_second"] / 8 / 1e6, "seconds": s["seconds"],
                "bytes": s["bytes"], "cpu_host": cpu.get("host_total"),
                "cpu_remote": cpu.get("remote_total")}
    finally:
        stop(srv)
        srv_log.close()


def start_server(server_bin: str, cache: Path, work: Path, extra_env: dict | None = None,
                 mirror: bool = False) -> tuple[subprocess.Popen, int]:
    """mx-server on 127.0.0.1 with `cache`; returns it and the port it was waited on: the gRPC
    port, or with `mirror` the HF mirror's (metrics then on a port of its own too)."""
    for attempt in range(5):
        port, mirror_port, metrics_port = (free_port() for _ in range(3))
        if mirror and len({port, mirror_port, metrics_port}) < 3:
            continue
        env = dict(base_env(), MODEL_EXPRESS_CACHE_DIRECTORY=str(cache),
                   MODEL_EXPRESS_SERVER_HOST="127.0.0.1", MODEL_EXPRESS_SERVER_PORT=str(port),
                   MX_MIRROR_PORT=str(mirror_port) if mirror else "0",
                   MODEL_EXPRESS_SERVER_METRICS_PORT=str(metrics_port) if mirror else "0",
                   **(extra_env or {}))
        env.update(env_pairs("BENCH_SERVER_ENV"))
        wait_port = mirror_port if mirror else port
        logf = open(work / "mx-server.log", "ab")
        proc = subprocess.Popen([server_bin], stdin=subprocess.DEVNULL, stdout=logf,
                                stderr=subprocess.STDOUT, start_new_session=True, env=env)
        logf.close()
        if wait_tcp("127.0.0.1", wait_port, proc, 30):
            return proc, wait_port
        stop(proc)
        log(f"mx-server did not come up on port {wait_port} (attempt {attempt + 1})")
    tail = (work / "mx-server.log").read_bytes()[-2000:].decode(errors="replace")
    raise RuntimeError(f"mx-server failed to start:\n{tail}")


def stream_bench(bench_bin: str, port: int, clients: int, chunk: int, server_pid: int,
                 timeout: float) -> dict:
    cpu0, flt0 = proc_stat(server_pid)
    busy0 = machine_busy_s()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    # N clients = N client processes with one connection each, as N worker pods would be
    # (threads of one process would share gRPC's internals and contend on them).
    env = base_env()
    env.update(env_pairs("BENCH_CLIENT_ENV"))
    procs = [subprocess.Popen([bench_bin, f"127.0.0.1:{port}", REPO_ID, "1", str(chunk)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(clients)]
    outs, rc = [], 0
    for p in procs:
        try:
            o, e = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            o, e = p.communicate()
            p.returncode = 124
        outs.append((o, e))
        rc = rc or p.returncode
    out = "\n".join(o for o, _ in outs)
    err = "\n".join(e for _, e in outs if e.strip())
    wall = time.monotonic() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy1 = machine_busy_s()
    busy, irq = busy1[0] - busy0[0], busy1[1] - busy0[1]
    cpu1, flt1 = proc_stat(server_pid)
    client_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    res = {"clients": clients, "chunk": chunk, "rc": rc, "wall": wall,
           "server_cpu": cpu1 - cpu0, "server_minflt": flt1 - flt0,
           "client_cpu": client_cpu, "client_minflt": ru1.ru_minflt - ru0.ru_minflt,
           "machine_busy": busy, "irq_cpu": irq,
           "other_cpu": max(0.0, busy - irq - (cpu1 - cpu0) - client_cpu),
           "hwm_kib": proc_status(server_pid, "VmHWM"), "rss_kib": proc_status(server_pid, "VmRSS"),
           "stderr": err.strip()[-300:]}
    parts = []
    for ln in out.splitlines():
        ln = ln.strip()
        if ln.startswith("{"):
            try:
                parts.append(json.loads(ln))
            except json.JSONDecodeError:
                pass
    if parts:
        # Aggregate: all bytes over the slowest client's time.
        res["bytes"] = sum(p.get("bytes", 0) for p in parts)
        res["seconds"] = max(p.get("seconds", 0) for p in parts)
        res["failures"] = sum(p.get("failures", 0) for p in parts)
        res["mbps"] = res["bytes"] / res["seconds"] / 1e6 if res["seconds"] else 0.0
    return res


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def ok_run(r: dict, model_bytes: int) -> bool:
    return (r["rc"] == 0 and r.get("failures", 1) == 0 and "mbps" in r
            and r.get("bytes") == r["clients"] * model_bytes)


def report(info: dict, ip: dict, runs: list[dict], hwm_kib: int, model_bytes: int,
           nfiles: int) -> tuple[str, bool]:
    date = subprocess.run(["date", "-u"], capture_output=True, text=True).stdout.strip()
    out = [f"## StreamModelFiles vs iperf3 (bench/serve.sh), {date}", ""]
    out.append(f"Machine: nproc {info['nproc']}, kernel {info['kernel']}, CPU {info['cpu']}; "
               f"load average at start {info['load']}.")
    out.append(f"Model `{REPO_ID}`: {nfiles} files, {model_bytes} bytes "
               f"({model_bytes / MIB:.0f} MiB), {NSHARDS} shards, prepared with `mx download` "
               f"from the hub stub into an HF cache, page cache warmed ({info['warm_bytes']} "
               f"blob bytes read). Server `{info['server_bin']}` on 127.0.0.1, client "
               f"`{info['bench_bin']}`; {info['runs']} runs per combination (interleaved), "
               f"best kept. MB/s = bytes / s / 1e6; for 4 clients bytes = 4 x model and MB/s "
               f"is the aggregate. iperf3 `-t {info['iperf_s']}`, best of {info['runs']}."
               + "".join(f" Extra {k}: `{os.environ[k]}`." for k in ("BENCH_SERVER_ENV",
                                                                     "BENCH_CLIENT_ENV")
                         if os.environ.get(k, "").strip()))
    out.append("")
    ref = ip.get(1, {}).get("mbps")
    out.append("| test | clients / streams | chunk bytes | MB/s | seconds | ratio to iperf3 1 stream "
               "| all runs MB/s | server CPU s | client CPU s | irq CPU s | other CPU s | status |")
    out.append("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---|")
    for n in (1, 4):
        r = ip.get(n, {})
        allr = ", ".join(fmt(x.get("mbps")) for x in r.get("all", []))
        cpu = (f"host {fmt(r.get('cpu_host'), '.0f')}% / remote {fmt(r.get('cpu_remote'), '.0f')}%"
               if r.get("mbps") else "")
        out.append(f"| iperf3 | {n} | - | {fmt(r.get('mbps'))} | {fmt(r.get('seconds'), '.2f')} | "
                   f"{fmt(r['mbps'] / ref, '.2f') + 'x' if r.get('mbps') and ref else 'n/a'} | "
                   f"{allr} | {cpu} | | | | {'ok' if r.get('mbps') else r.get('error', 'failed')} |")
    best = {}
    for c in CLIENTS:
        for ch in CHUNKS:
            rs = [r for r in runs if r["clients"] == c and r["chunk"] == ch]
            good = [r for r in rs if ok_run(r, model_bytes)]
            b = max(good, key=lambda r: r["mbps"]) if good else None
            best[(c, ch)] = b
            allr = ", ".join(fmt(r.get("mbps")) if ok_run(r, model_bytes) else "fail" for r in rs)
            if b:
                status = "ok" if len(good) == len(rs) else f"{len(rs) - len(good)} run(s) failed"
                out.append(f"| mx StreamModelFiles | {c} | {ch} | {b['mbps']:.1f} | "
                           f"{b['seconds']:.2f} | {fmt(b['mbps'] / ref if ref else None, '.2f')}x | "
                           f"{allr} | {b['server_cpu']:.2f} | {b['client_cpu']:.2f} | {b['irq_cpu']:.2f} | "
                           f"{b['other_cpu']:.2f} | "
                           f"{status} |")
            else:
                why = "; ".join(f"rc {r['rc']} bytes {r.get('bytes')} failures {r.get('failures')} "
                                f"{r['stderr'][:80]}" for r in rs)
                out.append(f"| mx StreamModelFiles | {c} | {ch} | n/a | n/a | n/a | {allr} | | | | | "
                           f"FAILED: {why} |")
    out.append("")
    out.append(f"mx-server peak RSS (VmHWM at the end): {hwm_kib / 1024:.1f} MiB. VmHWM after "
               "each run, in run order (MiB): "
               + ", ".join(f"{r['clients']}x{r['chunk'] // 1024}K {r['hwm_kib'] / 1024:.1f}"
                           for r in runs) + ".")
    out.append("")
    out.append("CPU columns are for the kept (best) run: server = mx-server utime+stime "
               "(/proc/PID/stat), client = mx_stream_bench (rusage), irq = the machine's irq + "
               "softirq time in that interval (/proc/stat; loopback TCP receive work lands "
               "here, not in a task's time), other = the rest of the machine's non-idle CPU "
               "(other users' jobs, kernel threads). Every run, in order:")
    out.append("")
    for r in runs:
        res = (f"{r['mbps']:.1f} MB/s, {r['seconds']:.2f} s" if "mbps" in r else f"rc {r['rc']}")
        out.append(f"- {r['clients']} client(s), {r['chunk']} B: {res}; CPU s server "
                   f"{r['server_cpu']:.2f} / client {r['client_cpu']:.2f} / irq {r['irq_cpu']:.2f} / other "
                   f"{r['other_cpu']:.2f} (of {r['wall']:.2f} s x {os.cpu_count()} CPUs); "
                   f"minor faults server {r['server_minflt']} / client {r['client_minflt']}")
    out.append("")
    # Targets
    checks = []
    one = [best[(1, ch)] for ch in CHUNKS if best[(1, ch)]]
    b1 = max(one, key=lambda r: r["mbps"]) if one else None
    if b1 and ref:
        ratio = b1["mbps"] / ref
        checks.append(("1 client (best chunk) >= 50% of iperf3 single stream",
                       f"{b1['mbps']:.1f} MB/s ({b1['chunk']} B chunks) = {ratio * 100:.0f}% of "
                       f"{ref:.1f} MB/s", ratio >= 0.5))
    else:
        checks.append(("1 client (best chunk) >= 50% of iperf3 single stream", "n/a", False))
    a, b = best[(4, 1048576)], best[(1, 1048576)]
    checks.append(("4 clients together >= 1 client (1 MiB chunks)",
                   f"{fmt(a and a['mbps'])} vs {fmt(b and b['mbps'])} MB/s"
                   + (f" ({a['mbps'] / b['mbps']:.2f}x)" if a and b else ""),
                   bool(a and b and a["mbps"] >= b["mbps"])))
    checks.append(("server peak RSS <= 256 MiB", f"{hwm_kib / 1024:.1f} MiB",
                   0 < hwm_kib <= 256 * 1024))
    out.extend(targets_table(checks))
    return "\n".join(out) + "\n", all(ok for _, _, ok in checks)


# --------------------------------------------------------------------------


def main() -> int:
    signal.signal(signal.SIGTERM, _on_term)
    size_mib = env_int("BENCH_SIZE_MIB", 2048)
    nruns = max(1, env_int("BENCH_RUNS", 2))
    iperf_s = max(1, env_int("BENCH_IPERF_SECONDS", 5))
    mx_bin = os.environ.get("MX_BIN", str(REPO_ROOT / "build/src/cli/mx"))
    server_bin = os.environ.get("MX_SERVER_BIN", str(REPO_ROOT / "build/src/server/mx-server"))
    bench_bin = os.environ.get("MX_STREAM_BENCH_BIN", str(REPO_ROOT / "build/bench/mx_stream_bench"))
    info = {"nproc": os.cpu_count(), "kernel": platform.release(), "cpu": cpu_model(),
            "load": " ".join(f"{x:.2f}" for x in os.getloadavg()), "runs": nruns,
            "iperf_s": iperf_s, "server_bin": os.path.relpath(server_bin, REPO_ROOT),
            "bench_bin": os.path.relpath(bench_bin, REPO_ROOT)}
    base = HERE / "work"
    made_base = not base.exists()
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="serve-", dir=base))
    server = None
    try:
        log(f"work dir {work}; model {size_mib} MiB; {nruns} runs per combination")
        cache, model_bytes, nfiles = prepare_model(work, size_mib, mx_bin)
        t0 = time.monotonic()
        info["warm_bytes"] = warm(cache)
        log(f"page cache warmed: {info['warm_bytes']} bytes in {time.monotonic() - t0:.1f} s")

        ip: dict[int, dict] = {}
        for n in (1, 4):
            allr = []
            for i in range(nruns):
                r = iperf3(n, iperf_s, work)
                log(f"iperf3 {n} stream(s) run {i + 1}: "
                    + (f"{r['mbps']:.1f} MB/s" if "mbps" in r else r.get("error", "?")))
                allr.append(r)
            good = [r for r in allr if "mbps" in r]
            ip[n] = dict(max(good, key=lambda r: r["mbps"]) if good else allr[-1], all=allr)

        server, port = start_server(server_bin, cache, work)
        log(f"mx-server pid {server.pid} on 127.0.0.1:{port}")
        runs = []
        timeout = 120 + 4 * model_bytes / 50e6  # generous: 50 MB/s floor for 4 clients
        for i in range(nruns):
            for c in CLIENTS:
                for ch in CHUNKS:
                    if server.poll() is not None:
                        raise RuntimeError(f"mx-server exited with {server.returncode}")
                    r = stream_bench(bench_bin, port, c, ch, server.pid, timeout)
                    runs.append(r)
                    log(f"run {i + 1} clients={c} chunk={ch}: "
                        + (f"{r['mbps']:.1f} MB/s {r['seconds']:.2f} s bytes {r['bytes']}"
                           if "mbps" in r else "no result")
                        + f" rc {r['rc']} failures {r.get('failures')} server CPU "
                          f"{r['server_cpu']:.2f} s client CPU {r['client_cpu']:.2f} s "
                          f"irq CPU {r['irq_cpu']:.2f} s other CPU {r['other_cpu']:.2f} s "
                          f"server minflt "
                          f"{r['server_minflt']} VmHWM {r['hwm_kib'] / 1024:.1f} MiB"
                        + (f" stderr: {r['stderr']}" if r["rc"] != 0 else ""))
        hwm = proc_status(server.pid, "VmHWM")
        stop(server)
        server = None

        text, passed = report(info, ip, runs, hwm, model_bytes, nfiles)
        print()
        print(text, end="")
        append_results(text, log, RESULTS)
        return 0 if passed else 1
    finally:
        stop(server)
        remove_work(work, base, made_base)


if __name__ == "__main__":
    run_main(main, "serve.sh")
