#!/usr/bin/env python3
"""Download benchmark: mx vs aria2c vs curl against a local hub + CDN, per link shape.

Driven by bench/download.sh (see the header there). Python 3 stdlib only; it
reuses tests/integration/harness.py (make_repo, HubStub, Nginx, base_env,
sha256_file), tests/integration/slow_cdn.py (a CDN stand-in with a delay
before each response) and bench_common.py. Everything listens on 127.0.0.x.

For each link shape (SCENARIOS) it runs every tool RUNS times, interleaved
(mx, mx-16, aria2c, curl, mx, ...; curl only in the first round: at 8 MB/s it
takes a minute), each into a fresh destination directory that is deleted (and
the disk synced) before the next run. Every run is wrapped in
``/usr/bin/time -f "%e %M %U %S"`` for wall seconds, peak RSS (KiB) and
user/sys CPU seconds.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
sys.path.insert(0, str(REPO_ROOT / "tests" / "integration"))

from bench_common import cpu_model  # noqa: E402
from harness import MIB, HubStub, Nginx, base_env, make_repo, sha256_file  # noqa: E402
from slow_cdn import SlowCdn  # noqa: E402

REPO_ID = "org/bench"
TIME_BIN = "/usr/bin/time"
NSHARDS = 4


class BenchNginx(Nginx):
    """The harness nginx, with the connection serial number, the request's
    position on its connection and the request time added to the access log
    so connection reuse can be counted per run, and an optional listen
    backlog."""

    def __init__(self, *args, backlog: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.backlog = backlog

    def _config(self, port: int) -> str:
        conf = super()._config(port)
        old = "auth=$mx_auth_present';"
        assert old in conf, "harness nginx log_format changed"
        conf = conf.replace(old, "auth=$mx_auth_present conn=$connection "
                                 "creq=$connection_requests rt=$request_time t=$msec';")
        if self.backlog:
            listen = f"listen {self.host}:{port};"
            assert listen in conf, "harness nginx listen line changed"
            conf = conf.replace(listen, f"listen {self.host}:{port} backlog={self.backlog};")
        return conf


class CdnLog:
    """slow_cdn's request records, read like the nginx access log."""

    def __init__(self, cdn: SlowCdn):
        self.cdn = cdn

    def mark(self) -> int:
        return len(self.cdn.requests)

    def summary(self, mark: int) -> dict:
        reqs = self.cdn.requests[mark:]
        conns = collections.Counter(r[0] for r in reqs)
        sizes = sorted(r[2] for r in reqs)
        return {"requests": len(reqs), "connections": len(conns),
                "ranged": sum(1 for r in reqs if r[1] == 206),
                "bytes": sum(sizes), "statuses": dict(collections.Counter(str(r[1]) for r in reqs)),
                "median_body": sizes[len(sizes) // 2] if sizes else 0,
                "max_reqs_per_conn": max(conns.values()) if conns else 0,
                "first_start": min((r[3] for r in reqs), default=None),
                "last_end": max((r[4] for r in reqs), default=None)}


class NginxLog:
    def __init__(self, nginx: Nginx):
        self.nginx = nginx

    def mark(self) -> int:
        return self.nginx.access_log.stat().st_size if self.nginx.access_log.exists() else 0

    def summary(self, mark: int) -> dict:
        time.sleep(0.2)  # let nginx flush the last access-log lines
        with open(self.nginx.access_log, "rb") as f:
            f.seek(mark)
            return log_summary(f.read().decode(errors="replace").splitlines())


# Link shapes. server: nginx (limit = limit_rate per connection, backlog = listen
# backlog) or slow (slow_cdn: rate bytes/s per connection, delay s before each
# response); repo: "big" (NSHARDS shards + small files) or "small" (SMALL_FILES
# LFS files of SMALL_SIZE bytes).
SCENARIOS = [
    ("a) 8 MB/s per connection", {"server": "nginx", "limit": "8m", "repo": "big"}),
    ("b) 25 MB/s per connection", {"server": "nginx", "limit": "25m", "repo": "big"}),
    ("c) uncapped", {"server": "nginx", "repo": "big"}),
    ("d) 25 MB/s per connection + 50 ms before each response",
     {"server": "slow", "rate": 25e6, "delay": 0.05, "repo": "big"}),
    ("e) 120 files of 96 KiB + 30 ms before each response",
     {"server": "slow", "delay": 0.03, "repo": "small"}),
    ("f) listen backlog 8, 8 MB/s per connection",
     {"server": "nginx", "limit": "8m", "backlog": 8, "repo": "big"}),
    # nginx's limit_rate lets each request send `rate` bytes in its first second (it allows
    # rate x (seconds since the request started + 1)), so requests of a few MiB are barely
    # capped in a) b) f); this one caps every connection continuously, as CDNs do.
    ("g) 8 MB/s per connection, continuous (slow_cdn)",
     {"server": "slow", "rate": 8e6, "repo": "big"}),
]
SMALL_FILES = 120
SMALL_SIZE = 96 * 1024


# --------------------------------------------------------------------------
# Repo
# --------------------------------------------------------------------------


def small_repo_files() -> dict:
    """SMALL_FILES LFS files (.bin) of SMALL_SIZE bytes, and a config.json."""
    files = {f"part-{i:04d}.bin": SMALL_SIZE for i in range(SMALL_FILES)}
    files["config.json"] = json.dumps({"model_type": "bench-small"}) + "\n"
    return files


def repo_files(size_mib: int) -> dict:
    """~size_mib MiB in total: NSHARDS equal shards plus small files."""
    tok = 2 * MIB
    shard = max(MIB, (size_mib * MIB - tok - 64 * 1024) // NSHARDS)
    files = {}
    weight_map = {}
    for i in range(1, NSHARDS + 1):
        name = f"model-{i:05d}-of-{NSHARDS:05d}.safetensors"
        files[name] = shard
        weight_map[f"layers.{i}.weight"] = name
    files["model.safetensors.index.json"] = json.dumps(
        {"metadata": {"total_size": shard * NSHARDS}, "weight_map": weight_map}, indent=2) + "\n"
    files["config.json"] = json.dumps({
        "architectures": ["BenchForCausalLM"], "model_type": "bench", "hidden_size": 4096,
        "num_hidden_layers": 32, "num_attention_heads": 32, "vocab_size": 32000,
        "torch_dtype": "bfloat16"}, indent=2) + "\n"
    files["tokenizer.json"] = tok
    files["generation_config.json"] = json.dumps(
        {"bos_token_id": 1, "eos_token_id": 2, "max_new_tokens": 256}, indent=2) + "\n"
    files["README.md"] = "# org/bench\n\nSynthetic repo for mx's download benchmark.\n"
    return files


# --------------------------------------------------------------------------
# Running one timed command
# --------------------------------------------------------------------------


def timed(cmd: list[str], env: dict, log: Path, timeout: float) -> dict:
    """Run cmd under /usr/bin/time; returns rc, seconds, rss_kib, cpu_s, stdout."""
    tfile = log.with_suffix(".time")
    full = [TIME_BIN, "-f", "%e %M %U %S", "-o", str(tfile), *cmd]
    t0 = time.monotonic()
    t0_epoch = time.time()
    with open(log, "wb") as err:
        try:
            p = subprocess.run(full, env=env, stdout=subprocess.PIPE, stderr=err,
                               timeout=timeout)
            rc, out = p.returncode, p.stdout.decode(errors="replace")
        except subprocess.TimeoutExpired:
            rc, out = 124, ""
    wall = time.monotonic() - t0
    res = {"rc": rc, "stdout": out, "seconds": wall, "rss_kib": 0, "cpu_s": 0.0,
           "t_start": t0_epoch, "t_end": time.time()}
    try:
        # /usr/bin/time writes "Command exited with non-zero status N" first
        # when the command fails; the numbers are on the last line.
        last = tfile.read_text().strip().splitlines()[-1]
        e, m, u, s = last.split()
        res.update(seconds=float(e), rss_kib=int(m), cpu_s=float(u) + float(s))
    except (OSError, IndexError, ValueError):
        pass
    return res


def drop(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    subprocess.run(["sync"], check=False)


# --------------------------------------------------------------------------
# Access-log accounting
# --------------------------------------------------------------------------

LOG_RE = re.compile(r'"(?P<req>[^"]*)" (?P<status>\d+) (?P<bytes>\d+) range="(?P<range>[^"]*)"'
                    r'.* conn=(?P<conn>\d+) creq=(?P<creq>\d+) rt=(?P<rt>[\d.]+) t=(?P<t>[\d.]+)')


def log_summary(lines: list[str]) -> dict:
    conns: dict[str, int] = collections.Counter()
    statuses: dict[str, int] = collections.Counter()
    ranged = nbytes = 0
    sizes = []
    first = last = None
    for ln in lines:
        m = LOG_RE.search(ln)
        if not m:
            continue
        conns[m["conn"]] += 1
        statuses[m["status"]] += 1
        nbytes += int(m["bytes"])
        if m["range"] != "-":
            ranged += 1
        sizes.append(int(m["bytes"]))
        end = float(m["t"])
        start = end - float(m["rt"])
        first = start if first is None else min(first, start)
        last = end if last is None else max(last, end)
    sizes.sort()
    return {"requests": sum(conns.values()), "connections": len(conns), "ranged": ranged,
            "bytes": nbytes, "statuses": dict(statuses),
            "median_body": sizes[len(sizes) // 2] if sizes else 0,
            "max_reqs_per_conn": max(conns.values()) if conns else 0,
            "first_start": first, "last_end": last}


# --------------------------------------------------------------------------
# Tools
# --------------------------------------------------------------------------


class Ctx:
    """One repo: its files (sizes), the sha256 of its LFS files, where it lives."""

    def __init__(self, args, work: Path, files: dict, sizes: dict, shard_sha: dict,
                 total: int, content: Path, store: Path):
        self.args, self.work, self.files, self.sizes = args, work, files, sizes
        self.shard_sha, self.total = shard_sha, total
        self.content, self.store = content, store
        self.env = base_env()


def urls_for(ctx: Ctx, hub: HubStub, nginx) -> list[tuple[str, str]]:
    """(url, repo path): LFS files straight from the CDN, the rest via the stub."""
    out = []
    for path in sorted(ctx.files):
        if path in ctx.shard_sha:
            out.append((f"{nginx.base_url}/{ctx.shard_sha[path]}", path))
        else:
            out.append((f"{hub.endpoint}/{REPO_ID}/resolve/main/{path}", path))
    return out


def check_plain(ctx: Ctx, dest: Path) -> str:
    """aria2c/curl: every file present with the right size (no hashing)."""
    for path, size in ctx.sizes.items():
        p = dest / path
        if not p.is_file():
            return f"missing {path}"
        if p.stat().st_size != size:
            return f"{path}: size {p.stat().st_size} != {size}"
    return ""


def run_mx(ctx: Ctx, hub, nginx, dest: Path, log: Path, workers: int | None = None) -> dict:
    env = dict(ctx.env, HF_ENDPOINT=hub.endpoint)
    cmd = [ctx.args.mx_bin, "download", REPO_ID, "--cache-dir", str(dest), "--json"]
    if workers:
        cmd += ["--max-workers", str(workers)]
    r = timed(cmd, env, log, ctx.args.timeout)
    r["problem"] = ""
    if r["rc"] != 0:
        r["problem"] = f"exit {r['rc']}: {log.read_text(errors='replace')[-300:].strip()}"
        return r
    try:
        j = json.loads(r["stdout"].strip().splitlines()[-1])
        snap = Path(j["path"])
        r["mx_json"] = {k: j.get(k) for k in ("bytes", "bytes_fetched", "files", "seconds")}
    except (ValueError, KeyError, IndexError) as e:
        r["problem"] = f"bad --json output ({e}): {r['stdout'][:200]!r}"
        return r
    for path, size in ctx.sizes.items():
        p = snap / path
        if not p.is_file() or p.stat().st_size != size:
            r["problem"] = f"snapshot {path} missing or wrong size"
            return r
    for path, sha in ctx.shard_sha.items():
        got = sha256_file(snap / path)
        if got != sha:
            r["problem"] = f"snapshot {path} sha256 {got[:12]} != {sha[:12]}"
            return r
    return r


def run_aria2c(ctx: Ctx, hub, nginx, dest: Path, log: Path) -> dict:
    inp = dest.parent / f"{dest.name}.aria2-input"
    with open(inp, "w") as f:
        for url, path in urls_for(ctx, hub, nginx):
            f.write(f"{url}\n  out={path}\n")
    dest.mkdir(parents=True)
    cmd = ["aria2c", "--no-conf", "-x16", "-s16", "-j4", "-k1M", "--file-allocation=none",
           "--summary-interval=0", "--console-log-level=warn", "-d", str(dest),
           "-i", str(inp)]
    r = timed(cmd, ctx.env, log, ctx.args.timeout)
    inp.unlink(missing_ok=True)
    r["problem"] = f"exit {r['rc']}" if r["rc"] != 0 else check_plain(ctx, dest)
    return r


def run_curl(ctx: Ctx, hub, nginx, dest: Path, log: Path) -> dict:
    lst = dest.parent / f"{dest.name}.curl-list"
    dest.mkdir(parents=True)
    with open(lst, "w") as f:
        for url, path in urls_for(ctx, hub, nginx):
            f.write(f"{url} {dest / path}\n")
    # One curl process per file, strictly one after the other.
    script = 'set -e; while read -r url out; do curl -sSfL -o "$out" "$url"; done < "$1"'
    r = timed(["bash", "-c", script, "bash", str(lst)], ctx.env, log, ctx.args.timeout)
    lst.unlink(missing_ok=True)
    r["problem"] = f"exit {r['rc']}" if r["rc"] != 0 else check_plain(ctx, dest)
    return r


def run_mx16(ctx: Ctx, hub, nginx, dest: Path, log: Path) -> dict:
    return run_mx(ctx, hub, nginx, dest, log, workers=16)


# mx at its defaults (adaptive connections), mx with the old fixed 16.
TOOLS = [("mx", run_mx, "yes"), ("mx-16", run_mx16, "yes"), ("aria2c", run_aria2c, "no"),
         ("curl", run_curl, "no")]


# --------------------------------------------------------------------------
# Scenario loop
# --------------------------------------------------------------------------


def start_cdn(sdir: Path, ctx: Ctx, shape: dict):
    """The CDN of one shape and its request accounting."""
    if shape["server"] == "nginx":
        nginx = BenchNginx(sdir, ctx.store, limit_rate=shape.get("limit"),
                           backlog=shape.get("backlog")).start()
        return nginx, NginxLog(nginx)
    cdn = SlowCdn(ctx.store, delay=shape.get("delay", 0), rate=shape.get("rate", 0)).start()
    return cdn, CdnLog(cdn)


def run_scenario(ctx: Ctx, name: str, shape: dict, hash_cache: Path) -> list[dict]:
    rows = []
    sdir = Path(tempfile.mkdtemp(prefix=f"scn-{name[0]}-", dir=ctx.work))
    cdn, cdn_log = start_cdn(sdir, ctx, shape)
    try:
        with HubStub(sdir, {REPO_ID: {"revisions": {"main": ctx.content}}},
                     lfs_redirect_base=cdn.base_url, lfs_store=ctx.store,
                     hash_cache=hash_cache) as hub:
            print(f"## scenario {name}: CDN {cdn.base_url} {shape}, hub {hub.endpoint}",
                  flush=True)
            rows += run_tools(ctx, name, hub, cdn, cdn_log, sdir)
    finally:
        cdn.stop()
    shutil.rmtree(sdir, ignore_errors=True)
    return rows


def run_tools(ctx: Ctx, name: str, hub, cdn, cdn_log, sdir: Path) -> list[dict]:
    rows = []
    for run_no in range(1, ctx.args.runs + 1):
        for tool, fn, verified in TOOLS:
            if tool not in ctx.args.tools or (tool == "curl" and run_no > ctx.args.curl_runs):
                continue
            dest = sdir / f"{tool}-{run_no}"
            log = sdir / f"{tool}-{run_no}.log"
            drop(dest)
            mark = cdn_log.mark()
            r = fn(ctx, hub, cdn, dest, log)
            if r["problem"]:
                verified = "FAILED"
            r.update(scenario=name, tool=tool, run=run_no, verified=verified,
                     nginx=cdn_log.summary(mark), total=ctx.total)
            r["mbps"] = ctx.total / r["seconds"] / 1e6 if r["seconds"] > 0 else 0.0
            r["cpu_per_gb"] = r["cpu_s"] / (ctx.total / 1e9)
            r.pop("stdout", None)
            rows.append(r)
            status = "OK" if not r["problem"] else f"FAILED: {r['problem']}"
            n = r["nginx"]
            print(f"  {tool:7s} run {run_no}: {r['seconds']:7.2f} s {r['mbps']:8.1f} MB/s "
                  f"rss {r['rss_kib'] / 1024:7.1f} MiB cpu {r['cpu_s']:6.2f} s  "
                  f"cdn {n['requests']} reqs / {n['connections']} conns "
                  f"({n['ranged']} ranged)  {tail_text(r)}  {status}", flush=True)
            drop(dest)
    return rows


def tail_seconds(r: dict) -> float | None:
    """Seconds from the CDN's last byte sent to the tool's exit."""
    end = r["nginx"].get("last_end")
    return None if end is None else max(0.0, r["t_end"] - end)


def tail_text(r: dict) -> str:
    t = tail_seconds(r)
    if t is None or r["seconds"] <= 0:
        return "tail n/a"
    return f"tail {t:.2f} s ({100 * t / r['seconds']:.1f} %)"


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def best(rows, scenario, tool):
    ok = [r for r in rows if r["scenario"] == scenario and r["tool"] == tool
          and not r["problem"]]
    return min(ok, key=lambda r: r["seconds"]) if ok else None


def report(ctxs: dict, rows: list[dict], scenarios: list[str], gen_s: float,
           load: tuple[str, str]) -> tuple[str, bool]:
    cpu = cpu_model("unknown", processor=False)
    date = subprocess.run(["date", "-u"], capture_output=True, text=True).stdout.strip()
    big, small = ctxs["big"], ctxs["small"]
    out = []
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    out.append(f"## {date} — nproc {nproc}, kernel {platform.release()}, {cpu}")
    out.append("")
    out.append(f"Repo `{REPO_ID}` (big): {len(big.files)} files, {big.total} bytes "
               f"({big.total / MIB:.0f} MiB); {NSHARDS} shards of "
               f"{big.sizes[min(big.shard_sha)] / MIB:.1f} MiB. Small: {len(small.files)} files, "
               f"{small.total} bytes ({SMALL_FILES} LFS files of {SMALL_SIZE // 1024} KiB). "
               f"mx: `{big.args.mx_bin}`; {big.args.runs} runs per tool (curl "
               f"{big.args.curl_runs}), interleaved; repos generated in {gen_s:.1f} s. "
               f"Load average at start {load[0]}, at end {load[1]}. mx goes through the hub "
               f"API and its redirects; aria2c and curl get the CDN URLs of LFS files "
               f"directly. mx-16 is `mx download --max-workers 16` (the old fixed default).")
    out.append("")
    out.append("| scenario | tool | run | seconds | MB/s | peak RSS MiB | CPU s/GB | verified | "
               "CDN reqs / conns | tail after last byte | status |")
    out.append("|---|---|---:|---:|---:|---:|---:|---|---|---|---|")
    order = {t: i for i, (t, _, _) in enumerate(TOOLS)}
    table_rows = sorted(rows, key=lambda r: (scenarios.index(r["scenario"]),
                                             order[r["tool"]], r["run"]))
    for r in table_rows:
        b = best(rows, r["scenario"], r["tool"])
        mark = " (best)" if b is r else ""
        status = "ok" if not r["problem"] else f"**FAILED**: {r['problem']}"
        n = r["nginx"]
        t = tail_seconds(r)
        tail = f"{t:.2f} s ({100 * t / r['seconds']:.1f} %)" if t is not None else "n/a"
        out.append(f"| {r['scenario']} | {r['tool']} | {r['run']}{mark} | {r['seconds']:.2f} | "
                   f"{r['mbps']:.1f} | {r['rss_kib'] / 1024:.1f} | {r['cpu_per_gb']:.2f} | "
                   f"{r['verified']} | {n['requests']} / {n['connections']} | {tail} | "
                   f"{status} |")
    out.append("")
    checks = []
    out.append("| scenario | mx / aria2c (time) | mx / mx-16 (time) | mx / curl (time) | "
               "mx tail (best run) |")
    out.append("|---|---:|---:|---:|---:|")
    for s in scenarios:
        mx, m16, ar, cu = (best(rows, s, t) for t in ("mx", "mx-16", "aria2c", "curl"))
        ra = mx["seconds"] / ar["seconds"] if mx and ar else None
        r16 = mx["seconds"] / m16["seconds"] if mx and m16 else None
        rc = mx["seconds"] / cu["seconds"] if mx and cu else None
        t = tail_seconds(mx) if mx else None
        tail = t / mx["seconds"] if t is not None else None
        fmt = lambda v: f"{v:.2f}" if v is not None else "n/a"  # noqa: E731
        out.append(f"| {s} | {fmt(ra)} | {fmt(r16)} | {fmt(rc)} | "
                   f"{f'{100 * tail:.1f} %' if tail is not None else 'n/a'} |")
        checks.append((f"{s}: mx <= 1.1x aria2c's time", ra is not None and ra <= 1.1, fmt(ra)))
        checks.append((f"{s}: mx <= 1.05x mx-16's time", r16 is not None and r16 <= 1.05,
                       fmt(r16)))
        checks.append((f"{s}: mx tail < 5 % of its time", tail is not None and tail < 0.05,
                       f"{100 * tail:.1f} %" if tail is not None else "n/a"))
    mx_rows = [r for r in rows if r["tool"].startswith("mx")]
    peak = max((r["rss_kib"] for r in mx_rows), default=0) / 1024
    checks.append(("mx peak RSS <= 256 MiB (max over all mx runs)", bool(mx_rows) and peak <= 256,
                   f"{peak:.1f} MiB"))
    failed = [r for r in mx_rows if r["problem"]]
    checks.append(("every mx run exit 0 + LFS sha256 match", not failed,
                   f"{len(mx_rows) - len(failed)}/{len(mx_rows)} ok"))
    out.append("")
    out.append("| target | measured | result |")
    out.append("|---|---:|---|")
    for name, ok, val in checks:
        out.append(f"| {name} | {val} | {'PASS' if ok else '**FAIL**'} |")
    out.append("")
    out.append("CDN requests per run (LFS traffic only; requests / distinct connections / "
               "ranged requests / median body bytes / max requests on one connection); tail = "
               "the tool's exit minus the CDN's last byte sent:")
    out.append("")
    for r in table_rows:
        n = r["nginx"]
        extra = ""
        if n["first_start"] is not None:
            extra += (f"; CDN busy from +{n['first_start'] - r['t_start']:.2f} s to "
                      f"+{n['last_end'] - r['t_start']:.2f} s of {r['t_end'] - r['t_start']:.2f} s")
        if r.get("mx_json"):
            extra += f"; mx self-reported {r['mx_json'].get('seconds', 0):.2f} s"
        out.append(f"- {r['scenario']} {r['tool']} run {r['run']}: {n['requests']} reqs, "
                   f"{n['connections']} conns, {n['ranged']} ranged, median body "
                   f"{n['median_body']} B, max {n['max_reqs_per_conn']} reqs/conn, "
                   f"statuses {n['statuses']}, user+sys {r['cpu_s']:.2f} s{extra}")
    out.append("")
    return "\n".join(out), all(ok for _, ok, _ in checks)


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def build_repo(args, work: Path, name: str, files: dict) -> Ctx:
    content, store = work / f"content-{name}", work / f"store-{name}"
    make_repo(content, files)
    sizes = {p: (content / p).stat().st_size for p in files}
    lfs = {p: sha256_file(content / p) for p in files if p.endswith((".safetensors", ".bin"))}
    return Ctx(args, work, files, sizes, lfs, sum(sizes.values()), content, store)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=int(os.environ.get("BENCH_SIZE_MIB", 512)))
    ap.add_argument("--mx-bin", default=os.environ.get("MX_BIN") or
                    str(REPO_ROOT / "build" / "src" / "cli" / "mx"))
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--curl-runs", type=int, default=1)
    ap.add_argument("--scenarios", default="abcdefg", help="letters of SCENARIOS to run")
    ap.add_argument("--tools", default="mx,mx-16,aria2c,curl")
    ap.add_argument("--results", default=str(HERE / "RESULTS.md"))
    ap.add_argument("--no-append", action="store_true", help="print only")
    ap.add_argument("--work", default=str(HERE / "work"))
    ap.add_argument("--timeout", type=float, default=900, help="per-run timeout, seconds")
    args = ap.parse_args()
    args.tools = args.tools.split(",")
    args.mx_bin = str(Path(args.mx_bin).resolve())
    if not os.access(args.mx_bin, os.X_OK):
        sys.exit(f"mx binary not found at {args.mx_bin} (set MX_BIN)")
    for b in (TIME_BIN, shutil.which("aria2c"), shutil.which("curl")):
        if not b or not os.access(b, os.X_OK):
            sys.exit(f"missing tool: {b}")

    Path(args.work).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dl-", dir=args.work))
    load_start = load_average()
    try:
        t0 = time.monotonic()
        ctxs = {"big": build_repo(args, work, "big", repo_files(args.size_mib)),
                "small": build_repo(args, work, "small", small_repo_files())}
        gen_s = time.monotonic() - t0
        for name, c in ctxs.items():
            print(f"repo {name}: {len(c.files)} files, {c.total} bytes "
                  f"({c.total / MIB:.0f} MiB) in {c.content}", flush=True)
        chosen = [(n, shape) for n, shape in SCENARIOS if n[0] in args.scenarios]
        rows = []
        for name, shape in chosen:
            rows += run_scenario(ctxs[shape["repo"]], name, shape, work / "hash-cache.json")
        text, ok = report(ctxs, rows, [n for n, _ in chosen], gen_s, (load_start, load_average()))
        print()
        print(text)
        if not args.no_append:
            with open(args.results, "a") as f:
                f.write(text + "\n")
            print(f"appended to {args.results}")
        return 0 if ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
