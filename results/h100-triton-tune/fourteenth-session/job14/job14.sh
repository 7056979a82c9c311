#!/usr/bin/env bash
# Session 14's job (THERE, started by gpu-run.sh from the call's repo root). Everything runs from copies of the tree.
set -uo pipefail
J=/tmp/j14
rm -rf "$J" && mkdir -p "$J" && tar -c --exclude=./.gpu-stage --exclude=./.peers -f - . | tar -x -C "$J"
cd "$J" || exit 1
source scripts/gpu-run.sh env
base_commit=$PAGED_BENCH_COMMIT
R=/tmp/r14; mkdir -p "$R"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
for s in paired overlap; do  # variant trees: every entry (D64, short, windows too) in schedule $s, one range
  rm -rf /tmp/v-$s && cp -r "$J" /tmp/v-$s
  cat >> /tmp/v-$s/kernels/paged_attention/configs.py <<EOF

# session-14 job variant: every entry in the '$s' schedule, its steps in one range
import dataclasses as _dc
for _head_dim, _config in list(HOPPER_PREFILL_TABLE.items()):
    HOPPER_PREFILL_TABLE[_head_dim] = _dc.replace(_config, schedule="$s", one_range=True)
HOPPER_PREFILL_SHORT = _dc.replace(HOPPER_PREFILL_SHORT, schedule="$s", one_range=True)
HOPPER_PREFILL_WINDOW_SCHEDULE = "$s"
EOF
done
step() { echo "== $(date +%T) $1"; }
step "gpu tests: paired schedules (ranges, one range)"
timeout 420 python3 -m pytest -q -m gpu -n 8 -p no:cacheprovider tests/test_hopper_prefill.py \
  -k "paired_schedules" > "$R/tests-schedules.log" 2>&1; echo "rc $?"; tail -3 "$R/tests-schedules.log"
T="timeout 300 python3 scripts/triton_tune.py --budget-s 0"
step "tune D128"
$T --out "$R/tune-d128" --cases 8q2kc0 4q2kc0 8q512c0 4q2kc2k 8q2kc2k --pages 256 16 \
   --gluon 128,2,paired,onerange 128,2,overlap 128,2,overlap,onerange 64,2,paired,onerange 64,2,overlap,onerange \
   > "$R/tune-d128.log" 2>&1; echo "rc $?"
step "tune D256"
$T --out "$R/tune-d256-w1024" --heads 16 8 --head-dims 256 --window 1024 --cases 4q2kc2k --pages 16 256 \
   --gluon 64,2,paired 64,2,paired,onerange 64,2,overlap,onerange > "$R/tune-d256-w1024.log" 2>&1; echo "rc $?"
$T --out "$R/tune-d256" --heads 16 8 --head-dims 256 --cases 4q2kc2k 4q2kc0 --pages 16 256 \
   --gluon 64,2,paired,onerange 64,2,overlap 64,2,overlap,onerange > "$R/tune-d256.log" 2>&1; echo "rc $?"
step "tune D64"
$T --out "$R/tune-d64" --heads 32 8 --head-dims 64 --cases 4q2kc2k --pages 16 \
   --gluon 128,3,paired,onerange 128,3,overlap,onerange > "$R/tune-d64.log" 2>&1; echo "rc $?"
step "rows: landed table (triton, cudnn)"
bash scripts/gpu-rows.sh "$R/rows-base" triton,cudnn '' > "$R/rows-base.log" 2>&1; echo "rc $?"; grep "gpu-rows:" "$R/rows-base.log"
cd "$J"
for s in paired overlap; do
  step "rows: one-range $s tree (triton)"
  (cd /tmp/v-$s && PAGED_BENCH_COMMIT="$base_commit+onerange-$s" timeout 300 python3 -m harness.frontends.cli run \
     --backends triton --no-capability --no-report --out "$R/rows-$s" > "$R/rows-$s.log" 2>&1); echo "rc $?"
done
step "rows: fa4 (once the peers are in)"
if bash scripts/gpu-run.sh await peers 120; then
  timeout 300 python3 -m harness.frontends.cli run --backends fa4 --no-capability --out "$R/rows-base" > "$R/rows-fa4.log" 2>&1; echo "rc $?"
fi
step "tune decode B64 16k"
timeout 240 python3 scripts/triton_tune.py --budget-s 60 --out "$R/tune-decode" --cases 64q1c16k --pages 256 16 \
   > "$R/tune-decode.log" 2>&1; echo "rc $?"
step "repeat rows, prefill and mixed"
bash scripts/gpu-rows.sh "$R/repeat-base" triton,cudnn '' --workloads prefill,mixed > "$R/repeat-base.log" 2>&1; echo "rc $?"
cd "$J"
for s in paired overlap; do
  (cd /tmp/v-$s && PAGED_BENCH_COMMIT="$base_commit+onerange-$s" timeout 300 python3 -m harness.frontends.cli run \
     --backends triton --no-capability --no-report --workloads prefill,mixed --out "$R/repeat-$s" > "$R/repeat-$s.log" 2>&1); echo "rc $?"
done
step "gpu tests: model features, the Triton kernel"
timeout 420 python3 -m pytest -q -m gpu -n 8 -p no:cacheprovider tests/test_triton_features.py tests/test_triton_kernel.py \
  > "$R/tests-triton.log" 2>&1; echo "rc $?"; tail -3 "$R/tests-triton.log"
step "done"
