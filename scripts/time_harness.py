"""Time whole flashcore commands as a user runs them: subprocess wall clock, one cold run
then N warm runs (median, min-max), per command and shape; a table, optionally Markdown.

Cold: CuPy's kernel cache and FlashCore's cubin cache (harness/toolchain/prebuild.py) are
fresh empty directories, so every variant and every CuPy kernel compiles. Warm: the same
directories afterwards. After an edit (--edits N): each of N runs first edits the kernel (a
copy of it, through $FLASHCORE_KERNEL, gets one more comment line), so its source hash and
every variant's cache key change, as when a researcher saves the .cu. Each run is a new
process (Python, CuPy, the CUDA context and the harness's worker start every time), as when a
user types the command.

Usage:
  python scripts/time_harness.py                                   # run-all and diagnose, mission
  python scripts/time_harness.py --command run-all --shape 1,8,{S},128 --seq 512 --seq 2048
  python scripts/time_harness.py --warm 5 --markdown timings.md --record
  python scripts/time_harness.py --command run-all --command run-all-1job    # modes at once vs one worker
Runs pass --no-record (results/ stays clean) unless --record.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# name -> the flashcore arguments ({shape} is filled per shape) and extra environment.
# Add commands here.
COMMANDS = {
    "run-all": (["run", "--debug", "all", "--shape", "{shape}"], {}),
    "run-pv": (["run", "--debug", "pv_only", "--shape", "{shape}"], {}),   # issue 26's first row
    "diagnose": (["diagnose", "--shape", "{shape}"], {}),
    # the same with one worker: what running the modes at once buys
    "run-all-1job": (["run", "--debug", "all", "--shape", "{shape}"], {"FLASHCORE_JOBS": "1"}),
    "run-all-2jobs": (["run", "--debug", "all", "--shape", "{shape}"], {"FLASHCORE_JOBS": "2"}),
    "diagnose-1job": (["diagnose", "--shape", "{shape}"], {"FLASHCORE_JOBS": "1"}),
    "startup": (["modes"], {}),        # the CLI's own start-up: the floor under every command
    "run-full": (["run", "--debug", "full", "--shape", "{shape}"], {}),
    # Without --shape: the whole coverage set (issue "Coverage by default").
    "diagnose-coverage": (["diagnose"], {}),
    # the mission shape judged on the host: what --reference-device auto's threshold trades
    "run-pv-host": (["run", "--debug", "pv_only", "--shape", "{shape}", "--reference-device", "cpu"], {}),
    "run-all-host": (["run", "--debug", "all", "--shape", "{shape}", "--reference-device", "cpu"], {}),
    "diagnose-host": (["diagnose", "--shape", "{shape}", "--reference-device", "cpu"], {}),
    "run-all-coverage": (["run", "--debug", "all"], {}),
}
# Floors under every command, not flashcore's: a new Python process that imports CuPy and makes
# the CUDA context (what the harness's worker pays before its first case), and the same with the
# harness's GPU path imported too. A command's time less these is what the harness itself costs.
FLOORS = {
    "floor-cuda": "import cupy; cupy.zeros(1); cupy.cuda.runtime.deviceSynchronize()",
    "floor-worker": "import cupy; cupy.zeros(1); import harness.run.gpu",
}
DEFAULT_COMMANDS = ["run-all", "diagnose"]
DEFAULT_SHAPES = ["mission"]
RECORDING = ("run", "diagnose")        # subcommands that take --record/--no-record
# Targets (seconds), each for one kind of run: "cold" (empty caches), "warm" (the median), "edit"
# (the median right after an edit). Issue "The research loop" (26) for run-pv, run-all and
# diagnose-coverage; the older issues' warm targets for the rest.
TARGETS = {("run-pv", "mission"): [("cold", 10.0)],
           ("run-all", "mission"): [("edit", 2.0)],
           ("diagnose-coverage", "-"): [("cold", 15.0), ("edit", 5.0)],
           ("diagnose", "mission"): [("warm", 5.0)],
           ("run-all-1job", "mission"): [("warm", 3.0)], ("diagnose-1job", "mission"): [("warm", 5.0)],
           ("run-pv-host", "mission"): [("cold", 10.0)], ("run-all-host", "mission"): [("edit", 2.0)],
           ("diagnose-host", "mission"): [("warm", 5.0)],
           # issue "The harness at long sequences", at --shape 1,8,S,128
           ("run-full", "1,8,4096,128"): [("warm", 2.0)], ("diagnose", "1,8,4096,128"): [("warm", 5.0)],
           ("diagnose", "1,8,16384,128"): [("warm", 15.0)]}


@dataclass
class Timing:
    command: str
    shape: str
    argv: list
    cold_s: float
    warm_s: list = field(default_factory=list)
    codes: list = field(default_factory=list)
    last_error: str = ""
    edit_s: list = field(default_factory=list)   # runs right after an edit of the kernel
    kernel_ms: float | None = None      # the kernel's own time at this shape (full mode, CUDA events)

    @property
    def warm_median(self) -> float | None:
        return statistics.median(self.warm_s) if self.warm_s else None

    @property
    def edit_median(self) -> float | None:
        return statistics.median(self.edit_s) if self.edit_s else None

    @property
    def targets(self) -> list:
        return TARGETS.get((self.command, self.shape), [])

    def measured(self, kind: str) -> float | None:
        """The time a target of this kind is judged on (None where that run was not made)."""
        if kind == "cold":
            return None if self.cold_s != self.cold_s else self.cold_s
        return self.warm_median if kind == "warm" else self.edit_median

    @property
    def failed(self) -> bool:
        """A run that errored (exit 2 and up): its time says nothing (1 is a check that failed)."""
        return any(c not in (0, 1) for c in self.codes)


def argv_for(command: str, shape: str, record: bool, flashcore: list) -> list:
    if command in FLOORS:
        return [sys.executable, "-c", FLOORS[command]]
    args = [a.replace("{shape}", shape) for a in COMMANDS[command][0]]
    if args[0] in RECORDING and not record:
        args.append("--no-record")
    return flashcore + args


def expand_shapes(shapes: list, seqs: list) -> list:
    """'1,8,{S},128' once per --seq value; other shapes as given."""
    out = []
    for s in shapes:
        out += [s.replace("{S}", str(n)) for n in seqs] if "{S}" in s else [s]
    return out


def time_once(argv: list, env: dict, timeout: float) -> tuple:
    t0 = time.perf_counter()
    p = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    elapsed = time.perf_counter() - t0
    err = (p.stderr.strip().splitlines() or [""])[-1] if p.returncode not in (0, 1) else ""
    return elapsed, p.returncode, err


def time_command(command: str, shape: str, warm: int, record: bool, flashcore: list, timeout: float,
                 cold_run: bool = True, edits: int = 0) -> Timing:
    """cold_run=False: no run with empty caches (the user's caches, already warm)."""
    argv = argv_for(command, shape, record, flashcore)
    edits = 0 if command in FLOORS else edits
    with tempfile.TemporaryDirectory(prefix="flashcore-cache-") as cache:
        env = dict(os.environ, **COMMANDS.get(command, (None, {}))[1])
        if cold_run:
            env["CUPY_CACHE_DIR"] = os.path.join(cache, "cupy")
            env["FLASHCORE_CUBIN_CACHE"] = os.path.join(cache, "cubins")
            cold, code, err = time_once(argv, env, timeout)
            # a cold run that judged on the host started the device checks' background compile
            # (harness/run/warm_refs.py): the warm runs are timed once it is done, as a user's
            # next runs on this machine would be
            t_wait = time.time()
            while glob.glob(os.path.join(cache, "cupy", "*.warming")) and time.time() - t_wait < timeout:
                time.sleep(0.5)
        else:
            cold, code, err = float("nan"), None, ""
        t = Timing(command, shape, argv, cold, codes=[] if code is None else [code], last_error=err)
        for _ in range(warm):
            s, code, err = time_once(argv, env, timeout)
            t.warm_s.append(s)
            t.codes.append(code)
            t.last_error = err or t.last_error
        if edits:
            # a copy of kernels/ (the kernel includes common/ beside it), the copy's kernel edited
            shutil.copytree(REPO / "kernels", Path(cache) / "edited", ignore=shutil.ignore_patterns("__pycache__"))
            kernel = Path(cache) / "edited" / "flashcore_fused.cu"
            env_edit = dict(env, FLASHCORE_KERNEL=str(kernel))
            for i in range(edits):
                with kernel.open("a") as f:
                    f.write(f"\n// edit {i} at {time.time()}\n")
                s, code, err = time_once(argv, env_edit, timeout)
                t.edit_s.append(s)
                t.codes.append(code)
                t.last_error = err or t.last_error
    return t


HEADERS = ["command", "shape", "cold s", "warm s (median)", "warm min-max", "after an edit s (median)",
           "edit min-max", "edit / warm", "kernel ms", "target", "exit codes"]


def kernel_ms(shape: str) -> float | None:
    """The kernel's own time (full mode, CUDA events, harness/run/bench.do_bench) at a shape, in
    this process: what the harness's cost is compared with."""
    if shape == "-":
        return None
    sys.path.insert(0, str(REPO))
    from harness.check.shapes import parse_shape
    from harness.run.bench import bench_one
    return bench_one(shape, parse_shape(shape), with_sdpa=False).kernel.median_us / 1e3


def target_cell(t: Timing) -> str:
    """Each target with its verdict: "cold <= 15 s met; edit <= 5 s MISSED" ("not run" where
    the run it is judged on was not made, "runs failed" where a run errored)."""
    cells = []
    for kind, limit in t.targets:
        got = t.measured(kind)
        verdict = ("runs failed" if t.failed else "not run" if got is None else
                   "met" if got <= limit else "MISSED")
        cells.append(f"{kind} <= {limit:g} s {verdict}")
    return "; ".join(cells) or "-"


def row(t: Timing) -> list:
    med = t.warm_median
    target = target_cell(t)
    return [t.command, t.shape, "-" if t.cold_s != t.cold_s else f"{t.cold_s:.2f}", "-" if med is None else f"{med:.2f}",
            f"{min(t.warm_s):.2f}-{max(t.warm_s):.2f}" if t.warm_s else "-",
            "-" if t.edit_median is None else f"{t.edit_median:.2f}",
            f"{min(t.edit_s):.2f}-{max(t.edit_s):.2f}" if t.edit_s else "-",
            f"{t.edit_median / med:.2f}x" if t.edit_median and med else "-",
            "-" if t.kernel_ms is None else f"{t.kernel_ms:.3f}", target,
            ",".join(map(str, sorted(set(t.codes))))]


def markdown(timings: list, warm: int, cold: bool = True) -> str:
    first = ("one cold run (empty CuPy and cubin caches), then " if cold else "no cold run (the kernel cache warm), ")
    lines = [f"Wall clock of whole commands (`scripts/time_harness.py`): {first}{warm} warm runs; each run a "
             f"new process.", "",
             "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(row(t)) + " |" for t in timings]
    errors = [f"- `{' '.join(t.argv[2:])}`: {t.last_error}" for t in timings if t.last_error]
    return "\n".join(lines + ([""] + errors if errors else [])) + "\n"


def print_table(timings: list):
    from rich.console import Console
    from rich.table import Table
    table = Table(title="flashcore commands, wall clock (cold: empty CuPy kernel cache)", title_justify="left")
    for h in HEADERS:
        table.add_column(h, justify="left" if h in ("command", "shape", "target") else "right")
    for t in timings:
        table.add_row(*row(t))
    console = Console(width=max(140, Console().width))   # one line per row, also in a log
    console.print(table)
    for t in timings:
        if t.last_error:
            console.print(f"{t.command} {t.shape}: {t.last_error}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--command", action="append", choices=sorted(COMMANDS) + sorted(FLOORS), help="default: " + ", ".join(DEFAULT_COMMANDS))
    ap.add_argument("--shape", action="append", help="mission | short | long | B,H,S,D, '{S}' for each --seq (default mission)")
    ap.add_argument("--seq", action="append", type=int, default=[], help="sequence lengths for shapes with {S}")
    ap.add_argument("--warm", type=int, default=3, help="warm runs after the cold one")
    ap.add_argument("--record", action="store_true", help="let the commands append to results/ (default: --no-record)")
    ap.add_argument("--markdown", help="also write the table as Markdown to this file")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    ap.add_argument("--no-cold", action="store_true", help="skip the run with an empty kernel cache")
    ap.add_argument("--edits", type=int, default=0, help="runs right after an edit of the kernel, per command")
    ap.add_argument("--kernel-time", action="store_true", help="also time the kernel (full mode) at each shape")
    ap.add_argument("--flashcore", default=None,
                    help="how to invoke flashcore (default: this Python on the checkout's cli.py)")
    a = ap.parse_args(argv)
    if any("{S}" in s for s in a.shape or ()) and not a.seq:
        ap.error("a shape with {S} needs --seq")
    shapes = expand_shapes(a.shape or DEFAULT_SHAPES, a.seq)
    flashcore = a.flashcore.split() if a.flashcore else [sys.executable, str(REPO / "cli.py")]
    timings = []
    for command in a.command or DEFAULT_COMMANDS:
        for shape in (shapes if "{shape}" in " ".join(COMMANDS.get(command, ([],))[0]) else ["-"]):
            timings.append(time_command(command, shape, a.warm, a.record, flashcore, a.timeout, not a.no_cold, a.edits))
            print(" ".join(row(timings[-1])), flush=True)    # progress, in case a later run is cut off
    if a.kernel_time:
        ms = {s: kernel_ms(s) for s in dict.fromkeys(t.shape for t in timings)}
        for t in timings:
            t.kernel_ms = ms[t.shape]
    print_table(timings)
    if a.markdown:
        Path(a.markdown).write_text(markdown(timings, a.warm, not a.no_cold))
        print(f"written {a.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
