#!/usr/bin/env bash
# Session 16's second job (THERE, right after job16 on the same machine): the default sweep's Triton and cuDNN rows
# with the table that landed (k_ahead in the D=256 entry only), then its prefill and mixed cells again.
#   bash job17.sh COMMIT    COMMIT: the commit of the tree this call carried (the payload's is job16's)
set -uo pipefail
commit=$1
J=/tmp/j17
rm -rf "$J" && mkdir -p "$J" && tar -c --exclude=./.gpu-stage --exclude=./.peers -f - . | tar -x -C "$J"
cd "$J" || exit 1
source scripts/gpu-run.sh env
export PAGED_BENCH_COMMIT=$commit
R=/tmp/r16
grep -n "k_ahead=True" kernels/paged_attention/configs.py
echo "== $(date +%T) rows: the landed table ($commit; triton, cudnn)"
timeout 300 python3 -m harness.frontends.cli run --backends triton,cudnn --no-capability --no-report \
  --out "$R/rows-landed" > "$R/rows-landed.log" 2>&1; echo "rc $?"
echo "== $(date +%T) repeat: prefill and mixed"
timeout 200 python3 -m harness.frontends.cli run --backends triton,cudnn --no-capability --no-report \
  --workloads prefill,mixed --out "$R/repeat-landed" > "$R/repeat-landed.log" 2>&1; echo "rc $?"
echo "== $(date +%T) done"
