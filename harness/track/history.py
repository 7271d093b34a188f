"""The error/latency journey per commit (`flashcore history`) and side-by-side comparison of
two commits or run ids (`flashcore compare`), read from the run records."""

from __future__ import annotations

from dataclasses import dataclass

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


def metric_value(rec, metric: str):
    if metric not in METRICS:
        raise UsageError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
    kinds, fn, _, _ = METRICS[metric]
    if rec.get("kind") not in kinds:
        return None
    try:
        v = fn(rec)
    except (AttributeError, TypeError):
        return None
    return float(v) if v is not None else None


def matches(rec, mode=None, shape_label=None, causal=None, clean_only=True) -> bool:
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


def journey(metric: str, mode=None, shape_label=None, causal=None, paths=None):
    """One point per commit (the newest matching record of each), oldest commit first."""
    rr = records.read(paths)
    per_commit: dict = {}
    for rec in rr.records:      # read() returns oldest first: later records overwrite
        if not matches(rec, mode, shape_label, causal):
            continue
        v = metric_value(rec, metric)
        c = rec.get("git_commit")
        if v is None or not c:
            continue
        n = per_commit.get(c, (None, 0))[1] + 1
        per_commit[c] = (rec, n)
    points = [Point(c, rec.get("git_commit_date") or rec.get("time", ""), rec.get("git_subject") or "",
                    metric_value(rec, metric), n, rec) for c, (rec, n) in per_commit.items()]
    points.sort(key=lambda p: (p.date, p.record.get("time", "")))
    return points, rr.damaged


def history_table(points, metric: str, title: str) -> Table:
    _, _, unit, lower_better = METRICS[metric]
    t = Table(title=title, title_justify="left")
    for c in ("commit", "date", "subject", f"{metric} {unit}".strip(), "trend", "records"):
        t.add_column(c, justify="right" if c.startswith(metric) or c == "records" else "left")
    vmax = max((p.value for p in points), default=0) or 1.0
    prev = None
    for p in points:
        bar = "█" * max(1, round(24 * p.value / vmax)) if p.value > 0 else "·"
        worse = prev is not None and ((p.value > prev) if lower_better else (p.value < prev))
        colour = "red" if worse and abs(p.value - prev) > 0.05 * max(abs(prev), 1e-30) else "green"
        t.add_row(p.commit[:10], p.date[:19], p.subject[:50], f"{p.value:.4g}", f"[{colour}]{bar}[/]", str(p.n_records))
        prev = p.value
    return t


def save_png(points, metric: str, path: str, title: str):
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
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------ compare
def _resolve(ref: str, recs) -> list:
    """Records of a run id, or the newest record per case of a commit (hash prefix)."""
    by_id = [r for r in recs if r.get("run_id") == ref]
    if by_id:
        return by_id
    hits = [r for r in recs if (r.get("git_commit") or "").startswith(ref)]
    if not hits and len(ref) >= 4:
        import subprocess
        p = subprocess.run(["git", "rev-parse", "--verify", "--quiet", ref + "^{commit}"], cwd=records.REPO_ROOT,
                           capture_output=True, text=True)
        if p.returncode == 0:
            hits = [r for r in recs if r.get("git_commit") == p.stdout.strip()]
    newest: dict = {}
    for r in hits:
        newest[case_key(r)] = r
    return list(newest.values())


def case_key(r) -> tuple:
    return (r.get("kind"), r.get("mode"), r.get("shape_label"), r.get("causal"), r.get("inputs"),
            tuple(r.get("bugs") or ()), r.get("variant"))


def compare(a: str, b: str, paths=None):
    """Rows (case, metric, value a, value b, change) for the cases both sides have."""
    recs = records.read(paths).records
    ra, rb = _resolve(a, recs), _resolve(b, recs)
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
            va, vb = metric_value(x, metric), metric_value(y, metric)
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
