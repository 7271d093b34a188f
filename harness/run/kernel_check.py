"""`flashcore kernel check SPEC`: is the spec right about the kernel? Compile it (NVRTC, no
GPU needed), launch one tiny shape in a worker process, and say in plain words what happened:
each output written or not, NaN, writes outside, a fault or a hang, and how far the result is
from the float64 reference. A finding is (ok, text): ok None means "not checked".
"""

from __future__ import annotations

from harness.toolchain import user_kernel
from harness.check.shapes import Shape
from harness.errors import FlashCoreError
from kernels import spec as kspec


def tiny_shape(spec: kspec.Spec) -> Shape:
    """One batch, one head, a tile and a half of queries (a full tile and a tail)."""
    S = spec.block_m + spec.block_m // 2 + 1
    return Shape(1, 1, S, S, spec.head_dims[0])


def check(spec_path, gpu: bool = True) -> list:
    spec = kspec.load(spec_path)
    out = [(True, f"spec {spec_path}: {len(spec.args)} arguments, {len(spec.outputs)} outputs "
                  f"({', '.join(a.name + ':' + a.role for a in spec.outputs)}), tiles {spec.block_m}x{spec.block_n}, "
                  f"{len(spec.flags)} debug flag(s), {len(spec.bugs)} seeded bug(s)")]
    prepared = user_kernel.prepared_source(spec)
    if prepared.removed:
        out.append((True, "cut before compiling (host code): " + "; ".join(prepared.removed)))
    try:
        r = user_kernel.compile_check(user_kernel.UserVariant(spec, "full", spec.head_dims[0], False, (), "sm_80"))
        out.append((r.spill_bytes == 0, f"compiles for sm_80: entry {spec.entry}, {r.registers} registers, "
                                        f"{r.spill_bytes} spill bytes"))
    except FlashCoreError as e:
        out.append((False, f"does not compile: {str(e).splitlines()[0]} (the log: flashcore compile --kernel {spec_path})"))
        return out
    if not gpu:
        out.append((None, "no GPU here: not launched"))
        return out
    from harness.run import asis_sweep
    shape = tiny_shape(spec)
    names = spec.names(shape.B, shape.H, shape.Sq, shape.Sk, shape.D, 1.0, False)
    grid, block, smem = kspec.launch_geometry(spec, names)
    res = asis_sweep.run_cases([asis_sweep.make_case(spec_path, "full", shape, False, seed=1)])[0]
    where = f"at {shape.label}: grid {grid}, block {block}, {smem} B dynamic shared memory"
    if res.status != "ok":
        out.append((False, f"launched {where}: {res.status.upper()}: {res.message.splitlines()[0]}"))
        return out
    out.append((True, f"launched {where}: finished"))
    for m in res.metrics:
        words = []
        if m.n_unwritten:
            words.append(f"{m.n_unwritten} of {m.n_elements} elements never written (is the role or init right?)")
        if m.n_nonfinite:
            words.append(f"{m.n_nonfinite} NaN/Inf")
        if m.extra.get("written_outside"):
            words.append(f"{m.extra['written_outside']} elements written outside it")
        if m.extra.get("nondeterministic"):
            words.append(f"{m.extra['nondeterministic']} elements differ between two launches")
        if m.extra.get("read_outside"):
            words.append(f"reads past the end of {', '.join(m.extra['read_outside'])}")
        words.append(f"max error {m.max_abs:.3g} = {m.err_over_floor:.3g}x the precision floor "
                     f"({'within' if m.max_abs <= m.tol else 'beyond'} the tolerance)")
        out.append((m.passed, f"output {m.output}: " + "; ".join(words)))
    return out
