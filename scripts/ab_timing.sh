#!/usr/bin/env bash
# A/B of the harness's own cost on ONE machine: this checkout against an older commit, in
# alternating rounds, same GPU, same caches (issue 26: "no long-sequence timing regresses by
# more than noise" needs both on one machine; BENCHMARKS.md's tables come from different ones).
#   here, with git:    bash scripts/ab_timing.sh prepare OLD          # -> ab/OLD, results/ left out
#   on the device:     bash scripts/ab_timing.sh run OLD [ROUNDS]     # run tool: carry ["ab"]
# Each round times both trees with the long table's command (time_harness.py, one warm run per
# row, --no-record); the Markdown of each lands in $OUT/ab-<tree>-<round>.md.
set -uo pipefail
cd "$(dirname "$0")/.."
what=${1:?prepare|run}; old=${2:?an older commit}
case $what in
  prepare)
    rm -rf "ab/$old" && mkdir -p "ab/$old"
    git archive "$old" -- . ':!results' | tar -x -C "ab/$old" && mkdir -p "ab/$old/results"
    du -sh "ab/$old" ;;
  run)
    [[ -d ab/$old ]] || { echo "ab/$old missing: prepare it, and carry ab"; exit 2; }
    OUT=${OUT:-/tmp/flashcore-ab}; mkdir -p "$OUT"
    for round in $(seq 1 "${3:-2}"); do
      for tree in "ab/$old" .; do
        label=$([[ $tree == . ]] && echo new || echo "$old")
        python3 "$tree/scripts/time_harness.py" --no-cold --warm 1 --command run-full --command diagnose \
            --command run-all --shape '1,8,{S},128' --seq 2048 --seq 8192 --seq 16384 ${AB_ARGS:-} \
            --markdown "$OUT/ab-$label-$round.md" 2>&1 | grep -E "^(run|diagnose)" | sed "s/^/[$label $round] /"
      done
    done ;;
  *) echo "usage: $0 prepare|run OLD [ROUNDS]"; exit 2 ;;
esac
