import sys
from debug_modes import BUGS
from harness.check.shapes import Shape
from harness.run.diagnose import diagnose
cases = {"TAIL_UNMASKED": Shape(2, 2, 100, 100, 64), "SHORT_UNMASKED": Shape(1, 2, 40, 40, 64),
         "KV_LOOP_SQ": Shape(1, 2, 64, 300, 64), "BATCH_OFFSET": Shape(2, 2, 128, 128, 64),
         "D128_COLS": Shape(1, 2, 128, 128, 128), "Q_TAIL_SWAP": Shape(1, 2, 100, 128, 64)}
for bug, shp in cases.items():
    d = diagnose(shp, seed=1, bugs=(bug,), record=False, isolate=False, show=False)
    clean = diagnose(shp, seed=1, record=False, isolate=False, show=False)
    mission = diagnose(Shape(1, 8, 512, 512, 64), seed=1, bugs=(bug,), record=False, isolate=False, show=False)
    print(f"{bug:16s} {shp.label:16s} stage={d.stage} expected={BUGS[bug].stage} clean={clean.clean} mission_clean={mission.clean}")
