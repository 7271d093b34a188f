"""`flashcore check`: the regression gate. Exit 0 nothing regressed, 1 something did (named,
with by how much), 125 it could not decide (no GPU for a GPU metric, no baseline). Usable in a
GPU CI job and under `git bisect run`, which reads 125 as "skip this commit" (2 would read as
bad); bad usage stays 2, the same at every commit."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from harness import records
from harness.errors import EXIT_CHECK_FAILED, EXIT_OK, EXIT_UNDECIDED, FlashCoreError
from harness.track.history import _resolve, matches, metric_value


@dataclass
class Finding:
    name: str
    ok: bool | None          # None: could not decide
    detail: str


@dataclass
class CheckResult:
    findings: list = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if any(f.ok is False for f in self.findings):
            return EXIT_CHECK_FAILED
        if any(f.ok is None for f in self.findings):
            return EXIT_UNDECIDED
        return EXIT_OK


def load_baseline(against: str | None, mode: str, shape_label: str, causal: bool = False,
                  kernel: str | None = None) -> list:
    """Records of a revision (from results/) or of a JSON / JSON Lines file, for this case."""
    import sys
    from harness.errors import UsageError    # imports here: only this function is changed for damaged files
    if against is None:
        return []
    p = Path(against)
    damaged = []
    if p.is_file():
        try:
            data = json.loads(p.read_bytes())
            items = data if isinstance(data, list) else [data]
            recs = []
            for n, d in enumerate(items, 1):     # the types read() checks on a line, here per item
                why = records.validate(d)
                if why:
                    damaged.append(f"{p.name}:item {n}: {why}")
                else:
                    recs.append(records.Record(d, p.name, n))
        except (ValueError, UnicodeDecodeError):    # not one JSON document: JSON Lines, read() skips damaged lines
            rr = records.read([p])
            recs, damaged = rr.records, rr.damaged
        except OSError as e:
            raise UsageError(f"--against {against}: {e.strerror or e}") from None
    else:
        rr = records.read()
        recs, damaged = _resolve(against, rr.records), rr.damaged
    # check's findings have no place for them, and they must not pass unsaid: stderr, as history does
    for d in damaged:
        print(f"flashcore: warning: skipped damaged record {d}", file=sys.stderr)
    return [r for r in recs if matches(r, mode, shape_label, causal, kernel=kernel)]


def _baseline_value(baseline, metric):
    vals = [metric_value(r, metric) for r in baseline]
    vals = [v for v in vals if v is not None]
    return vals[-1] if vals else None


def check(mode="full", shape=None, causal=False, against=None, max_error=None, max_slowdown=None,
          max_regs=None, no_spills=False, spec=None) -> CheckResult:
    """spec: a spec'd kernel (kernels/spec.py) gated instead of flashcore_fused: its resources
    by NVRTC, its check by harness/run/asis.py, its baseline among its own records."""
    from harness.check.shapes import parse_shape
    from harness.toolchain.variant import Variant
    shape = shape or parse_shape("mission")
    if spec is None:
        Variant(mode, shape.D, causal)     # validate first
    else:
        from harness.toolchain.user_kernel import UserVariant
        spec.check_domain(shape.B, shape.H, shape.Sq, shape.Sk, shape.D, causal)
        UserVariant(spec, mode, shape.D, causal)
    res = CheckResult()
    baseline = load_baseline(against, mode, shape.label, causal, kernel=spec.name if spec else None)
    if against is not None and not baseline:
        res.findings.append(Finding("baseline", None, f"no records for {mode} {shape.label} in {against!r}"))
    # -- resources: NVRTC, no GPU needed
    if max_regs is not None or no_spills or against is not None:
        if spec is None:
            from harness.toolchain.compiler import compile_check
            r = compile_check(Variant(mode, shape.D, causal))
        else:
            from harness.toolchain.user_kernel import UserVariant, compile_check as spec_compile_check
            r = spec_compile_check(UserVariant(spec, mode, shape.D, causal, (), "sm_90"))
        if max_regs is not None:
            res.findings.append(Finding("regs", r.registers <= max_regs,
                                        f"{r.registers} registers (limit {max_regs}, {r.registers - max_regs:+d})"))
        elif baseline and _baseline_value(baseline, "regs") is not None:
            b = _baseline_value(baseline, "regs")
            res.findings.append(Finding("regs", r.registers <= b, f"{r.registers} registers vs baseline {b:.0f} ({r.registers - b:+.0f})"))
        if no_spills:
            res.findings.append(Finding("spills", r.spill_bytes == 0, f"{r.spill_bytes} spill bytes"))
    # -- GPU metrics
    wants_gpu = max_error is not None or max_slowdown is not None or not res.findings or against is not None
    if wants_gpu:
        try:
            from harness.toolchain.device import require_gpu
            from harness.run.gpu import run_mode
            require_gpu()
        except FlashCoreError as e:
            res.findings.append(Finding("GPU metrics", None, f"cannot decide: {e}"))
            return res
        if spec is None:
            rr = run_mode(mode, shape, causal=causal, inputs="randn")
        else:
            from harness.run.asis import run_spec
            rr = run_spec(spec, mode, shape, causal)
        worst = max((m.max_abs for m in rr.metrics), default=float("inf"))
        res.findings.append(Finding("verdict", rr.passed, f"{mode} {shape.label}: " + (
            "passes the floor rule" if rr.passed else f"fails ({rr.status} {rr.message})".strip())))
        if max_error is not None:
            res.findings.append(Finding("max_err", worst <= max_error, f"max abs error {worst:.3e} (limit {max_error:.3e})"))
        if max_slowdown is not None:
            b = _baseline_value(baseline, "latency")
            if b is None:
                how = f"flashcore bench --kernel {spec.spec_path}" if spec is not None else "flashcore bench"
                res.findings.append(Finding("latency", None, f"cannot decide: no baseline latency (run {how} at the baseline)"))
            else:
                from harness.run.bench import bench_one, bench_spec
                row = (bench_one("check", shape, causal, mode, with_sdpa=False) if spec is None
                       else bench_spec("check", spec, shape, causal, with_sdpa=False))
                now = row.kernel.median_us
                pct = 100.0 * (now - b) / b
                res.findings.append(Finding("latency", pct <= max_slowdown,
                                            f"{now:.1f} us vs baseline {b:.1f} us ({pct:+.1f}%, limit +{max_slowdown}%)"))
    return res
