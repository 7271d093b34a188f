"""python -m harness.run.sanitize_target CASE_JSON: one launch of one variant, for compute-sanitizer.
CuPy's memory pool is switched off so each buffer is its own allocation."""

import json
import sys


def main():
    import cupy
    cupy.cuda.set_allocator(None)
    cupy.cuda.set_pinned_memory_allocator(None)
    from harness.check.shapes import Shape
    case = json.loads(sys.argv[1])
    shape = Shape(**case["shape"])
    if case.get("spec"):
        launch_spec(case, shape)
    else:
        from harness.run.gpu import prepare
        pre = prepare(case["mode"], shape, causal=case["causal"], bugs=tuple(case["bugs"]), seed=case["seed"])
        pre.launch()
    print("FLASHCORE_TARGET_OK", flush=True)


def launch_spec(case: dict, shape):
    """One launch of a spec'd kernel as written, guard margins and all (harness/run/asis.py)."""
    import math
    from harness.run import asis
    from harness.toolchain.device import runtime_arch
    from harness.toolchain.user_kernel import UserVariant
    from kernels.spec import load
    spec = load(case["spec"])
    variant = UserVariant(spec, case["mode"], shape.D, case["causal"], tuple(case["bugs"]), runtime_arch())
    host = asis.spec_inputs(spec, shape, "randn", case["seed"])
    launch = asis.build_launch(variant, shape, 1.0 / math.sqrt(shape.D), host)
    launch.run(variant.label, 600)


if __name__ == "__main__":
    main()
