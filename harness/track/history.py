"""The error/latency journey per commit (`flashcore history`) and side-by-side comparison of
two commits or run ids (`flashcore compare`), read from the run records."""

from __future__ import annotations

import json
import math
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from harness import records
from harness.errors import UsageError


def _vs(backend: str):
    """Throughput relative to an SDPA backend timed in the same run (its time / the kernel's):
    comparable across machines, unlike the microseconds."""
    def f(r):
        lat = r.get("latency") or {}
        k, b = (lat.get("kernel") or {}).get("median_us"), ((lat.get("sdpa") or {}).get(backend) or {}).get("median_us")
        return b / k if k and b else None
    return f


# metric -> (record kinds that carry it, extractor, unit, lower is better)
METRICS = {
    "max_err": (("run",), lambda r: r.get("max_err"), "abs", True),
    "err_floor": (("run",), lambda r: r.get("err_floor"), "x floor", True),
    "latency": (("bench",), lambda r: ((r.get("latency") or {}).get("kernel") or {}).get("median_us"), "us", True),
    "tflops": (("bench",), lambda r: (r.get("latency") or {}).get("tflops"), "TFLOP/s", False),
    "vs_flash": (("bench",), _vs("sdpa_flash"), "x SDPA flash", False),
    "vs_cudnn": (("bench",), _vs("sdpa_cudnn"), "x SDPA cuDNN", False),
    "regs": (("run", "bench", "compile"), lambda r: (r.get("resources") or {}).get("registers", r.get("registers")), "", True),
    "spills": (("compile",), lambda r: (r.get("spill_stores") or 0) + (r.get("spill_loads") or 0)
               if r.get("kind") == "compile" else None, "B", True),
    "smem": (("run", "bench", "compile"), lambda r: (r.get("resources") or {}).get("smem_dynamic", r.get("smem_dynamic")), "B", True),
}


# metric -> the record field(s) it is read from, to name them in a warning
FIELDS = {"max_err": "max_err", "err_floor": "err_floor", "latency": "latency.kernel.median_us",
          "tflops": "latency.tflops", "vs_flash": "latency (kernel, sdpa.sdpa_flash)",
          "vs_cudnn": "latency (kernel, sdpa.sdpa_cudnn)", "regs": "resources.registers",
          "spills": "spill_stores/spill_loads", "smem": "resources.smem_dynamic"}


def extract(rec, metric: str):
    """(value, why): the metric as a float, or None where the record does not carry it; why
    names the field where the record holds something that is not a number ("abc", a string
    where an object belongs). inf and nan are kept: a kernel that blew up is a result."""
    if metric not in METRICS:
        raise UsageError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
    kinds, fn, _, _ = METRICS[metric]
    if rec.get("kind") not in kinds:
        return None, None
    try:
        v = fn(rec)
        if v is None:
            return None, None
        if type(v) in (int, float):       # not bool, not a numeric string
            return float(v), None
    except (AttributeError, TypeError, OverflowError) as e:   # "latency": "x", "a" + 1, an int past float
        return None, f"field {FIELDS[metric]} has the wrong type ({str(e)[:50]})"
    return None, f"field {FIELDS[metric]} is {json.dumps(v, default=str)[:30]}, not a number"


def metric_value(rec, metric: str):
    """The metric as a float or None (also where the field is damaged: extract() says why)."""
    return extract(rec, metric)[0]


def no_records_hint(metric: str) -> str:
    """Which records carry the metric: spills only `compile --record` writes, so an empty
    spills history usually means none was recorded, not that nothing matched."""
    kinds = METRICS[metric][0]
    if kinds == ("compile",):
        return f"only `flashcore compile --record` records {metric}"
    names = ", ".join(kinds[:-1]) + " or " + kinds[-1] if len(kinds) > 1 else kinds[0]
    return f"{metric} is read from {names} records"


DEFAULT_KERNEL = "flashcore_fused"    # records written before records named their kernel


def matches(rec, mode=None, shape_label=None, causal=None, clean_only=True, kernel=None) -> bool:
    if kernel and (rec.get("kernel") or DEFAULT_KERNEL) != kernel:
        return False
    if mode and rec.get("mode") not in (mode, None) and rec.get("kind") != "compile":
        return False
    if mode and rec.get("kind") == "compile" and not str(rec.get("variant", "")).startswith(mode + " "):
        return False
    if shape_label and rec.get("kind") != "compile" and rec.get("shape_label") != shape_label:
        return False
    if causal is not None and rec.get("kind") != "compile" and bool(rec.get("causal")) != causal:
        return False
    if clean_only and rec.get("bugs"):
        return False
    return True


@dataclass
class Point:
    commit: str
    date: str
    subject: str
    value: float
    n_records: int
    record: object


@dataclass
class GitCommit:
    commit: str        # full hash
    time: int          # committer time, seconds since the epoch: the sort key
    date: str          # committer date, ISO 8601
    subject: str


