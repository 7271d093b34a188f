#!/usr/bin/env bash
# The one GPU script: install (no network), GPU test suite, mission table, bug walk-through,
# benchmark. Everything lands under $OUT (logs, BENCHMARKS.md, the heat map, the records).
# Usage on the lent machine:  FLASHCORE_GIT_COMMIT=... bash scripts/gpu_suite.sh [tests|timing|demo|hopper|ws|ab|clocks|blocks|kernels|bench|loop|probes|profile|all]
# (the lent copy has no .git: FLASHCORE_GIT_COMMIT, _SUBJECT and _DATE (ISO time) name the commit in the records)
# (each part fits one 10-minute device call; `all` runs them in sequence; never two parts at
#  once: they share $OUT/run, and the first to finish packs and removes it)
# (profile, not part of all: Nsight Compute on the kernel and SDPA flash at the large suite shapes;
#  PROFILE_SOURCE=1 adds the per-instruction stall sampling of the kernel)
set -uo pipefail
# Everything is written under $OUT/run and packed into $OUT/gpu_suite_out.tgz at the end (the
# device tool returns only a few files per call; the records must not be among those left out).
DEST=${OUT:-/tmp/flashcore-out}; OUT=$DEST/run; mkdir -p "$OUT"
what=${1:-all}
export PYTHONUNBUFFERED=1 FLASHCORE_RECORD_SUITE=1
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 || { cat "$OUT/install.log"; exit 2; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv | tee "$OUT/gpu.txt"
rc=0
if [[ $what == tests || $what == all ]]; then
  # the GPU suite (marker gpu), then the torch-dependent tests that are not GPU-marked
  timeout ${SUITE_TIMEOUT:-540} python3 -m pytest -q -rfEs -m gpu -p no:cacheprovider -n 8 --timeout 600 tests 2>&1 | tee "$OUT/gpu_tests.log"
  rc=${PIPESTATUS[0]}
  python3 -m pytest -q -m "not gpu" -p no:cacheprovider tests/test_api.py tests/test_worker.py 2>&1 | tail -5 | tee -a "$OUT/gpu_tests.log"
  [[ ${PIPESTATUS[0]} == 0 ]] || rc=1
  flashcore run --debug all --shape mission 2>&1 | tee "$OUT/run_all.log"
fi
if [[ $what == timing || $what == all ]]; then
  # the harness's own cost: mission shape and coverage set (cold + warm), then the long table (warm)
  python3 scripts/time_harness.py --command run-all --command diagnose --command diagnose-coverage \
      --command run-all-1job --warm 3 --markdown "$OUT/timing_mission.md" 2>&1 | tee "$OUT/timing.log"
  python3 scripts/time_harness.py --no-cold --warm 1 --kernel-time --command run-full --command diagnose \
      --command run-all --shape '1,8,{S},128' --seq 512 --seq 2048 --seq 4096 --seq 8192 --seq 16384 \
      ${LONG_SEQS:-} --markdown "$OUT/timing_long.md" 2>&1 | tee -a "$OUT/timing.log"
fi
if [[ $what == demo || $what == all ]]; then
  { flashcore diagnose --shape mission --bug FRAG_SWAP --seed 1 --png "$OUT/frag_swap.png"
    flashcore diagnose --shape mission --bug NO_RESCALE --seed 1
    flashcore smoking-gun --seed 1
    flashcore smoking-gun --seed 1 --bug PV_FIRST_TILE
    flashcore sanitize --tool racecheck --bug NO_BARRIER
    flashcore diagnose --shape mission --bug BATCH_OFFSET --seed 1
    flashcore diagnose --bug BATCH_OFFSET --seed 1
    flashcore diagnose --bug TAIL_UNMASKED --seed 1
    flashcore diagnose --seed 1
  } 2>&1 | tee "$OUT/walkthrough.log"
fi
if [[ $what == ab ]]; then
  # two registry kernels timed in turns on the same inputs, one process (harness/run/ab.py):
  # AB="candidate product" (A is --kernel, B --against); AB_ROUNDS rounds per shape
  read -r ab_a ab_b <<< "${AB:-flashcore_hopper_dyn flashcore_hopper_ovpp}"
  flashcore bench --suite --kernel $ab_a --against $ab_b --rounds ${AB_ROUNDS:-6} 2>&1 | tee "$OUT/bench_ab.log"
  rc=${PIPESTATUS[0]}
fi
if [[ $what == clocks ]]; then
  # where a consumer warp's key-loop time goes, per phase, from the SM clock (scripts/phase_clocks.py):
  # the Hopper entry ($HOPPER_ENTRY, default version 6) built with -DPHASE_CLOCKS at CLOCK_SHAPES
  for shape in ${CLOCK_SHAPES:-4,16,2048,128 4,16,2048,64 16,16,1024,64}; do
    python3 scripts/phase_clocks.py $shape --kernel ${HOPPER_ENTRY:-flashcore_hopper_ovpp} \
        --json "$OUT/clocks_${shape//,/x}.json" 2>&1 | tee -a "$OUT/phase_clocks.log"
    [[ ${PIPESTATUS[0]} == 0 ]] || rc=1
  done
fi
if [[ $what == blocks ]]; then
  # where the SMs' time goes outside the key loop: prologue, tail, gaps between blocks, the last
  # wave (scripts/block_clocks.py): the Hopper entry built with -DBLOCK_CLOCKS at CLOCK_SHAPES
  for shape in ${CLOCK_SHAPES:-4,16,2048,128 4,16,2048,64 16,16,1024,64 2,16,8192,128}; do
    python3 scripts/block_clocks.py $shape --kernel ${HOPPER_ENTRY:-flashcore_hopper_ovpp} \
        --json "$OUT/blocks_${shape//,/x}.json" --raw "$OUT/blocks_${shape//,/x}.npy" 2>&1 | tee -a "$OUT/block_clocks.log"
    [[ ${PIPESTATUS[0]} == 0 ]] || rc=1
  done
fi
if [[ $what == ws ]]; then
  # part 2 (a version is not in all until measured): a Hopper entry ($HOPPER_ENTRY, default the
  # producer-warpgroup version 2) through the same GPU tests as version 1, then its bench suite
  # (WS_TESTS=0: the bench alone, e.g. the product entry timed beside a candidate in one call)
  entry=${HOPPER_ENTRY:-flashcore_hopper_ws}
  if [[ ${WS_TESTS:-1} == 1 ]]; then
    FLASHCORE_TEST_HOPPER=$entry timeout ${SUITE_TIMEOUT:-400} python3 -m pytest -q -rfEs -p no:cacheprovider \
        -n 8 --timeout 300 tests/test_gpu_hopper.py 2>&1 | tee "$OUT/ws_tests.log"
    rc=${PIPESTATUS[0]}
  fi
  flashcore bench --suite --kernel $entry --no-wall --markdown "$OUT/BENCHMARKS_${entry}.md" 2>&1 | tee "$OUT/bench_ws.log"
fi
if [[ $what == hopper || $what == all ]]; then
  # issue 24: every Hopper seeded bug through the default diagnose (coverage set), timed; the
  # clean kernel; then what compute-sanitizer sees of TMA + mbarrier + wgmma code, clean and with bugs
  { for bug in $(python3 -c "from debug_modes import HOPPER_BUGS; print(*sorted(HOPPER_BUGS))"); do
      s=$(date +%s.%N); flashcore diagnose --kernel flashcore_hopper --bug $bug --seed 1 --no-record
      echo "diagnose --bug $bug: exit $? in $(python3 -c "print(f'{$(date +%s.%N) - $s:.1f}')") s"
    done
    flashcore diagnose --kernel flashcore_hopper --seed 1
    for tool in memcheck racecheck synccheck initcheck; do
      flashcore sanitize --kernel flashcore_hopper --tool $tool --shape 1,2,300,64 --sk 333; echo "exit $?"
    done
    for bug in V_TAIL_COORD K_DESC_SBO RESCALE_AFTER_PV; do
      for tool in memcheck racecheck; do
        flashcore sanitize --kernel flashcore_hopper --tool $tool --bug $bug --shape 1,2,300,64 --sk 333; echo "exit $?"
      done
    done
  } 2>&1 | tee "$OUT/hopper_walkthrough.log"
fi
if [[ $what == kernels || $what == all ]]; then
  # bring your own kernel: a spec proposed, checked, and the outsider kernel diagnosed (flags, then probes)
  mkdir -p /tmp/byok && cp kernels/outsider/attention.cu /tmp/byok/
  { flashcore kernel init /tmp/byok/attention.cu --force && cat /tmp/byok/attention.toml
    flashcore kernel check kernels/outsider/attention.toml
    flashcore diagnose --kernel kernels/outsider/attention.toml --seed 1
    flashcore diagnose --kernel kernels/outsider/attention.toml --bug TAIL_KEYS --seed 1
    flashcore diagnose --probes --kernel kernels/outsider/attention.toml --bug TAIL_KEYS --seed 1
    flashcore diagnose --probes --kernel kernels/outsider/attention.toml --bug OOB_WRITE --seed 1
    flashcore diagnose --probes --shape 1,2,192,64 --bug NO_RESCALE --seed 1
    flashcore smoking-gun --kernel kernels/outsider/attention.toml --shape 1,2,81,64 --seed 3
    flashcore smoking-gun --kernel kernels/outsider/attention.toml --shape 1,2,81,64 --seed 3 --bug TAIL_KEYS
  } 2>&1 | tee "$OUT/kernels_walkthrough.log"
fi
if [[ $what == bench || $what == all ]]; then
  flashcore bench --suite --markdown "$OUT/BENCHMARKS.md" 2>&1 | tee "$OUT/bench.log"
  # the sm_90a kernel beside SDPA in its own process (events only: forward()'s wall is above)
  flashcore bench --suite --kernel flashcore_hopper --no-wall --markdown "$OUT/BENCHMARKS_hopper.md" 2>&1 | tee "$OUT/bench_hopper.log"
  # where forward()'s host time goes, and wall.measure's rounds one by one
  python3 scripts/profile_forward.py 2>&1 | tee "$OUT/profile_forward.log"
fi
if [[ $what == loop || $what == all ]]; then
  # issue 26, the research loop: where a cold default diagnose spends its time (one process,
  # cProfile), then cold (empty CuPy and cubin caches), warm, and right after an edit
  python3 scripts/profile_cold.py --what diagnose 2>&1 | head -60 | tee "$OUT/profile_cold.log"
  python3 scripts/time_harness.py --command run-pv --command run-all --command diagnose-coverage \
      --warm 3 --edits 3 --markdown "$OUT/timing_loop.md" 2>&1 | tee "$OUT/timing_loop.log"
  # the watch loop on the GPU: a clean verdict, a seeded bug saved into a copy of the kernel, the fix
  python3 scripts/watch_demo.py 2>&1 | tee "$OUT/watch_demo.log"
fi
if [[ $what == probes || $what == all ]]; then
  # issue 22: every seeded bug with probes only, and >= 100 clean probe diagnoses per kernel
  python3 scripts/probe_validation.py --seeds ${PROBE_SEEDS:-12} --markdown "$OUT/probe_validation.md" 2>&1 | tee "$OUT/probe_validation.log"
  { time flashcore diagnose --probes --kernel kernels/outsider/attention.toml --seed 1 --no-record ; } 2>&1 | tail -8 | tee "$OUT/probe_timing.log"
  { time flashcore diagnose --probes --kernel kernels/outsider/attention.toml --seed 2 --no-record ; } 2>&1 | tail -4 | tee -a "$OUT/probe_timing.log"
fi
if [[ $what == profile ]]; then
  # PROFILE_SHAPES, PROFILE_SDPA (flash and/or cudnn) and HOPPER_ENTRY (the registry entry) pick
  # what is profiled; cuDNN's kernels are named cudnn_generated_..._sdpa_...
  [[ -n ${HOPPER_ENTRY:-} ]] && export FLASHCORE_REGISTRY_KERNEL=$HOPPER_ENTRY
  for shape in ${PROFILE_SHAPES:-4,16,2048,64 4,16,2048,128}; do
    ncu --clock-control none -k regex:'flashcore_fwd|flash_fwd|sdpa' --print-details all \
        --section SpeedOfLight --section ComputeWorkloadAnalysis --section WarpStateStats --section SchedulerStats \
        --section InstructionStats --section Occupancy --metrics 'regex:smsp__average_warp_latency_issue_stalled_.*' \
        python3 scripts/profile_ncu.py $shape ${PROFILE_SDPA:-flash} > "$OUT/ncu_${shape//,/x}.txt" 2>&1 || tail -5 "$OUT/ncu_${shape//,/x}.txt"
    if [[ ${PROFILE_SOURCE:-0} == 1 ]]; then
      # where the stalls are, per SASS instruction (PC sampling, SourceCounters), of our kernel
      # only: its source page as CSV (the report itself is removed: it can outgrow what the
      # device tool brings back, and the tgz would be lost with it). First run at 0ab3415
      # (results/logs/ncu-src-0ab3415-*; read with scripts/ncu_source_stalls.py)
      # (PROFILE_SOURCE_KERNELS: the kernel-name regexes to sample, one export each; default ours;
      #  "flashcore_fwd cudnn" adds cuDNN's kernel, SASS only; not yet run on a device)
      for kre in ${PROFILE_SOURCE_KERNELS:-flashcore_fwd}; do
        s=${shape//,/x}; [[ $kre == flashcore_fwd ]] || s=${s}_${kre//[^A-Za-z0-9]/_}
        ncu --clock-control none -k regex:$kre --section SourceCounters -f -o "$OUT/src_$s" \
            python3 scripts/profile_ncu.py $shape cudnn > "$OUT/src_$s.log" 2>&1 || tail -5 "$OUT/src_$s.log"
        ncu -i "$OUT/src_$s.ncu-rep" --page source --print-source sass --csv > "$OUT/src_$s.csv" 2>&1 || tail -5 "$OUT/src_$s.csv"
        rm -f "$OUT/src_$s.ncu-rep"
      done
    fi
  done
fi
cp results/runs-*.jsonl "$OUT/" 2>/dev/null
tar czf "$DEST/gpu_suite_out.tgz" -C "$OUT" . && rm -rf "$OUT"
exit $rc
