#!/usr/bin/env python3
"""Download benchmark: mx vs aria2c vs curl against a local hub + nginx CDN.

Driven by bench/download.sh (see the header there). Python 3 stdlib only; it
reuses tests/integration/harness.py (make_repo, HubStub, Nginx, base_env,
sha256_file) and bench_common.py. Everything listens on 127.0.0.x only.

For each scenario (nginx limit_rate 25m per connection, then unlimited) it
runs every tool RUNS times, interleaved (mx, aria2c, curl, mx, aria2c, curl),
each into a fresh destination directory that is deleted (and the disk
synced) before the next run. Every run is wrapped in
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

REPO_ID = "org/bench"
TIME_BIN = "/usr/bin/time"
NSHARDS = 4


class BenchNginx(Nginx):
    """The harness nginx, with the connection serial number, the request's
    position on its connection and the request time added to the access log
    so connection reuse can be counted per run."""

    def _config(self, port: int) -> str:
        conf = super()._config(port)
        old = "auth=$mx_auth_present';"
        assert old in conf, "harness nginx log_format changed"
        return conf.replace(old, "auth=$mx_auth_present conn=$connection "
                                 "creq=$connection_requests rt=$request_time t=$msec';")


# --------------------------------------------------------------------------
# Repo
# --------------------------------------------------------------------------


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
    def __init__(self, args, work: Path, files: dict, sizes: dict, shard_sha: dict,
                 total: int):
        self.args, self.work, self.files, self.sizes = args, work, files, sizes
        self.shard_sha, self.total = shard_sha, total
        self.env = base_env()


def urls_for(ctx: Ctx, hub: HubStub, nginx: Nginx) -> list[tuple[str, str]]:
    """(url, repo path): shards straight from nginx, the rest via the stub."""
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


def run_mx(ctx: Ctx, hub, nginx, dest: Path, log: Path) -> dict:
    env = dict(ctx.env, HF_ENDPOINT=hub.endpoint)
    cmd = [ctx.args.mx_bin, "download", REPO_ID, "--cache-dir", str(dest), "--json",
           "--max-workers", "16"]
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


TOOLS = [("mx", run_mx, "yes"), ("aria2c", run_aria2c, "no"), ("curl", run_curl, "no")]


# --------------------------------------------------------------------------
# Scenario loop
# --------------------------------------------------------------------------


def run_scenario(ctx: Ctx, name: str, limit: str | None, content: Path, store: Path,
                 hash_cache: Path) -> list[dict]:
    rows = []
    sdir = Path(tempfile.mkdtemp(prefix=f"scn-{name[0]}-", dir=ctx.work))
    with BenchNginx(sdir, store, limit_rate=limit) as nginx, \
            HubStub(sdir, {REPO_ID: {"revisions": {"main": content}}},
                    lfs_redirect_base=nginx.base_url, lfs_store=store,
                    hash_cache=hash_cache) as hub:
        print(f"## scenario {name}: nginx {nginx.base_url} limit_rate={limit or 'off'}, "
              f"hub {hub.endpoint}", flush=True)
        for run_no in range(1, ctx.args.runs + 1):
            for tool, fn, verified in TOOLS:
                if tool not in ctx.args.tools:
                    continue
                dest = sdir / f"{tool}-{run_no}"
                log = sdir / f"{tool}-{run_no}.log"
                drop(dest)
                log_off = nginx.access_log.stat().st_size if nginx.access_log.exists() else 0
                r = fn(ctx, hub, nginx, dest, log)
                time.sleep(0.2)  # let nginx flush the last access-log lines
                with open(nginx.access_log, "rb") as f:
                    f.seek(log_off)
                    lines = f.read().decode(errors="replace").splitlines()
                if r["problem"]:
                    verified = "FAILED"
                r.update(scenario=name, tool=tool, run=run_no, verified=verified,
                         nginx=log_summary(lines))
                r["mbps"] = ctx.total / r["seconds"] / 1e6 if r["seconds"] > 0 else 0.0
                r["cpu_per_gb"] = r["cpu_s"] / (ctx.total / 1e9)
                r.pop("stdout", None)
                rows.append(r)
                status = "OK" if not r["problem"] else f"FAILED: {r['problem']}"
                n = r["nginx"]
                print(f"  {tool:7s} run {run_no}: {r['seconds']:7.2f} s {r['mbps']:8.1f} MB/s "
                      f"rss {r['rss_kib'] / 1024:7.1f} MiB cpu {r['cpu_s']:6.2f} s  "
                      f"nginx {n['requests']} reqs / {n['connections']} conns "
                      f"({n['ranged']} ranged)  {status}", flush=True)
                drop(dest)
    shutil.rmtree(sdir, ignore_errors=True)
    return rows


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def best(rows, scenario, tool):
    ok = [r for r in rows if r["scenario"] == scenario and r["tool"] == tool
          and not r["problem"]]
    return min(ok, key=lambda r: r["seconds"]) if ok else None


def report(ctx: Ctx, rows: list[dict], scenarios: list[str], gen_s: float) -> str:
    cpu = cpu_model("unknown", processor=False)
    date = subprocess.run(["date", "-u"], capture_output=True, text=True).stdout.strip()
    nfiles = len(ctx.files)
    out = []
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    out.append(f"## {date} — nproc {nproc}, kernel {platform.release()}, {cpu}")
    out.append("")
    out.append(f"Repo `{REPO_ID}`: {nfiles} files, {ctx.total} bytes "
               f"({ctx.total / MIB:.0f} MiB, {ctx.total / 1e9:.3f} GB); "
               f"{NSHARDS} shards of {ctx.sizes[min(ctx.shard_sha)] / MIB:.1f} MiB. "
               f"mx: `{ctx.args.mx_bin}`; {ctx.args.runs} runs per tool, interleaved; "
               f"repo generated in {gen_s:.1f} s.")
    out.append("")
    out.append("| scenario | tool | run | seconds | MB/s | peak RSS MiB | CPU s/GB | verified | "
               "nginx reqs / conns | status |")
    out.append("|---|---|---:|---:|---:|---:|---:|---|---|---|")
    order = {t: i for i, (t, _, _) in enumerate(TOOLS)}
    table_rows = sorted(rows, key=lambda r: (scenarios.index(r["scenario"]),
                                             order[r["tool"]], r["run"]))
    for r in table_rows:
        b = best(rows, r["scenario"], r["tool"])
        mark = " (best)" if b is r else ""
        status = "ok" if not r["problem"] else f"**FAILED**: {r['problem']}"
        n = r["nginx"]
        out.append(f"| {r['scenario']} | {r['tool']} | {r['run']}{mark} | {r['seconds']:.2f} | "
                   f"{r['mbps']:.1f} | {r['rss_kib'] / 1024:.1f} | {r['cpu_per_gb']:.2f} | "
                   f"{r['verified']} | {n['requests']} / {n['connections']} | {status} |")
    out.append("")
    checks = []
    out.append("| scenario | mx/aria2c (speed) | mx/curl (speed) |")
    out.append("|---|---:|---:|")
    for s in scenarios:
        mx, ar, cu = (best(rows, s, t) for t in ("mx", "aria2c", "curl"))
        ra = ar["seconds"] / mx["seconds"] if mx and ar else None
        rc = cu["seconds"] / mx["seconds"] if mx and cu else None
        out.append(f"| {s} | {f'{ra:.2f}x' if ra else 'n/a'} | {f'{rc:.2f}x' if rc else 'n/a'} |")
        checks.append((f"mx >= 1.0x aria2c in {s}", ra is not None and ra >= 1.0,
                       f"{ra:.2f}x" if ra else "n/a"))
        if s.startswith("a"):
            checks.append((f"mx >= 10x curl in {s}", rc is not None and rc >= 10.0,
                           f"{rc:.2f}x" if rc else "n/a"))
    mx_rows = [r for r in rows if r["tool"] == "mx"]
    peak = max((r["rss_kib"] for r in mx_rows), default=0) / 1024
    checks.append(("mx peak RSS <= 256 MiB (max over all mx runs)", bool(mx_rows) and peak <= 256,
                   f"{peak:.1f} MiB"))
    failed = [r for r in mx_rows if r["problem"]]
    checks.append(("every mx run exit 0 + shard sha256 match", not failed,
                   f"{len(mx_rows) - len(failed)}/{len(mx_rows)} ok"))
    out.append("")
    out.append("| target | measured | result |")
    out.append("|---|---:|---|")
    for name, ok, val in checks:
        out.append(f"| {name} | {val} | {'PASS' if ok else '**FAIL**'} |")
    out.append("")
    out.append("nginx access log per run (LFS traffic only; requests / distinct connections / "
               "ranged requests / median body bytes / max requests on one connection):")
    out.append("")
    for r in table_rows:
        n = r["nginx"]
        extra = ""
        if n["first_start"] is not None:
            extra += (f"; nginx busy from +{n['first_start'] - r['t_start']:.2f} s to "
                      f"+{n['last_end'] - r['t_start']:.2f} s of {r['t_end'] - r['t_start']:.2f} s")
        if r.get("mx_json"):
            extra += f"; mx self-reported {r['mx_json'].get('seconds', 0):.2f} s"
        out.append(f"- {r['scenario']} {r['tool']} run {r['run']}: {n['requests']} reqs, "
                   f"{n['connections']} conns, {n['ranged']} ranged, median body "
                   f"{n['median_body']} B, max {n['max_reqs_per_conn']} reqs/conn, "
                   f"statuses {n['statuses']}, user+sys {r['cpu_s']:.2f} s{extra}")
    out.append("")
    return "\n".join(out), all(ok for _, ok, _ in checks)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=int(os.environ.get("BENCH_SIZE_MIB", 2048)))
    ap.add_argument("--mx-bin", default=os.environ.get("MX_BIN") or
                    str(REPO_ROOT / "build" / "src" / "cli" / "mx"))
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--limit", default="25m", help="nginx limit_rate for scenario (a)")
    ap.add_argument("--tools", default="mx,aria2c,curl")
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
    try:
        content, store = work / "content", work / "store"
        files = repo_files(args.size_mib)
        t0 = time.monotonic()
        make_repo(content, files)
        gen_s = time.monotonic() - t0
        sizes = {p: (content / p).stat().st_size for p in files}
        total = sum(sizes.values())
        shard_sha = {p: sha256_file(content / p) for p in files if p.endswith(".safetensors")}
        print(f"repo: {len(files)} files, {total} bytes ({total / MIB:.0f} MiB) in {content} "
              f"(generated in {gen_s:.1f} s)", flush=True)
        ctx = Ctx(args, work, files, sizes, shard_sha, total)
        scenarios = [(f"a) limit_rate {args.limit}", args.limit), ("b) unlimited", None)]
        rows = []
        for name, limit in scenarios:
            rows += run_scenario(ctx, name, limit, content, store, work / "hash-cache.json")
        text, ok = report(ctx, rows, [s for s, _ in scenarios], gen_s)
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
