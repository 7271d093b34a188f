"""`flashcore bisect`: git bisect run in a throw-away worktree (the user's checkout and
uncommitted work stay untouched; the worktree is removed afterwards, also on Ctrl-C).

Each step runs `python -m harness.track.bisect_step` in a subprocess with *this* checkout's
harness and the worktree's kernel: a compile failure is a skip (125), a kernel fault or a
metric over the threshold is bad (1), a harness failure aborts (200). Every step is recorded.

Both ends are measured before git searches (git trusts them): a GOOD that fails or a BAD that
passes stops with no culprit, and a culprit is reported only when its own step was bad and its
parents' good.
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
from harness.track.bisect_step import ABORT, SKIP

RESOURCE_METRICS = ("spills", "regs", "smem")
METRICS = ("max_err",) + RESOURCE_METRICS
HARNESS_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class BisectResult:
    """outcome: "found" (first_bad measured bad, every parent measured good), "candidates"
    (skips leave several), "no_regression" (--bad measured good), "good_fails" (--good
    measured bad), "unverified" (git named a commit the steps do not bear out)."""
    outcome: str
    first_bad: str | None = None
    subject: str = ""
    diffstat: str = ""
    candidates: list = field(default_factory=list)   # when skips leave several
    steps: list = field(default_factory=list)        # step records, in order (both ends first)
    ends: dict = field(default_factory=dict)         # "good"/"bad" -> that end's step record
    message: str = ""
    log: str = ""


def _git(repo, *args, check=True):
    p = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise UsageError(f"git {' '.join(args)}: {(p.stderr.strip() or p.stdout.strip()).splitlines()[-1:] or ['failed']}")
    return p


def _measured(step) -> str:
    v, thr = step.get("value"), step.get("threshold")
    val = "no value" if v is None else f"{v:.4g}"
    return f"{step.get('metric')} {val}, threshold {'the pass rule' if thr is None else f'{thr:g}'}"


def bisect(good: str, bad: str, mode="full", shape="mission", metric="max_err", threshold=None,
           causal=False, repo: Path | None = None, spec: Path | None = None) -> BisectResult:
    """Measure both ends, then let git bisect search between them. A culprit is reported only
    when the steps measured it bad and each of its parents good: `git bisect run` itself
    trusts --bad unmeasured, and would name it even when it passes."""
    if metric not in METRICS:
        raise UsageError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
    if metric in ("regs", "smem") and threshold is None:
        raise UsageError(f"--metric {metric} needs --threshold (bad when the value exceeds it)")
    if threshold is not None and not threshold >= 0:
        raise UsageError(f"--threshold must be a number >= 0, got {threshold}")
    from harness.check.shapes import parse_shape
    from harness.toolchain.variant import Variant
    shp = parse_shape(shape)
    repo = Path(repo or _git(Path.cwd(), "rev-parse", "--show-toplevel").stdout.strip())
    spec_rel = None
    if spec is None:
        Variant(mode, shp.D, causal)
    else:   # a spec'd kernel: the same spec path, read at every commit in the worktree
        from kernels.spec import load
        from harness.toolchain.user_kernel import UserVariant
        k = load(spec)
        k.check_domain(shp.B, shp.H, shp.Sq, shp.Sk, shp.D, causal)
        UserVariant(k, mode, shp.D, causal)
        try:
            spec_rel = Path(spec).resolve().relative_to(repo.resolve())
        except ValueError:
            raise UsageError(f"the spec {spec} is not inside the repository {repo}: bisection reads it at every commit") from None
    good_sha = _git(repo, "rev-parse", "--verify", good + "^{commit}").stdout.strip()
    bad_sha = _git(repo, "rev-parse", "--verify", bad + "^{commit}").stdout.strip()
    if good_sha == bad_sha:
        raise UsageError("--good and --bad are the same commit")
    if _git(repo, "merge-base", "--is-ancestor", good_sha, bad_sha, check=False).returncode != 0:
        raise UsageError(f"--good {good} is not an ancestor of --bad {bad}")
    if metric == "max_err":
        from harness.toolchain.device import require_gpu
        require_gpu()
    bisect_id = uuid.uuid4().hex[:12]
    tmp = Path(tempfile.mkdtemp(prefix="flashcore-bisect-"))
    wt = tmp / "wt"
    case = dict(metric=metric, mode=mode, shape=shape, threshold=threshold, causal=causal,
                bisect_id=bisect_id, kernel=str(wt / "kernels" / "flashcore_fused.cu"),
                spec=str(wt / spec_rel) if spec_rel else None)
    env = dict(os.environ, PYTHONPATH=str(HARNESS_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               FLASHCORE_RESULTS=str(records.results_dir().resolve()))
    step_cmd = [sys.executable, "-m", "harness.track.bisect_step", json.dumps(case)]

    def steps_so_far():
        return [r for r in records.read().records if r.get("bisect_id") == bisect_id]

    def measure_end(sha, which):
        _git(wt, "checkout", "-q", "--detach", sha)
        p = subprocess.run(step_cmd, cwd=wt, capture_output=True, text=True, env=env)
        rec = next((r for r in reversed(steps_so_far()) if r.get("git_commit") == sha), None)
        if p.returncode == ABORT or rec is None:
            tail = [l for l in (p.stdout + p.stderr).splitlines() if l.strip()][-1:] or ["no step record"]
            raise UsageError(f"measuring --{which} {sha[:12]} failed: {tail[0]}")
        if p.returncode == SKIP:
            raise UsageError(f"--{which} {sha[:12]} cannot be measured ({rec.get('message') or 'skipped'}): "
                             f"pick an end that compiles")
        return rec

    try:
        _git(repo, "worktree", "add", "--detach", str(wt), bad_sha)
        ends = {"good": measure_end(good_sha, "good"), "bad": measure_end(bad_sha, "bad")}
        if ends["good"].get("verdict") == "bad":
            return BisectResult("good_fails", steps=steps_so_far(), ends=ends,
                                message=f"GOOD fails the criterion ({_measured(ends['good'])}): nothing to bisect")
        if ends["bad"].get("verdict") == "good":
            return BisectResult("no_regression", steps=steps_so_far(), ends=ends,
                                message=f"no regression: BAD passes ({_measured(ends['bad'])})")
        _git(wt, "bisect", "start", bad_sha, good_sha)
        p = subprocess.run(["git", "bisect", "run", *step_cmd], cwd=wt, capture_output=True, text=True, env=env)
        log = p.stdout + p.stderr
    finally:
        _git(wt, "bisect", "reset", check=False) if wt.exists() else None
        _git(repo, "worktree", "remove", "--force", str(wt), check=False)
        shutil.rmtree(tmp, ignore_errors=True)
        _git(repo, "worktree", "prune", check=False)
    steps = steps_so_far()
    m = re.search(r"^([0-9a-f]{40}) is the first bad commit", log, re.M)
    if m:
        return _verified(repo, m.group(1), steps, ends, log)
    if "skip" in log and "first bad commit could be any of" in log:
        cands = re.findall(r"^([0-9a-f]{40})$", log.split("could be any of:")[-1], re.M)
        return BisectResult("candidates", candidates=cands, steps=steps, ends=ends, log=log)
    tail = [l for l in log.splitlines() if l.strip()][-3:]
    raise UsageError("bisect aborted by a harness failure: " + " / ".join(tail))


def _verified(repo, sha, steps, ends, log) -> BisectResult:
    """git's culprit, kept only if a step measured it bad and each parent good."""
    verdict = {}
    for s in steps:                       # the newest step of each commit
        verdict[s.get("git_commit")] = s.get("verdict")
    parents = _git(repo, "rev-list", "--parents", "-n", "1", sha).stdout.split()[1:]
    why = None
    if verdict.get(sha) != "bad":
        why = f"{sha[:12]} was not measured bad ({verdict.get(sha) or 'never measured'})"
    else:
        unmeasured = [p[:12] for p in parents if verdict.get(p) != "good"]
        if unmeasured:
            why = f"the parent {', '.join(unmeasured)} of {sha[:12]} was not measured good"
    if why:
        return BisectResult("unverified", steps=steps, ends=ends, log=log,
                            message=f"git bisect named {sha[:12]}, but {why}: no culprit reported")
    subject = _git(repo, "log", "-1", "--format=%s", sha).stdout.strip()
    stat = _git(repo, "show", "--stat", "--format=", sha).stdout.strip()
    return BisectResult("found", sha, subject, stat, steps=steps, ends=ends, log=log)
