#!/usr/bin/env python3
"""Mirror benchmark: mx-server's HF mirror endpoint vs nginx on loopback.

Driven by bench/mirror.sh (see the header there for what is measured and the
env knobs). Python 3 stdlib only; it reuses tests/integration/harness.py
(make_repo, HubStub, Nginx, base_env, _stop_process) through
bench_common.py, and serve_bench.py's small process helpers. Every server
listens on 127.0.0.x only and is stopped by PID.
"""

from __future__ import annotations

import http.client
import json
import os
import platform
import resource
import shutil
import signal
import statistics
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
from harness import MIB, HubStub, Nginx, base_env, make_repo  # noqa: E402
from serve_bench import proc_status  # noqa: E402
from serve_bench import start_server as start_serve_server  # noqa: E402

REPO_ID = "org/bench"
BIG = "model.safetensors"
SMALL = "config.json"
CLIENTS = (1, 4)
TARGET_RATIO = 0.8
TARGET_LATENCY_MS = 100.0
CURL_FORMAT = "%{http_code} %{size_download} %{time_total} %{speed_download}\\n"

log = make_log("mirror.sh")


# --------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------


def children_of(pid: int) -> list[int]:
    """PIDs whose parent is pid (nginx's workers)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                out.append(int(d.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


def tree_cpu(pids: list[int]) -> float:
    return sum(proc_stat(p)[0] for p in pids)


def start_server(server_bin: str, cache: Path, endpoint: str,
                 work: Path) -> tuple[subprocess.Popen, int]:
    """mx-server with its mirror on, upstream `endpoint`: (process, mirror port)."""
    return start_serve_server(server_bin, cache, work, {"HF_ENDPOINT": endpoint}, mirror=True)


def curl_start(url: str) -> subprocess.Popen:
    return subprocess.Popen(["curl", "-s", "--noproxy", "*", "-o", "/dev/null",
                             "-w", CURL_FORMAT, url],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=base_env())


def curl_result(p: subprocess.Popen, timeout: float) -> dict:
    try:
        o, e = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        o, e = p.communicate()
        p.returncode = 124
    try:
        code, size, total, speed = o.split()[:4]
        return {"rc": p.returncode, "code": int(code), "bytes": int(size),
                "seconds": float(total), "speed": float(speed), "err": e.strip()[-200:]}
    except ValueError:
        return {"rc": p.returncode or 1, "code": 0, "bytes": 0, "seconds": 0.0, "speed": 0.0,
                "err": (o + e).strip()[-200:]}


# --------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------


def fill_cache(work: Path, size_mib: int, server_bin: str, st: dict) -> None:
    """Generate the repo, start HubStub and mx-server, GET both files once through the
    mirror. Puts the running processes and paths into st as they come up, so the caller
    stops them even when a later step fails."""
    size = max(1, size_mib) * MIB
    files = {BIG: size, SMALL: json.dumps({
        "architectures": ["BenchForCausalLM"], "model_type": "bench", "hidden_size": 4096,
        "num_hidden_layers": 32, "num_attention_heads": 32, "vocab_size": 32000,
        "torch_dtype": "bfloat16"}, indent=2) + "\n"}
    t0 = time.monotonic()
    content = make_repo(work / "repo", files)
    log(f"generated {BIG} ({size} bytes) and {SMALL} in {time.monotonic() - t0:.1f} s")
    st.update(size=size, cache=work / "cache")
    st["hub"] = HubStub(work, {REPO_ID: {"revisions": {"main": content}}}).start()
    st["server"], st["mirror_port"] = start_server(server_bin, st["cache"], st["hub"].endpoint,
                                                   work)
    st["mirror"] = f"http://127.0.0.1:{st['mirror_port']}"
    for name, want in ((BIG, size), (SMALL, len(files[SMALL]))):
        t0 = time.monotonic()
        r = curl_result(curl_start(f"{st['mirror']}/{REPO_ID}/resolve/main/{name}"), 900)
        if r["code"] != 200 or r["bytes"] != want:
            tail = (work / "mx-server.log").read_bytes()[-2000:].decode(errors="replace")
            raise RuntimeError(f"filling the cache: GET {name} gave HTTP {r['code']}, "
                               f"{r['bytes']} of {want} bytes (curl rc {r['rc']} {r['err']})\n"
                               f"{tail}")
        log(f"cache fill through the mirror: {name} {r['bytes']} bytes in "
            f"{time.monotonic() - t0:.1f} s")
    st["blob"] = find_blob(st["cache"], size)


def find_blob(cache: Path, size: int, timeout: float = 30) -> Path:
    """The cached blob behind snapshots/*/model.safetensors (it may be renamed into place
    a moment after the response ends)."""
    deadline = time.monotonic() + timeout
    while True:
        for link in cache.rglob(f"snapshots/*/{BIG}"):
            blob = link.resolve()
            if blob.is_file() and blob.stat().st_size == size and blob.parent.name == "blobs":
                return blob
        if time.monotonic() > deadline:
            raise RuntimeError(f"no blob of {size} bytes for {BIG} under {cache}")
        time.sleep(0.1)


