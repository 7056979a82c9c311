#!/usr/bin/env bash
# Session 17's job (THERE, started by gpu-run.sh from the call's repo root):
#   bash job20.sh COMMIT    COMMIT: the commit of the tree this call carried
# Persistent programs that take their tiles from a counter (db65c68), their next tile's Q loaded ahead, and a
# third stage of 128-key steps through o_in_q, for the D=128 entry: GPU tests, the tuning script, then the default
# sweep's prefill and mixed cells twice from four copies of the tree (the table as committed, and each variant patch
# beside this script applied to a copy), the full sweep and FA4's rows once with the table as committed.
# Steps past JOB_BUDGET_S are skipped (the machine goes back 30 min after it was taken).
set -uo pipefail
commit=$1
HERE=results/h100-triton-tune/seventeenth-session/job20
J=/tmp/j20
rm -rf "$J" && mkdir -p "$J" && tar -c --exclude=./.gpu-stage --exclude=./.peers -f - . | tar -x -C "$J"
cd "$J" || exit 1
source scripts/gpu-run.sh env
R=/tmp/r20; mkdir -p "$R"
started=$(date +%s); budget=${JOB_BUDGET_S:-900}
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
VARIANTS="persist s3oq s3oqp"
for v in $VARIANTS; do
  rm -rf "/tmp/v-$v" && cp -r "$J" "/tmp/v-$v"
  (cd "/tmp/v-$v" && patch -s -p1 < "$J/$HERE/$v.patch") && echo "variant $v: $(grep -n '^    128: HopperPrefillConfig' "/tmp/v-$v/kernels/paged_attention/configs.py")" \
    || { echo "variant $v: patch does not apply"; exit 1; }
done
step() { echo "== $(date +%T) (+$(( $(date +%s) - started )) s) $1"; }
in_time() { [ $(( $(date +%s) - started )) -lt "$budget" ] || { step "skipped (past ${budget} s): $1"; return 1; }; }
T="timeout 240 python3 scripts/triton_tune.py --budget-s 0"
rows() {  # TREE LABEL OUT [options]: the tree's Triton and cuDNN rows, its commit named with LABEL
  local tree=$1 label=$2 out=$3; shift 3
  (cd "$tree" && PYTHONPATH="$tree:$PYTHONPATH" PAGED_BENCH_COMMIT="$label" timeout 300 python3 -m harness.frontends.cli run \
     --backends triton,cudnn --no-capability --no-report --out "$out" "$@" > "$out.log" 2>&1)
  echo "rc $? ($label -> $(basename "$out"))"
}
label() { [ "$1" = landed ] && echo "$commit" || echo "$commit+$1($(sha256sum "$J/$HERE/$1.patch" | cut -c1-12))"; }
tree() { [ "$1" = landed ] && echo "$J" || echo "/tmp/v-$1"; }

step "gpu tests: persistent programs (counter, q_ahead), o_in_q"
timeout 240 python3 -m pytest -q -m gpu -n 8 -p no:cacheprovider tests/test_hopper_prefill.py \
  -k "persistent_programs or o_in_q" > "$R/tests.log" 2>&1; tests_rc=$?; echo "rc $tests_rc"; tail -4 "$R/tests.log"

step "tune D128: persistent (counter), q_ahead, three stages through o_in_q"
$T --out "$R/tune-d128" --cases 8q2kc0 4q2kc0 4q2kc2k 8q2kc2k --pages 256 16 \
   --gluon 128,2,overlap,persistent 128,2,overlap,persistent,qahead 128,3,overlap,oq 128,3,overlap,oq,persistent,qahead \
   > "$R/tune-d128.log" 2>&1; echo "rc $?"; grep -c "rel_l2" "$R/tune-d128.log"

step "rows 1: the table as committed (full sweep), then the variants (prefill, mixed)"
rows "$J" "$(label landed)" "$R/rows-landed"
for v in $VARIANTS; do rows "$(tree $v)" "$(label $v)" "$R/pm1-$v" --workloads prefill,mixed; done

step "rows: fa4 (once the peers are in)"
if bash scripts/gpu-run.sh await peers 120; then
  PAGED_BENCH_COMMIT="$commit" timeout 300 python3 -m harness.frontends.cli run --backends fa4 --no-capability \
    --out "$R/rows-landed" > "$R/rows-fa4.log" 2>&1; echo "rc $?"
fi

if in_time "rows 2"; then
  step "rows 2: prefill and mixed again, variants first"
  for v in $VARIANTS landed; do rows "$(tree $v)" "$(label $v)" "$R/pm2-$v" --workloads prefill,mixed; done
fi

if in_time "tune short, D64, D256"; then
  step "tune: short sequences, D64 and D256 persistent"
  $T --out "$R/tune-short" --cases 8q512c0 16q256c0 32q512c0 --pages 256 16 \
     --gluon 64,2,m64,persistent 64,2,m64,persistent,qahead 128,2,overlap,persistent,qahead > "$R/tune-short.log" 2>&1; echo "rc $?"
  $T --out "$R/tune-d64" --heads 32 8 --head-dims 64 --cases 4q2kc2k 8q2kc0 --pages 256 16 \
     --gluon 128,3,persistent 128,3,persistent,qahead > "$R/tune-d64.log" 2>&1; echo "rc $?"
  $T --out "$R/tune-d256" --heads 16 8 --head-dims 256 --cases 4q2kc2k 4q2kc0 --pages 16 256 \
     --gluon 64,2,overlap,kahead,persistent > "$R/tune-d256.log" 2>&1; echo "rc $?"
fi
if in_time "more gpu tests"; then
  step "gpu tests: every other persistent case"
  timeout 200 python3 -m pytest -q -m gpu -n 8 -p no:cacheprovider tests/test_hopper_prefill.py \
    -k "persistent and not persistent_programs and not o_in_q" > "$R/tests-more.log" 2>&1; echo "rc $?"; tail -3 "$R/tests-more.log"
fi
step "done"
