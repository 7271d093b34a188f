#!/usr/bin/env bash
# Issue 26 on a fresh machine: the first `run --debug pv_only --shape mission` with empty CuPy and
# cubin caches (judged on the host while the device checks are cold), the background compile of
# the device checks (harness/run/warm_refs.py) until its marker appears, then the same commands
# again, now judged on the device. Prints each wall time and where each run's checks ran.
set -uo pipefail
tmp=$(mktemp -d); export CUPY_CACHE_DIR=$tmp/cupy FLASHCORE_CUBIN_CACHE=$tmp/cubins FLASHCORE_RESULTS=$tmp/results
t() { local s=$(date +%s.%N); "$@" > "$tmp/out.log" 2>&1; local rc=$?
      printf '%6.2f s  exit %s  %s\n' "$(awk -v a="$(date +%s.%N)" -v b="$s" 'BEGIN{print a-b}')" "$rc" "$*"
      [[ $rc == 0 ]] || tail -3 "$tmp/out.log"; }
where() { python3 - "$@" <<'PY'
import collections, json, glob, sys
c = collections.Counter()
for f in glob.glob(sys.argv[1] + "/runs-*.jsonl"):
    for line in open(f):
        r = json.loads(line)
        for m in r.get("metrics") or []:
            c[(r.get("mode"), (m.get("extra") or {}).get("reference_device"))] += 1
print("   checks ran on:", dict(c)); [open(f, "w").close() for f in glob.glob(sys.argv[1] + "/runs-*.jsonl")]
PY
}
t flashcore run --debug pv_only --shape mission; where "$FLASHCORE_RESULTS"
s=$(date +%s.%N)
for i in $(seq 1 ${WAIT_HALF_S:-240}); do
  ls "$CUPY_CACHE_DIR"/flashcore-device-refs-* 2>/dev/null | grep -qv '\.warming$\|\.failed$' && break
  ls "$CUPY_CACHE_DIR"/*.failed >/dev/null 2>&1 && { cat "$CUPY_CACHE_DIR"/*.failed; break; }
  sleep 0.5; done
printf 'background compile done %.1f s after the first verdict (marker: %s)\n' "$(awk -v a="$(date +%s.%N)" -v b="$s" 'BEGIN{print a-b}')" \
  "$(ls "$CUPY_CACHE_DIR" | grep flashcore-device-refs || echo none)"
t flashcore run --debug pv_only --shape mission; where "$FLASHCORE_RESULTS"
t flashcore run --debug all --shape mission; where "$FLASHCORE_RESULTS"
t flashcore diagnose --shape mission; where "$FLASHCORE_RESULTS"
t flashcore run --debug all --shape mission; where "$FLASHCORE_RESULTS"
rm -rf "$tmp"
