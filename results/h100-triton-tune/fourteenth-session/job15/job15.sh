#!/usr/bin/env bash
# Session 14's second job (THERE). Everything runs from copies of the tree.
set -uo pipefail
J=/tmp/j15
rm -rf "$J" && mkdir -p "$J" && tar -c --exclude=./.gpu-stage --exclude=./.peers -f - . | tar -x -C "$J"
cd "$J" || exit 1
source scripts/gpu-run.sh env
base_commit=$PAGED_BENCH_COMMIT
R=/tmp/r15; mkdir -p "$R"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
rm -rf /tmp/v-m64 && cp -r "$J" /tmp/v-m64
cat >> /tmp/v-m64/kernels/paged_attention/configs.py <<EOF

# session-14 second job variant: short sequences in 64-row tiles of one consumer
import dataclasses as _dc
HOPPER_PREFILL_SHORT = _dc.replace(HOPPER_PREFILL_SHORT, block_m=64)
EOF
step() { echo "== $(date +%T) $1"; }
step "gpu tests: one-consumer tiles, routing, windows"
timeout 300 python3 -m pytest -q -m gpu -n 8 -p no:cacheprovider tests/test_hopper_prefill.py \
  -k "one_consumer or routes or window or gemma" > "$R/tests-one-consumer.log" 2>&1; echo "rc $?"; tail -3 "$R/tests-one-consumer.log"
step "tune short tiles"
timeout 300 python3 scripts/triton_tune.py --budget-s 0 --out "$R/tune-m64" --cases 8q512c0 4q512c0 16q256c0 8q2kc0 \
   --pages 256 16 --gluon 64,2,m64 64,3,m64 64,2,overlap,m64 64,2,persistent,m64 > "$R/tune-m64.log" 2>&1; echo "rc $?"
step "rows: landed table (triton, cudnn)"
bash scripts/gpu-rows.sh "$R/rows-base" triton,cudnn '' > "$R/rows-base.log" 2>&1; echo "rc $?"; grep "gpu-rows:" "$R/rows-base.log"
step "rows: m64 short tree (triton)"
(cd /tmp/v-m64 && PAGED_BENCH_COMMIT="$base_commit+short-m64" timeout 300 python3 -m harness.frontends.cli run \
   --backends triton --no-capability --no-report --out "$R/rows-m64" > "$R/rows-m64.log" 2>&1); echo "rc $?"
step "rows: fa4 (once the peers are in)"
if bash scripts/gpu-run.sh await peers 60; then
  timeout 300 python3 -m harness.frontends.cli run --backends fa4 --no-capability --out "$R/rows-base" > "$R/rows-fa4.log" 2>&1; echo "rc $?"
fi
step "repeat rows, prefill and mixed"
bash scripts/gpu-rows.sh "$R/repeat-base" triton,cudnn '' --workloads prefill,mixed > "$R/repeat-base.log" 2>&1; echo "rc $?"
(cd /tmp/v-m64 && PAGED_BENCH_COMMIT="$base_commit+short-m64" timeout 300 python3 -m harness.frontends.cli run \
   --backends triton --no-capability --no-report --workloads prefill,mixed --out "$R/repeat-m64" > "$R/repeat-m64.log" 2>&1); echo "rc $?"
step "done"
