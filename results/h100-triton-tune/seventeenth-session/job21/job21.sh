#!/usr/bin/env bash
# Session 17's second job (THERE, right after job20 on the same machine, which stopped it after its tuning run):
#   bash job21.sh COMMIT    COMMIT: the commit of the tree this call carried
# job20's tuning run had persistent programs taking tiles from the counter 4 to 7 % faster than the table at D=128
# and q_ahead a loss; its variant trees carried q_ahead. Here: the default sweep's prefill and mixed cells twice from
# copies of the tree with p.patch (the D=128 entry persistent), pall.patch (the D=64, 128 and 256 entries
# persistent) and s3p.patch (D=128 persistent in three stages through o_in_q) beside the table as committed (its full
# sweep and FA4's rows once), tuning runs at D=64 / 256 and short sequences, and the GPU tests job20 did not run.
set -uo pipefail
commit=$1
HERE=results/h100-triton-tune/seventeenth-session/job21
J=/tmp/j21
rm -rf "$J" && mkdir -p "$J" && tar -c --exclude=./.gpu-stage --exclude=./.peers -f - . | tar -x -C "$J"
cd "$J" || exit 1
source scripts/gpu-run.sh env
R=/tmp/r21; mkdir -p "$R"
started=$(date +%s); budget=${JOB_BUDGET_S:-720}
VARIANTS="p pall s3p"
for v in $VARIANTS; do
  rm -rf "/tmp/v-$v" && cp -r "$J" "/tmp/v-$v"
  (cd "/tmp/v-$v" && patch -s -p1 < "$J/$HERE/$v.patch") && echo "variant $v: $(grep -c 'persistent=True),$' "/tmp/v-$v/kernels/paged_attention/configs.py") persistent entries" \
    || { echo "variant $v: patch does not apply"; exit 1; }
done
step() { echo "== $(date +%T) (+$(( $(date +%s) - started )) s) $1"; }
in_time() { [ $(( $(date +%s) - started )) -lt "$budget" ] || { step "skipped (past ${budget} s): $1"; return 1; }; }
T="timeout 150 python3 scripts/triton_tune.py --budget-s 0"
rows() {  # TREE LABEL OUT [options]: the tree's Triton and cuDNN rows, its commit named with LABEL
  local tree=$1 label=$2 out=$3; shift 3
  (cd "$tree" && PYTHONPATH="$tree:$PYTHONPATH" PAGED_BENCH_COMMIT="$label" timeout 300 python3 -m harness.frontends.cli run \
     --backends triton,cudnn --no-capability --no-report --out "$out" "$@" > "$out.log" 2>&1)
  echo "rc $? ($label -> $(basename "$out"))"
}
label() { [ "$1" = landed ] && echo "$commit" || echo "$commit+$1($(sha256sum "$J/$HERE/$1.patch" | cut -c1-12))"; }
tree() { [ "$1" = landed ] && echo "$J" || echo "/tmp/v-$1"; }

step "tune D64 and D256: persistent"
$T --out "$R/tune-d64" --heads 32 8 --head-dims 64 --cases 4q2kc2k 8q2kc0 --pages 256 16 \
   --gluon 128,3,persistent > "$R/tune-d64.log" 2>&1; echo "rc $?"
$T --out "$R/tune-d256" --heads 16 8 --head-dims 256 --cases 4q2kc2k 4q2kc0 --pages 16 256 \
   --gluon 64,2,overlap,kahead,persistent > "$R/tune-d256.log" 2>&1; echo "rc $?"

step "rows 1: the table as committed (full sweep), then the variants (prefill, mixed)"
rows "$J" "$(label landed)" "$R/rows-landed"
for v in $VARIANTS; do rows "$(tree $v)" "$(label $v)" "$R/pm1-$v" --workloads prefill,mixed; done

step "rows: fa4"
PAGED_BENCH_COMMIT="$commit" timeout 300 python3 -m harness.frontends.cli run --backends fa4 --no-capability \
  --out "$R/rows-landed" > "$R/rows-fa4.log" 2>&1; echo "rc $?"

if in_time "rows 2"; then
  step "rows 2: prefill and mixed again, variants first"
  for v in $VARIANTS landed; do rows "$(tree $v)" "$(label $v)" "$R/pm2-$v" --workloads prefill,mixed; done
fi
if in_time "gpu tests"; then
  step "gpu tests: o_in_q with q_ahead (job20's label check failed them), other persistent cases"
  timeout 150 python3 -m pytest -q -m gpu -n 8 -p no:cacheprovider tests/test_hopper_prefill.py \
    -k "(o_in_q and qahead) or (persistent and not persistent_programs and not o_in_q)" > "$R/tests.log" 2>&1
  echo "rc $?"; tail -3 "$R/tests.log"
fi
if in_time "tune short"; then
  step "tune: short sequences persistent"
  $T --out "$R/tune-short" --cases 8q512c0 16q256c0 32q512c0 --pages 256 16 \
     --gluon 64,2,m64,persistent 128,2,overlap,persistent > "$R/tune-short.log" 2>&1; echo "rc $?"
fi
step "done"