_HASH = re.compile(r"[0-9a-f]{4,40}")


def git_commits(hashes, repo=None) -> dict:
    """{hash as given (short or full): GitCommit} for the hashes the repository knows; the
    others are absent. Two git calls for them all: `cat-file --batch-check` expands short
    hashes and drops unknown or ambiguous ones (one unknown name makes `git log` fail for
    all), then `log --no-walk` gives time, date and subject. No git, no repository (a copy
    without .git): {}."""
    repo = records.REPO_ROOT if repo is None else repo
    names = sorted({h for h in hashes if isinstance(h, str) and _HASH.fullmatch(h)})   # hex only: never an option
    if not names:
        return {}
    def git(*args, stdin):
        return subprocess.run(["git", *args], cwd=repo, input=stdin, capture_output=True, text=True, timeout=60)
    try:
        p = git("cat-file", "--batch-check=%(objectname) %(objecttype)", stdin="".join(n + "\n" for n in names))
        if p.returncode != 0:
            return {}
        full = {}     # one output line per input line, in order; "<name> missing" for unknown ones
        for name, line in zip(names, p.stdout.splitlines()):
            oid, _, kind = line.partition(" ")
            if kind == "commit":
                full[name] = oid
        if not full:
            return {}
        p = git("log", "--no-walk=unsorted", "--stdin", "--format=%H%x00%ct%x00%cI%x00%s",
                stdin="".join(h + "\n" for h in set(full.values())))
        if p.returncode != 0:
            return {}
    except (OSError, subprocess.SubprocessError):
        return {}
    info = {}
    for line in p.stdout.splitlines():
        f = line.split("\x00")
        if len(f) == 4 and f[1].isdigit():
            info[f[0]] = GitCommit(f[0], int(f[1]), f[2], f[3])
    return {n: info[h] for n, h in full.items() if h in info}


def journey(metric: str, mode=None, shape_label=None, causal=None, paths=None, repo=None, kernel=DEFAULT_KERNEL):
    """One point per commit (the newest matching record of each), oldest commit first by the
    repository's commit time (records' dates may lack the time of day); commits git does not
    know (another clone, rewritten history) follow, by their records' dates. Records whose
    metric field is damaged are skipped and named in the damaged list."""
    rr = records.read(paths)
    damaged = list(rr.damaged)
    picked = []
    for rec in rr.records:
        if not matches(rec, mode, shape_label, causal, kernel=kernel):
            continue
        v, why = extract(rec, metric)
        if why:
            damaged.append(f"{rec.source}:{rec.line}: {why}")
        elif v is not None and rec.get("git_commit"):
            picked.append((rec, v))
    known = git_commits([rec.get("git_commit") for rec, _ in picked], repo)
    per_commit: dict = {}
    for rec, v in picked:       # read() returns oldest first: later records overwrite
        g = known.get(rec.get("git_commit"))
        c = g.commit if g else rec.get("git_commit")    # a short and a full hash of one commit: one row
        per_commit[c] = (rec, v, per_commit.get(c, (None, None, 0))[2] + 1, g)
    rows = []
    for c, (rec, v, n, g) in per_commit.items():
        rdate = rec.get("git_commit_date") or rec.get("time", "")
        key = (0, g.time, "", rec.get("time", "")) if g else (1, 0, rdate, rec.get("time", ""))
        rows.append((key, Point(c, g.date if g else rdate, g.subject if g else rec.get("git_subject") or "", v, n, rec)))
    rows.sort(key=lambda kp: kp[0])
    return [p for _, p in rows], damaged


def history_table(points, metric: str, title: str) -> Table:
    _, _, unit, lower_better = METRICS[metric]
    t = Table(title=title, title_justify="left")
    for c in ("commit", "date", "subject", f"{metric} {unit}".strip(), "trend", "records"):
        t.add_column(c, justify="right" if c.startswith(metric) or c == "records" else "left")
    # bars scale to the finite values; an inf or nan (a kernel that blew up) gets a red "!"
    vmax = max((p.value for p in points if math.isfinite(p.value)), default=0) or 1.0
    prev = None       # the last finite value: the one a change is measured against
    for p in points:
        if not math.isfinite(p.value):
            bar, colour = "!", "red"
        else:
            bar = "█" * max(1, round(24 * p.value / vmax)) if p.value > 0 else "·"
            worse = prev is not None and ((p.value > prev) if lower_better else (p.value < prev))
            colour = "red" if worse and abs(p.value - prev) > 0.05 * max(abs(prev), 1e-30) else "green"
            prev = p.value
        t.add_row(p.commit, p.date[:25], p.subject[:50], f"{p.value:.4g}", f"[{colour}]{bar}[/]", str(p.n_records))
    return t