def download(target: dict, clients: int, timeout: float) -> dict:
    """clients curl processes at once against target["url"]; aggregate over the slowest."""
    pids = target["pids"]()
    cpu0 = tree_cpu(pids)
    busy0 = machine_busy_s()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    procs = [curl_start(target["url"]) for _ in range(clients)]
    rs = [curl_result(p, timeout) for p in procs]
    wall = time.monotonic() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy1 = machine_busy_s()
    res = {"target": target["name"], "clients": clients, "wall": wall, "curls": rs,
           "server_cpu": tree_cpu(pids) - cpu0,
           "client_cpu": (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime),
           "machine_busy": busy1[0] - busy0[0], "irq_cpu": busy1[1] - busy0[1],
           "bytes": sum(r["bytes"] for r in rs), "seconds": max(r["seconds"] for r in rs)}
    res["ok"] = all(r["rc"] == 0 and r["code"] == 200 and r["bytes"] == target["size"]
                    for r in rs)
    if res["ok"] and res["seconds"] > 0:
        res["mbps"] = res["bytes"] / res["seconds"] / 1e6
    return res


def small_get(host: str, port: int, path: str, want: int) -> tuple[float, bool]:
    """(ms from connect to the last body byte, answered 200 with want bytes)."""
    t0 = time.perf_counter()
    c = http.client.HTTPConnection(host, port, timeout=10)
    try:
        c.request("GET", path, headers={"Connection": "close"})
        r = c.getresponse()
        body = r.read()
        ok = r.status == 200 and len(body) == want
    except OSError:
        ok = False
    finally:
        c.close()
    return (time.perf_counter() - t0) * 1e3, ok


def latency_under_load(st: dict, n: int, small_bytes: int, timeout: float) -> dict:
    big_url = f"{st['mirror']}/{REPO_ID}/resolve/main/{BIG}"
    path = f"/{REPO_ID}/resolve/main/{SMALL}"
    procs = [curl_start(big_url) for _ in range(4)]
    try:
        time.sleep(0.05)  # let the four downloads connect and get going
        lat, oks, during = [], 0, 0
        for _ in range(n):
            ms, ok = small_get("127.0.0.1", st["mirror_port"], path, small_bytes)
            lat.append(ms)
            oks += ok
            during += all(p.poll() is None for p in procs)
    finally:
        rs = [curl_result(p, timeout) for p in procs]
    return {"lat": lat, "ok": oks, "n": n, "during": during,
            "median": statistics.median(lat), "max": max(lat),
            "big_ok": all(r["code"] == 200 and r["bytes"] == st["size"] for r in rs),
            "big_seconds": max(r["seconds"] for r in rs)}


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def best_of(runs: list[dict], target: str, clients: int) -> tuple[dict | None, list[dict]]:
    rs = [r for r in runs if r["target"] == target and r["clients"] == clients]
    good = [r for r in rs if "mbps" in r]
    return (max(good, key=lambda r: r["mbps"]) if good else None), rs


