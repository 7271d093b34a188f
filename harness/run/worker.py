"""python -m harness.run.worker CASE_JSON OUT_PICKLE: run one case in a fresh process (see runs.py)."""

import json
import pickle
import sys

from harness.run.runs import run_case


def main():
    case, out = json.loads(sys.argv[1]), sys.argv[2]
    result = run_case(case, isolate=False)
    with open(out, "wb") as f:
        pickle.dump(result, f)


if __name__ == "__main__":
    main()
