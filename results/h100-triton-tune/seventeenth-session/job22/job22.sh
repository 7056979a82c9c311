#!/usr/bin/env bash
# Session 17's third job (THERE, after job21 on the same machine, which stopped it after FA4's rows):
#   bash job22.sh COMMIT    COMMIT: the commit of the tree this call carried, the table that landed (the D=64 and
#                           D=128 entries persistent, windows one tile per program)
# The default sweep's Triton and cuDNN rows, its prefill and mixed cells again, then the GPU tests job20 could not run.
set -uo pipefail
commit=$1
J=/tmp/j22
rm -rf "$J" && mkdir -p "$J" && tar -c --exclude=./.gpu-stage --exclude=./.peers -f - . | tar -x -C "$J"
cd "$J" || exit 1
source scripts/gpu-run.sh env
export PAGED_BENCH_COMMIT=$commit
R=/tmp/r22; mkdir -p "$R"
grep -n "persistent=True),$" kernels/paged_attention/configs.py
echo "== $(date +%T) rows: the landed table ($commit; triton, cudnn)"
timeout 300 python3 -m harness.frontends.cli run --backends triton,cudnn --no-capability --no-report \
  --out "$R/rows-landed" > "$R/rows-landed.log" 2>&1; echo "rc $?"
echo "== $(date +%T) repeat: prefill and mixed"
timeout 200 python3 -m harness.frontends.cli run --backends triton,cudnn --no-capability --no-report \
  --workloads prefill,mixed --out "$R/repeat-landed" > "$R/repeat-landed.log" 2>&1; echo "rc $?"
echo "== $(date +%T) gpu tests: o_in_q with q_ahead, the other persistent cases, windows and routes"
timeout 200 python3 -m pytest -q -m gpu -n 8 -p no:cacheprovider tests/test_hopper_prefill.py \
  -k "(o_in_q and qahead) or (persistent and not persistent_programs and not o_in_q) or routes or sliding_window" \
  > "$R/tests.log" 2>&1; echo "rc $?"; tail -3 "$R/tests.log"
echo "== $(date +%T) done"
