"""Probes only, no debug flag: where does `diagnose --probes` place each seeded bug of
flashcore_fused (through kernels/flashcore_fused.toml) and of the outsider kernel, against the
stage the flag-based bisection names (debug_modes/bugs.py; the outsider's from its spec)? And
how many clean probe diagnoses raise a false alarm?

python scripts/probe_validation.py [--seeds N] [--markdown PATH]
"""

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FUSED = ROOT / "kernels" / "flashcore_fused.toml"
OUTSIDER = ROOT / "kernels" / "outsider" / "attention.toml"
# The stage each outsider bug belongs to, as its author would bisect it with flags.
OUTSIDER_STAGES = {"TAIL_KEYS": "qk", "RACE": "glue", "OOB_WRITE": "pv", "HANG": "all"}   # RACE: see test_gpu_asis


def placements(spec, expected: dict, seed: int, isolate_bugs=()):
    from harness.run import probe_sweep
    rows = []
    for bug, want in expected.items():
        t0 = time.monotonic()
        rep = probe_sweep.sweep(spec, seed=seed, bugs=(bug,), isolate=bug in isolate_bugs, show=False)
        got = rep.stage
        words = next((o.detail for o in rep.failing if o.stage == got), "")
        feat = rep.attribution.text() if rep.attribution else "-"
        rows.append((bug, want, got or "none", got == want, words, feat, time.monotonic() - t0))
    return rows


def false_alarms(spec, seeds):
    from harness.run import probe_sweep
    n, bad = 0, []
    for seed in seeds:
        rep = probe_sweep.sweep(spec, seed=seed, isolate=False, show=False)
        n += len(rep.outcomes)
        bad += [f"seed {seed} {o.case.label}: {o.stage} {o.detail}" for o in rep.failing]
    return n, bad


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--markdown", default=None)
    a = ap.parse_args()
    from debug_modes import BUGS
    out = ["# Probes only: placement of the seeded bugs (`scripts/probe_validation.py`)", ""]
    for name, spec, expected, iso in (("flashcore_fused", FUSED, {b: BUGS[b].stage for b in BUGS}, ()),
                                      ("outsider", OUTSIDER, OUTSIDER_STAGES, ("HANG",))):
        rows = placements(spec, expected, 1, iso)
        hits = sum(r[3] for r in rows)
        out += [f"## {name}: {hits} of {len(rows)} placed in the flag-based stage", "",
                "| bug | flag stage | probe stage | same | evidence | separating feature | s |", "|---|---|---|---|---|---|---|"]
        out += [f"| {b} | {w} | {g} | {'yes' if ok else 'no'} | {words} | {feat} | {t:.1f} |" for b, w, g, ok, words, feat, t in rows]
        n, bad = false_alarms(spec, range(100, 100 + a.seeds))
        out += ["", f"clean: {n} probe diagnoses over the coverage set x {a.seeds} seeds, {len(bad)} false alarm(s)"]
        out += [f"- {x}" for x in bad[:10]] + [""]
        print("\n".join(out[-(len(rows) + 8):]), flush=True)
    text = "\n".join(out)
    if a.markdown:
        Path(a.markdown).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
