#!/usr/bin/env bash
# Session 17's fourth job (THERE, after job22 on the same machine): short sequences (the 64-row entries of
# HOPPER_PREFILL_SHORT_TABLE) as persistent programs: the tuning script, then the default sweep's prefill cells from a
# copy of the tree with short.patch beside the table as committed.
#   bash job23.sh COMMIT
set -uo pipefail
commit=$1
HERE=results/h100-triton-tune/seventeenth-session/job23
J=/tmp/j23
rm -rf "$J" && mkdir -p "$J" && tar -c --exclude=./.gpu-stage --exclude=./.peers -f - . | tar -x -C "$J"
cd "$J" || exit 1
source scripts/gpu-run.sh env
R=/tmp/r23; mkdir -p "$R"
rm -rf /tmp/v-short && cp -r "$J" /tmp/v-short && (cd /tmp/v-short && patch -s -p1 < "$J/$HERE/short.patch") || exit 1
echo "== $(date +%T) tune: short sequences persistent"
timeout 150 python3 scripts/triton_tune.py --budget-s 0 --out "$R/tune-short" --cases 8q512c0 4q512c0 16q256c0 \
  --pages 256 16 --gluon 64,2,m64,persistent > "$R/tune-short.log" 2>&1; echo "rc $?"
echo "== $(date +%T) rows: prefill with short.patch"
(cd /tmp/v-short && PYTHONPATH="/tmp/v-short:$PYTHONPATH" PAGED_BENCH_COMMIT="$commit+short($(sha256sum "$J/$HERE/short.patch" | cut -c1-12))" \
  timeout 200 python3 -m harness.frontends.cli run --backends triton,cudnn --no-capability --no-report \
  --workloads prefill --out "$R/prefill-short" > "$R/prefill-short.log" 2>&1); echo "rc $?"
echo "== $(date +%T) done"