def check_png_path(path, option: str = "--png") -> Path:
    """Refuses, before any work, a plot path savefig would fail on: a one-line UsageError
    (records.png_path_problem says why; it lives there so lower layers can use it too)."""
    why = records.png_path_problem(path, option)
    if why:
        raise UsageError(why)
    return Path(path)


def save_png(points, metric: str, path: str, title: str):
    check_png_path(path)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--png needs matplotlib: pip install 'flashcore[plot]'") from None
    fig, ax = plt.subplots(figsize=(max(6, len(points) * 0.6), 4))
    ax.plot(range(len(points)), [p.value for p in points], marker="o")
    ax.set_xticks(range(len(points)), [p.commit[:7] for p in points], rotation=45, fontsize=8)
    ax.set_ylabel(metric)
    ax.set_title(title)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as e:      # check_png_path ran before the work; the disk can still fill
        raise UsageError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        plt.close(fig)


# ------------------------------------------------------------------ compare
def _resolve(ref: str, recs) -> list:
    """Records of a run id, or the newest record per case of a commit (hash prefix)."""
    by_id = [r for r in recs if r.get("run_id") == ref]
    if by_id:
        return by_id
    hits = [r for r in recs if (r.get("git_commit") or "").startswith(ref)]
    if not hits and len(ref) >= 4:
        try:
            p = subprocess.run(["git", "rev-parse", "--verify", "--quiet", ref + "^{commit}"], cwd=records.REPO_ROOT,
                               capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError):     # no git here: hash prefixes and run ids only
            p = None
        if p is not None and p.returncode == 0:
            full = p.stdout.strip()
            # records may hold the 7-character hash of the commit: a prefix of the full one
            hits = [r for r in recs if len(r.get("git_commit") or "") >= 7 and full.startswith(r.get("git_commit"))]
    newest: dict = {}
    for r in hits:
        newest[case_key(r)] = r
    return list(newest.values())


def case_key(r) -> tuple:
    return (r.get("kernel") or DEFAULT_KERNEL, r.get("kind"), r.get("mode"), r.get("shape_label"), r.get("causal"),
            r.get("inputs"), tuple(r.get("bugs") or ()), r.get("variant"))


def compare(a: str, b: str, paths=None, damaged: list | None = None, kernel: str = DEFAULT_KERNEL):
    """Rows (case, metric, value a, value b, change) for the cases both sides have, of one
    kernel's records (two run ids are compared whatever their kernel). Damaged lines and metric
    fields (skipped: shown "-") are appended to `damaged` as "file:line: why"."""
    damaged = [] if damaged is None else damaged
    rr = records.read(paths)
    damaged.extend(rr.damaged)
    recs = rr.records
    ra, rb = _resolve(a, recs), _resolve(b, recs)
    if len(ra) > 1 or len(rb) > 1:       # commits: the kernel's own records, so cases pair up
        ra, rb = ([r for r in rs if (r.get("kernel") or DEFAULT_KERNEL) == kernel] for rs in (ra, rb))
    if not ra:
        raise UsageError(f"no records for {a!r} (a commit or a run id)")
    if not rb:
        raise UsageError(f"no records for {b!r} (a commit or a run id)")
    if len(ra) == 1 and len(rb) == 1:
        pairs = [(ra[0], rb[0])]
    else:
        kb = {case_key(r): r for r in rb}
        pairs = [(r, kb[case_key(r)]) for r in ra if case_key(r) in kb]
    rows = []
    for x, y in pairs:
        case = " ".join(str(v) for v in (x.get("kind"), x.get("mode"), x.get("shape_label") or x.get("variant"),
                                        "causal" if x.get("causal") else "", x.get("inputs") or "") if v)
        for metric in METRICS:
            (va, wa), (vb, wb) = extract(x, metric), extract(y, metric)
            for r, why in ((x, wa), (y, wb)):
                if why and f"{r.source}:{r.line}: {why}" not in damaged:
                    damaged.append(f"{r.source}:{r.line}: {why}")
            if va is None and vb is None:
                continue
            change = None if va in (None, 0) or vb is None else 100.0 * (vb - va) / abs(va)
            rows.append((case, metric, va, vb, change))
    return rows


def compare_table(rows, a: str, b: str) -> Table:
    t = Table(title=f"compare {a} -> {b}", title_justify="left")
    for c in ("case", "metric", a[:12], b[:12], "change"):
        t.add_column(c, justify="left" if c in ("case", "metric") else "right")
    for case, metric, va, vb, ch in rows:
        lower_better = METRICS[metric][3]
        worse = ch is not None and ((ch > 0) if lower_better else (ch < 0)) and abs(ch) > 1
        chs = "-" if ch is None else f"[{'red' if worse else 'green'}]{ch:+.1f}%[/]"
        t.add_row(case, metric, "-" if va is None else f"{va:.4g}", "-" if vb is None else f"{vb:.4g}", chs)
    return t
