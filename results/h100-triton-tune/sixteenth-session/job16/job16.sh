#!/usr/bin/env bash
# Session 16's job (THERE, started by gpu-run.sh from the call's repo root). Everything runs from copies of the tree:
# /tmp/j16 (this commit's table) and /tmp/v-kahead (the same with kahead.patch: the branch kahead-table's change,
# k_ahead on in the D=128 and D=256 entries). Steps past JOB_BUDGET_S are skipped (the machine goes back 30 min after
# it was taken).
set -uo pipefail
HERE=results/h100-triton-tune/sixteenth-session/job16
J=/tmp/j16
rm -rf "$J" && mkdir -p "$J" && tar -c --exclude=./.gpu-stage --exclude=./.peers -f - . | tar -x -C "$J"
cd "$J" || exit 1
source scripts/gpu-run.sh env
base_commit=$PAGED_BENCH_COMMIT
kahead_commit="$base_commit+kahead(02dc665d1ea1)"
R=/tmp/r16; mkdir -p "$R"
started=$(date +%s); budget=${JOB_BUDGET_S:-960}
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
rm -rf /tmp/v-kahead && cp -r "$J" /tmp/v-kahead
(cd /tmp/v-kahead && { git apply "$J/$HERE/kahead.patch" 2>/dev/null || patch -p1 < "$J/$HERE/kahead.patch"; }) \
  && grep -q "k_ahead=True" /tmp/v-kahead/kernels/paged_attention/configs.py && echo "variant tree: kahead.patch applied" \
  || { echo "variant tree: kahead.patch does not apply"; exit 1; }
step() { echo "== $(date +%T) (+$(( $(date +%s) - started )) s) $1"; }
in_time() { [ $(( $(date +%s) - started )) -lt "$budget" ] || { step "skipped (past ${budget} s): $1"; return 1; }; }
T="timeout 240 python3 scripts/triton_tune.py --budget-s 0"
kahead_rows() {  # OUT [options]: the variant tree's Triton and cuDNN rows
  local out=$1; shift
  (cd /tmp/v-kahead && PYTHONPATH="/tmp/v-kahead:$PYTHONPATH" PAGED_BENCH_COMMIT="$kahead_commit" timeout 300 python3 -m harness.frontends.cli run \
     --backends triton,cudnn --no-capability --no-report --out "$out" "$@" > "$out.log" 2>&1); echo "rc $?; rows naming kahead: $(grep -c kahead "$out/results.jsonl")"
}

step "gpu tests: k_ahead"
timeout 300 python3 -m pytest -q -m gpu -n 8 -p no:cacheprovider tests/test_hopper_prefill.py -k k_ahead \
  > "$R/tests-kahead.log" 2>&1; tests_rc=$?; echo "rc $tests_rc"; tail -3 "$R/tests-kahead.log"
step "tune D128: k_ahead"
$T --out "$R/tune-d128" --cases 8q2kc0 4q2kc2k 8q2kc2k --pages 256 16 --gluon 128,2,overlap,kahead \
   > "$R/tune-d128.log" 2>&1; echo "rc $?"
step "rows: this commit's table (triton, cudnn)"
bash scripts/gpu-rows.sh "$R/rows-base" triton,cudnn '' > "$R/rows-base.log" 2>&1; echo "rc $?"; grep "gpu-rows:" "$R/rows-base.log"
cd "$J"
if [ "$tests_rc" = 0 ]; then
  step "rows: k_ahead tree (triton, cudnn)"; kahead_rows "$R/rows-kahead"
else
  step "k_ahead tests failed: no k_ahead rows"
fi
step "rows: fa4 (once the peers are in)"
if bash scripts/gpu-run.sh await peers 180; then
  timeout 300 python3 -m harness.frontends.cli run --backends fa4 --no-capability --out "$R/rows-base" > "$R/rows-fa4.log" 2>&1; echo "rc $?"
fi
if in_time "tune D256"; then
  step "tune D256: k_ahead, plain and 1024-key window"
  $T --out "$R/tune-d256" --heads 16 8 --head-dims 256 --cases 4q2kc2k 4q2kc0 --pages 16 256 \
     --gluon 64,2,overlap,kahead > "$R/tune-d256.log" 2>&1; echo "rc $?"
  $T --out "$R/tune-d256-w1024" --heads 16 8 --head-dims 256 --window 1024 --cases 4q2kc2k --pages 16 256 \
     --gluon 64,2,overlap,onerange,kahead > "$R/tune-d256-w1024.log" 2>&1; echo "rc $?"
fi
if in_time "repeat rows"; then
  step "repeat rows, prefill and mixed (this commit, then k_ahead)"
  bash scripts/gpu-rows.sh "$R/repeat-base" triton,cudnn '' --workloads prefill,mixed > "$R/repeat-base.log" 2>&1; echo "rc $?"
  cd "$J"
  [ "$tests_rc" = 0 ] && kahead_rows "$R/repeat-kahead" --workloads prefill,mixed
fi
if in_time "tune D64, short D128"; then
  step "tune D64 (k_ahead with 3 stages) and short D128 (64-row tiles with k_ahead)"
  $T --out "$R/tune-d64" --heads 32 8 --head-dims 64 --cases 4q2kc2k 8q2kc0 --pages 16 256 --gluon 128,3,kahead \
     > "$R/tune-d64.log" 2>&1; echo "rc $?"
  $T --out "$R/tune-short" --cases 8q512c0 16q256c0 --pages 256 16 --gluon 64,2,m64,kahead \
     > "$R/tune-short.log" 2>&1; echo "rc $?"
fi
if in_time "ncu"; then
  step "ncu: prefill-b8-q2048-c0 at pages 256 and 16, cuDNN and Triton"
  NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  timeout 240 "$NCU" --clock-control none --nvtx --nvtx-include "profile/" --section SpeedOfLight \
    --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats --section WarpStateStats \
    --section SchedulerStats -o "$R/ncu-cell" -f python3 "$HERE/ncu_cell.py" > "$R/ncu.log" 2>&1; echo "rc $?"
  "$NCU" --import "$R/ncu-cell.ncu-rep" --page details > "$R/ncu-details.txt" 2>&1
  rm -f "$R/ncu-cell.ncu-rep"
fi
if in_time "tune D64 short"; then
  step "tune D64 short: 64-row tiles"
  $T --out "$R/tune-d64-short" --cases 8q512c0 4q512c0 16q256c0 --head-dims 64 --heads 32 8 --pages 256 16 \
     --gluon 64,2,m64 128,2,m64 128,3,m64 > "$R/tune-d64-short.log" 2>&1; echo "rc $?"
fi
step "done"
