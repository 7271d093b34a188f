"""`flashcore watch` on the GPU, as a researcher uses it: a copy of the kernel is watched while
this script saves three edits into it (a comment, a seeded bug, the fix), waiting for each
verdict before the next save. Prints the watch's own output with the time of each line, and
exits 1 unless the three edits read "no change", a newly failing stage, and "passes now".

python scripts/watch_demo.py [--shape mission] [--timeout 240]
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="mission")
    ap.add_argument("--timeout", type=float, default=240)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        # a copy of kernels/ (the kernel includes common/ beside it), its kernel edited
        shutil.copytree(ROOT / "kernels", Path(tmp) / "kernels", ignore=shutil.ignore_patterns("__pycache__"))
        kernel = Path(tmp) / "kernels" / "flashcore_fused.cu"
        clean = kernel.read_text()
        env = dict(os.environ, FLASHCORE_KERNEL=str(kernel))
        cmd = [sys.executable, str(ROOT / "cli.py"), "watch", "run", "--debug", "all", "--shape", a.shape,
               "--seed", "1", "--max-cycles", "4", "--poll", "0.2"]
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines, t0 = [], time.monotonic()

        def read():
            for line in p.stdout:
                lines.append((time.monotonic() - t0, line.rstrip()))
                print(f"[{lines[-1][0]:7.1f} s] {line.rstrip()}", flush=True)
        threading.Thread(target=read, daemon=True).start()

        def verdict_after(n_before: int, timeout: float) -> bool:
            """A cycle's verdict: lines after the re-run (or the first) line, then 2 s of quiet."""
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                new = [l for _, l in lines[n_before:]]
                start = next((i for i, l in enumerate(new) if l.startswith(("watching", "-- "))), None)
                if start is not None and len(new) > start + 1 and time.monotonic() - t0 - lines[-1][0] > 2.0:
                    return True
                time.sleep(0.1)
            return False
        edits = [("a comment", clean + "\n// a comment\n"),
                 ("a seeded bug (#define BUG_FRAG_SWAP)", "#define BUG_FRAG_SWAP 1\n" + clean),
                 ("the fix", clean)]
        ok = verdict_after(0, a.timeout)
        for what, text in edits:
            if not ok:
                break
            n = len(lines)
            print(f"[{time.monotonic() - t0:7.1f} s] --- saving {what}", flush=True)
            kernel.write_text(text)
            ok = verdict_after(n, a.timeout)
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
        out = "\n".join(l for _, l in lines)
        want = ("no change", "FAILS now", "passes now")
        missing = [w for w in want if w not in out]
        print("watch demo: " + ("every edit read as expected" if not missing else f"MISSING {missing}"))
        return 0 if not missing else 1


if __name__ == "__main__":
    sys.exit(main())
