"""Helpers shared by bench/download_bench.py, serve_bench.py and stream_bench.py.

Python 3 stdlib only. Importing this module puts tests/integration on
sys.path (if it is not there yet), so harness.py and storage_peers.py can be
imported after it; the process stopper is harness.py's own.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
_INTEGRATION = str(REPO_ROOT / "tests" / "integration")
if _INTEGRATION not in sys.path:
    sys.path.insert(0, _INTEGRATION)

from harness import _stop_process  # noqa: E402

# terminate, then SIGKILL the child's process group after a grace period
# (children are started with start_new_session=True).
stop = _stop_process

RESULTS = BENCH_DIR / "RESULTS.md"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------
# Logging, environment, signals
# --------------------------------------------------------------------------


def make_log(tag: str) -> Callable[[str], None]:
    """A log(msg) that prints "[TAG HH:MM:SS] msg", flushed."""
    def log(msg: str) -> None:
        print(f"[{tag} {time.strftime('%H:%M:%S')}] {msg}", flush=True)
    return log


def env_int(name: str, default: int) -> int:
    v = os.environ.get(name, "")
    return int(v) if v.strip() else default


class Terminated(Exception):
    pass


def _on_term(signum, frame):
    raise Terminated(f"signal {signum}")


# --------------------------------------------------------------------------
# /proc readers
# --------------------------------------------------------------------------


def proc_stat(pid: int) -> tuple[float, int]:
    """(utime + stime in seconds, minor page faults) of pid, all threads;
    (0.0, 0) if unreadable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        f = stat[stat.rindex(")") + 2:].split()
        return (int(f[11]) + int(f[12])) / CLK_TCK, int(f[7])
    except (OSError, ValueError, IndexError):
        return 0.0, 0


def proc_cpu(pid: int) -> float:
    """utime + stime of pid (all threads), seconds; 0 if unreadable."""
    return proc_stat(pid)[0]


def machine_busy_s() -> tuple[float, float]:
    """(non-idle CPU seconds, of which irq + softirq) of the whole machine since
    boot (/proc/stat). On this kernel interrupt time is accounted apart from the
    tasks, so loopback TCP receive work done in softirq shows up here and not
    in the server's or the client's CPU time."""
    try:
        f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = f[3] + (f[4] if len(f) > 4 else 0)  # idle + iowait
        busy = sum(f[:8]) - idle  # user nice system idle iowait irq softirq steal
        return busy / CLK_TCK, (f[5] + f[6]) / CLK_TCK
    except (OSError, ValueError, IndexError):
        return 0.0, 0.0


def cpu_model(default: str = "unknown", processor: bool = True) -> str:
    """/proc/cpuinfo's first "model name"; else platform.processor() (unless
    processor is False), else default."""
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                return ln.split(":", 1)[1].strip()
    except OSError:
        pass
    return (platform.processor() if processor else "") or default


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def fmt(v, spec=".1f", none="n/a") -> str:
    return none if v is None else format(v, spec)


def append_results(text: str, log: Callable[[str], None], results: Path = RESULTS) -> None:
    """Append text as a new section of results (bench/RESULTS.md), preceded by
    whatever newlines make exactly one blank line before it; or, with
    BENCH_NO_APPEND set (and not "0"), only say so."""
    if os.environ.get("BENCH_NO_APPEND", "") not in ("", "0"):
        log("BENCH_NO_APPEND set: RESULTS.md not touched")
        return
    old = results.read_bytes()[-2:] if results.exists() else b""
    sep = "" if old in (b"", b"\n\n") or old.endswith(b"\n\n") else (
        "\n" if old.endswith(b"\n") else "\n\n")
    with open(results, "a") as f:
        f.write(sep + text)
    log(f"appended to {results}")


def remove_work(work, base, made_base: bool) -> None:
    """Removes a run's work dir, and bench/work itself when this run created it."""
    import shutil
    shutil.rmtree(work, ignore_errors=True)
    if made_base:
        try:
            base.rmdir()
        except OSError:
            pass


def run_main(main: Callable[[], int], tag: str) -> None:
    """Exits with main()'s status: 130 when interrupted, 2 on a setup error."""
    import sys
    try:
        sys.exit(main())
    except (Terminated, KeyboardInterrupt) as e:
        print(f"{tag}: interrupted ({e})", file=sys.stderr)
        sys.exit(130)
    except RuntimeError as e:
        print(f"{tag}: {e}", file=sys.stderr)
        sys.exit(2)


def targets_table(checks) -> list[str]:
    """Report lines for (name, measured, ok) targets: a markdown table, then one line each."""
    out = ["| target | measured | result |", "|---|---|---|"]
    out += [f"| {name} | {val} | {'PASS' if ok else '**FAIL**'} |" for name, val, ok in checks]
    out.append("")
    out += [f"- {'PASS' if ok else 'FAIL'}: {name}: {val}" for name, val, ok in checks]
    out.append("")
    return out
