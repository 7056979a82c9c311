#!/usr/bin/env bash
# Run THERE (the lent GPU machine), from the project root, as a background job:
#   bash scripts/gpu-run.sh start rows "bash scripts/gpu-rows.sh OUT NOW [LATER] [paged-bench options...]"
# One sweep's rows into one results folder, while the peers still travel: the backends NOW (those the base group
# serves: triton, cudnn, ...) at once, then the backends LATER (FlashInfer's, fa4) once a later call's
# `gpu-run.sh receive` has installed the peers group; the report covers both. LATER may be "" (then the report
# follows NOW). It runs from a copy of the tree (/tmp/rows-tree), since every call sends the tree again while
# the job's workers import from it. Options after LATER go to both runs (e.g. --workloads prefill,mixed).
set -uo pipefail
[ $# -ge 2 ] || { echo "usage: gpu-rows.sh OUT NOW [LATER] [paged-bench options...]" >&2; exit 2; }
out=$1 now=$2 later=${3:-}
shift $(( $# >= 3 ? 3 : 2 ))
tree=/tmp/rows-tree
rm -rf "$tree" && mkdir -p "$tree" && tar -c --exclude=./.gpu-stage --exclude=./.peers -f - . | tar -x -C "$tree"
cd "$tree" || exit 1
source scripts/gpu-run.sh env
echo "gpu-rows: commit $PAGED_BENCH_COMMIT; $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
start=$(date +%s)
python3 -m harness.frontends.cli run --backends "$now" --no-capability --no-report --out "$out" "$@"
echo "gpu-rows: $now finished with status $? after $(( $(date +%s) - start )) s"
if [ -n "$later" ]; then
  bash scripts/gpu-run.sh await peers 600 || exit 1
  python3 -m harness.frontends.cli run --backends "$later" --no-capability --out "$out" "$@"
  echo "gpu-rows: $later finished with status $? after $(( $(date +%s) - start )) s"
else
  python3 -m harness.frontends.cli report "$out"
fi