def report(info: dict, runs: list[dict], lat: dict, hwm_kib: int) -> tuple[str, bool]:
    date = subprocess.run(["date", "-u"], capture_output=True, text=True).stdout.strip()
    out = [f"## HF mirror vs nginx (bench/mirror.sh), {date}", ""]
    out.append(f"Machine: nproc {info['nproc']}, kernel {info['kernel']}, CPU {info['cpu']}; "
               f"load average at start {info['load']}, at end {info['load_end']}.")
    out.append(f"File `{REPO_ID}/{BIG}`: {info['size']} bytes ({info['size'] / MIB:.0f} MiB), "
               f"cached through the mirror from the hub stub, page cache warmed. mx-server "
               f"`{info['server_bin']}` mirror on 127.0.0.1 (GET /{REPO_ID}/resolve/main/{BIG}); "
               f"nginx {info['nginx_version']} (harness Nginx: sendfile on, tcp_nopush on, 2 "
               f"workers) on 127.0.0.3 serving the same blob file. Each client is one `curl -s -o "
               f"/dev/null` process; {info['runs']} runs per row (interleaved mirror/nginx), best "
               f"kept. MB/s = bytes / s / 1e6; for 4 clients bytes = 4 x file and s = the slowest "
               f"client's time."
               + (f" Extra BENCH_SERVER_ENV: `{os.environ['BENCH_SERVER_ENV']}`."
                  if os.environ.get("BENCH_SERVER_ENV", "").strip() else ""))
    out.append("")
    out.append("| server | clients | MB/s | seconds | ratio mirror/nginx | all runs MB/s "
               "| server CPU s | curl CPU s | irq CPU s | status |")
    out.append("|---|---:|---:|---:|---:|---|---:|---:|---:|---|")
    best = {}
    for c in CLIENTS:
        for t in ("mirror", "nginx"):
            b, rs = best_of(runs, t, c)
            best[(t, c)] = b
            allr = ", ".join(fmt(r.get("mbps")) if "mbps" in r else "fail" for r in rs)
            if b:
                n = best_of(runs, "nginx", c)[0]
                ratio = (f"{b['mbps'] / n['mbps']:.2f}x" if t == "mirror" and n else
                         ("1.00x" if t == "nginx" else "n/a"))
                status = "ok" if all("mbps" in r for r in rs) else "some runs failed"
                out.append(f"| {t} | {c} | {b['mbps']:.1f} | {b['seconds']:.2f} | {ratio} | "
                           f"{allr} | {b['server_cpu']:.2f} | {b['client_cpu']:.2f} | "
                           f"{b['irq_cpu']:.2f} | {status} |")
            else:
                why = "; ".join(f"HTTP {x['code']} {x['bytes']} B rc {x['rc']} {x['err'][:60]}"
                                for r in rs for x in r["curls"] if x["code"] != 200 or x["rc"])
                out.append(f"| {t} | {c} | n/a | n/a | n/a | {allr} | | | | FAILED: {why} |")
    out.append("")
    out.append(f"Small GETs of `{SMALL}` (cached) on the mirror while 4 curl clients download "
               f"`{BIG}` from it: {lat['n']} sequential GETs, fresh connection each, "
               f"{lat['ok']} answered 200 with the full body, {lat['during']} of them while all "
               f"4 downloads were in flight (downloads "
               f"{'complete' if lat['big_ok'] else 'FAILED'}, slowest {lat['big_seconds']:.2f} s). "
               f"Latency ms: median {lat['median']:.2f}, max {lat['max']:.2f}; all: "
               + ", ".join(f"{x:.1f}" for x in lat["lat"]) + ".")
    out.append("")
    out.append(f"mx-server peak RSS (VmHWM at the end): {hwm_kib / 1024:.1f} MiB. CPU columns are "
               "for the kept run: server = mx-server, or nginx master + workers, utime+stime "
               "(/proc/PID/stat); curl = the curl processes (rusage); irq = the machine's irq + "
               "softirq time in that interval (/proc/stat; loopback TCP work lands there). "
               "Every run, in order:")
    out.append("")
    for r in runs:
        res = (f"{r['mbps']:.1f} MB/s, {r['seconds']:.2f} s" if "mbps" in r else "FAILED")
        out.append(f"- {r['target']}, {r['clients']} client(s): {res}; CPU s server "
                   f"{r['server_cpu']:.2f} / curl {r['client_cpu']:.2f} / irq {r['irq_cpu']:.2f} "
                   f"/ machine busy {r['machine_busy']:.2f} (of {r['wall']:.2f} s x "
                   f"{os.cpu_count()} CPUs)")
    out.append("")
    checks = []
    for c in CLIENTS:
        m, n = best[("mirror", c)], best[("nginx", c)]
        ratio = m["mbps"] / n["mbps"] if m and n else None
        checks.append((f"mirror >= {TARGET_RATIO}x nginx, {c} client(s)",
                       f"{fmt(m and m['mbps'])} vs {fmt(n and n['mbps'])} MB/s"
                       + (f" ({ratio:.2f}x)" if ratio is not None else ""),
                       ratio is not None and ratio >= TARGET_RATIO))
    lat_ok = (lat["ok"] == lat["n"] and lat["during"] == lat["n"] and lat["big_ok"]
              and lat["max"] < TARGET_LATENCY_MS)
    checks.append((f"small-GET max latency under 4 big downloads < {TARGET_LATENCY_MS:.0f} ms",
                   f"max {lat['max']:.1f} ms, median {lat['median']:.1f} ms ({lat['ok']}/"
                   f"{lat['n']} ok, {lat['during']}/{lat['n']} under load)", lat_ok))
    out.extend(targets_table(checks))
    return "\n".join(out) + "\n", all(ok for _, _, ok in checks)


