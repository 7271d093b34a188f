"""python -m harness.run.sanitize_target CASE_JSON: one launch of one variant, for compute-sanitizer.
CuPy's memory pool is switched off so each buffer is its own allocation."""

import json
import sys


def main():
    import cupy
    cupy.cuda.set_allocator(None)
    cupy.cuda.set_pinned_memory_allocator(None)
    from harness.run.gpu import prepare
    from harness.check.shapes import Shape
    case = json.loads(sys.argv[1])
    pre = prepare(case["mode"], Shape(**case["shape"]), causal=case["causal"], bugs=tuple(case["bugs"]),
                  seed=case["seed"])
    pre.launch()
    print("FLASHCORE_TARGET_OK", flush=True)


if __name__ == "__main__":
    main()
