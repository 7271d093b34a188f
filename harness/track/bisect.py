"""`flashcore bisect`: git bisect run in a throw-away worktree (the user's checkout and
uncommitted work stay untouched; the worktree is removed afterwards, also on Ctrl-C).

Each step runs `python -m harness.track.bisect_step` in a subprocess with *this* checkout's
harness and the worktree's kernel: a compile failure is a skip (125), a kernel fault or a
metric over the threshold is bad (1), a harness failure aborts (200). Every step is recorded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from harness import records
from harness.errors import UsageError

RESOURCE_METRICS = ("spills", "regs", "smem")
METRICS = ("max_err",) + RESOURCE_METRICS
HARNESS_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class BisectResult:
    first_bad: str | None
    subject: str = ""
    diffstat: str = ""
    candidates: list = field(default_factory=list)   # when skips leave several
    steps: list = field(default_factory=list)        # step records, in order
    log: str = ""


def _git(repo, *args, check=True):
    p = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise UsageError(f"git {' '.join(args)}: {(p.stderr.strip() or p.stdout.strip()).splitlines()[-1:] or ['failed']}")
    return p


def bisect(good: str, bad: str, mode="full", shape="mission", metric="max_err", threshold=None,
           causal=False, repo: Path | None = None) -> BisectResult:
    if metric not in METRICS:
        raise UsageError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
    if metric in ("regs", "smem") and threshold is None:
        raise UsageError(f"--metric {metric} needs --threshold (bad when the value exceeds it)")
    from harness.check.shapes import parse_shape
    from harness.build.variant import Variant
    shp = parse_shape(shape)
    Variant(mode, shp.D, causal)
    repo = Path(repo or _git(Path.cwd(), "rev-parse", "--show-toplevel").stdout.strip())
    good_sha = _git(repo, "rev-parse", "--verify", good + "^{commit}").stdout.strip()
    bad_sha = _git(repo, "rev-parse", "--verify", bad + "^{commit}").stdout.strip()
    if metric == "max_err":
        from harness.build.device import require_gpu
        require_gpu()
    bisect_id = uuid.uuid4().hex[:12]
    tmp = Path(tempfile.mkdtemp(prefix="flashcore-bisect-"))
    wt = tmp / "wt"
    case = dict(metric=metric, mode=mode, shape=shape, threshold=threshold, causal=causal,
                bisect_id=bisect_id, kernel=str(wt / "kernels" / "flashcore_fused.cu"))
    env = dict(os.environ, PYTHONPATH=str(HARNESS_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               FLASHCORE_RESULTS=str(records.results_dir().resolve()))
    try:
        _git(repo, "worktree", "add", "--detach", str(wt), bad_sha)
        _git(wt, "bisect", "start", bad_sha, good_sha)
        p = subprocess.run(["git", "bisect", "run", sys.executable, "-m", "harness.track.bisect_step", json.dumps(case)],
                           cwd=wt, capture_output=True, text=True, env=env)
        log = p.stdout + p.stderr
    finally:
        _git(wt, "bisect", "reset", check=False) if wt.exists() else None
        _git(repo, "worktree", "remove", "--force", str(wt), check=False)
        shutil.rmtree(tmp, ignore_errors=True)
        _git(repo, "worktree", "prune", check=False)
    steps = [r for r in records.read().records if r.get("bisect_id") == bisect_id]
    m = re.search(r"^([0-9a-f]{40}) is the first bad commit", log, re.M)
    if m:
        sha = m.group(1)
        subject = _git(repo, "log", "-1", "--format=%s", sha).stdout.strip()
        stat = _git(repo, "show", "--stat", "--format=", sha).stdout.strip()
        return BisectResult(sha, subject, stat, steps=steps, log=log)
    if "skip" in log and "first bad commit could be any of" in log:
        cands = re.findall(r"^([0-9a-f]{40})$", log.split("could be any of:")[-1], re.M)
        return BisectResult(None, candidates=cands, steps=steps, log=log)
    if "exited with error code" in log or "bisect run cannot continue" in log or "bisect run failed" in log:
        tail = [l for l in log.splitlines() if l.strip()][-3:]
        raise UsageError("bisect aborted by a harness failure: " + " / ".join(tail))
    return BisectResult(None, steps=steps, log=log)
