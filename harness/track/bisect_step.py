"""python -m harness.track.bisect_step CASE_JSON -- one `git bisect run` step (see bisect.py).
Exit 0 good, 1 bad, 125 skip (does not compile), 200 abort (the harness itself failed)."""

import json
import subprocess
import sys

GOOD, BAD, SKIP, ABORT = 0, 1, 125, 200


def main() -> int:
    case = json.loads(sys.argv[1])
    import os
    head = subprocess.run(["git", "log", "-1", "--format=%H%x00%s%x00%cI"], capture_output=True, text=True)
    commit, subject, date = head.stdout.strip().split("\x00")
    os.environ.update(FLASHCORE_GIT_COMMIT=commit, FLASHCORE_GIT_SUBJECT=subject, FLASHCORE_GIT_DATE=date,
                      FLASHCORE_KERNEL=case["kernel"])
    from harness import records
    from harness.toolchain.compiler import CompileError, compile_check, source_hash
    from harness.errors import UsageError
    from harness.check.shapes import parse_shape
    from harness.toolchain.variant import Variant
    shape = parse_shape(case["shape"])
    metric, thr = case["metric"], case["threshold"]
    rec = dict(bisect_id=case["bisect_id"], metric=metric, mode=case["mode"], shape_label=shape.label,
               threshold=thr, causal=case["causal"])
    spec = None
    try:
        if case.get("spec"):      # a spec'd kernel, as its spec at this commit says
            from kernels.spec import load
            spec = load(case["spec"])
            rec["kernel"] = spec.name
            sha = source_hash(spec.source)
        else:
            sha = source_hash()
    except UsageError as e:        # no kernel file (or spec) at this commit
        records.append(records.new_record("bisect_step", verdict="skip", value=None, message=str(e), **rec))
        return SKIP
    try:
        if spec is not None:
            value, bad, message = _spec_step(spec, case, shape, metric, thr)
        elif metric in ("spills", "regs", "smem"):
            r = compile_check(Variant(case["mode"], shape.D, case["causal"]))
            value = {"spills": r.spill_bytes, "regs": r.registers, "smem": r.smem_static + r.smem_dynamic}[metric]
            bad = value > (thr if thr is not None else 0)
            message = ""
        else:
            from harness.run.gpu import run_mode
            rr = run_mode(case["mode"], shape, causal=case["causal"], inputs="randn")
            if rr.status == "compile_error":
                raise CompileError(rr.message)
            value = max((m.err_over_floor for m in rr.metrics), default=float("inf"))
            bad = (rr.status != "ok") or (not rr.passed if thr is None else value > thr)
            message = rr.message
    except CompileError as e:
        records.append(records.new_record("bisect_step", verdict="skip", value=None, kernel_sha256=sha,
                                          message=str(e).splitlines()[0], **rec))
        return SKIP
    except Exception as e:   # the harness itself failed: stop the bisection
        print(f"flashcore bisect step: harness failure: {type(e).__name__}: {e}", file=sys.stderr)
        return ABORT
    records.append(records.new_record("bisect_step", verdict="bad" if bad else "good", value=value,
                                      kernel_sha256=sha, message=message, **rec))
    return BAD if bad else GOOD


def _spec_step(spec, case, shape, metric, thr):
    """(value, bad, message) of one step for a spec'd kernel: NVRTC resources, or the GPU check."""
    from harness.toolchain.compiler import CompileError
    from harness.toolchain.user_kernel import UserVariant, compile_check
    if metric in ("spills", "regs", "smem"):
        r = compile_check(UserVariant(spec, case["mode"], shape.D, case["causal"], (), "sm_90"))
        if metric == "smem":
            from kernels.spec import launch_geometry
            names = spec.names(shape.B, shape.H, shape.Sq, shape.Sk, shape.D, 1.0, case["causal"])
            value = r.smem_static + launch_geometry(spec, names)[2]
        else:
            value = {"spills": r.spill_bytes, "regs": r.registers}[metric]
        return value, value > (thr if thr is not None else 0), ""
    from harness.run.asis import run_spec
    rr = run_spec(spec, case["mode"], shape, case["causal"])
    if rr.status == "compile_error":
        raise CompileError(rr.message)
    value = max((m.err_over_floor for m in rr.metrics), default=float("inf"))
    return value, (rr.status != "ok") or (not rr.passed if thr is None else value > thr), rr.message


if __name__ == "__main__":
    sys.exit(main())