# --------------------------------------------------------------------------


def nginx_version() -> str:
    try:
        err = subprocess.run(["/usr/sbin/nginx", "-v"], capture_output=True, text=True).stderr
        return err.strip().rsplit("/", 1)[-1] or "?"
    except OSError:
        return "?"


def main() -> int:
    signal.signal(signal.SIGTERM, _on_term)
    size_mib = env_int("BENCH_SIZE_MIB", 1024)
    nruns = max(1, env_int("BENCH_RUNS", 3))
    ngets = max(1, env_int("BENCH_SMALL_GETS", 20))
    server_bin = os.environ.get("MX_SERVER_BIN", str(REPO_ROOT / "build/src/server/mx-server"))
    info = {"nproc": os.cpu_count(), "kernel": platform.release(), "cpu": cpu_model(),
            "load": " ".join(f"{x:.2f}" for x in os.getloadavg()), "runs": nruns,
            "server_bin": os.path.relpath(server_bin, REPO_ROOT),
            "nginx_version": nginx_version()}
    base = HERE / "work"
    made_base = not base.exists()
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="mirror-", dir=base))
    st: dict = {}
    nginx = None
    try:
        log(f"work dir {work}; file {size_mib} MiB; {nruns} runs per row")
        fill_cache(work, size_mib, server_bin, st)
        info["size"] = st["size"]
        server = st["server"]
        log(f"mx-server pid {server.pid}, mirror {st['mirror']}; blob {st['blob']}")
        shutil.rmtree(work / "repo", ignore_errors=True)  # the generated copy is not needed
        t0 = time.monotonic()
        subprocess.run(["cat", str(st["blob"])], stdout=subprocess.DEVNULL, check=True)
        log(f"page cache warmed: {st['size']} bytes in {time.monotonic() - t0:.1f} s")

        nginx = Nginx(work, st["blob"].parent, host="127.0.0.3").start()
        log(f"nginx pid {nginx.proc.pid} at {nginx.base_url}")
        targets = {
            "mirror": {"name": "mirror", "size": st["size"],
                       "url": f"{st['mirror']}/{REPO_ID}/resolve/main/{BIG}",
                       "pids": lambda: [server.pid]},
            "nginx": {"name": "nginx", "size": st["size"],
                      "url": f"{nginx.base_url}/{st['blob'].name}",
                      "pids": lambda: [nginx.proc.pid, *children_of(nginx.proc.pid)]},
        }
        timeout = 120 + 4 * st["size"] / 50e6  # generous: a 50 MB/s floor for 4 clients
        runs = []
        for i in range(nruns):
            for c in CLIENTS:
                for t in ("mirror", "nginx"):
                    if server.poll() is not None:
                        raise RuntimeError(f"mx-server exited with {server.returncode}")
                    r = download(targets[t], c, timeout)
                    runs.append(r)
                    log(f"run {i + 1} {t} clients={c}: "
                        + (f"{r['mbps']:.1f} MB/s {r['seconds']:.2f} s" if "mbps" in r else
                           "FAILED " + "; ".join(f"HTTP {x['code']} {x['bytes']} B rc {x['rc']} "
                                                 f"{x['err']}" for x in r["curls"]))
                        + f" server CPU {r['server_cpu']:.2f} s curl CPU {r['client_cpu']:.2f} s"
                          f" irq CPU {r['irq_cpu']:.2f} s")
        small_bytes = next(p for p in st["cache"].rglob(f"snapshots/*/{SMALL}")).stat().st_size
        lat = latency_under_load(st, ngets, small_bytes, timeout)
        log(f"small GETs under 4 downloads: median {lat['median']:.2f} ms max {lat['max']:.2f} ms "
            f"({lat['ok']}/{lat['n']} ok, {lat['during']}/{lat['n']} under load)")
        hwm = proc_status(server.pid, "VmHWM")
        info["load_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        stop(nginx.proc)
        stop(server)
        st["hub"].stop()

        text, passed = report(info, runs, lat, hwm)
        print()
        print(text, end="")
        append_results(text, log, RESULTS)
        return 0 if passed else 1
    finally:
        if nginx is not None:
            stop(nginx.proc)
        stop(st.get("server"))
        if st.get("hub"):
            st["hub"].stop()
        remove_work(work, base, made_base)


if __name__ == "__main__":
    run_main(main, "mirror.sh")
