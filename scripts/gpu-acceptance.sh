#!/usr/bin/env bash
# The GPU acceptance runs, in parts, for one call on the lent GPU machine:
#   source scripts/device-env.sh && bash scripts/gpu-acceptance.sh PART [PART ...]
# Parts: tests | main | noise | versions | asv. Logs and small results go to $OUT (or ./gpu-out).
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
BENCH="python3 -m harness.cli"
export PYTHONUNBUFFERED=1
stamp() { echo "== $(date +%H:%M:%S) $*"; }

part_tests() {   # every GPU test: foundation, adapters grid, Triton kernel, isolation with an OOB backend
  stamp "pytest -m gpu"
  python3 -m pytest -m gpu -q -rs -p no:cacheprovider 2>&1 | tee "$OUT/gpu-tests.log" | tail -25
}

part_main() {    # the main command's default run: the published results and report
  stamp "main command (default sweep)"
  local start=$SECONDS
  $BENCH --out results/h100 --quiet 2>&1 | tee "$OUT/main.log" | grep -v "^\s*$" | tail -15
  echo "main command wall time: $((SECONDS - start)) s" | tee -a "$OUT/main.log"
  tar czf "$OUT/h100-results.tgz" results/h100
}

part_noise() {   # two runs of the short sweep at one commit: the comparison must flag nothing
  stamp "short sweep twice + compare"
  $BENCH --sweep short --out /tmp/short-a --quiet --no-capability --no-report > "$OUT/short-a.log" 2>&1
  $BENCH --sweep short --out /tmp/short-b --quiet --no-capability --no-report > "$OUT/short-b.log" 2>&1
  $BENCH compare /tmp/short-a /tmp/short-b --out /tmp/short-b/comparison.html 2>&1 | tee "$OUT/noise-compare.txt" | tail -30
  tar czf "$OUT/short-runs.tgz" -C /tmp short-a short-b
}

part_versions() {  # two real environments differing only in the cuDNN frontend version
  stamp "cuDNN frontend 1.32.0 vs 1.22.1"
  python3 -m pip install -q --no-index --no-deps --target /tmp/fe-1.22.1 .device/alt/nvidia_cudnn_frontend-1.22.1-*.whl
  $BENCH compare-envs fe-1.32.0 fe-1.22.1,pythonpath=/tmp/fe-1.22.1 --sweep short --backends cudnn,triton \
      --out /tmp/versions --capability 2>&1 | grep -v "cells:" | tee "$OUT/versions-compare.txt" | tail -40
  tar czf "$OUT/versions.tgz" -C /tmp versions
}

part_asv() {     # asv run of the short sweep, asv publish (needs a git repository: a throwaway one)
  stamp "asv short sweep"
  local start=$SECONDS
  rm -rf .git  # the copy that travels holds no repository of ours: make a throwaway one on branch main
  git init -q -b main && git add -A && git -c user.name=x -c user.email=x@x commit -qm snapshot
  asv machine --yes --machine h100 > /dev/null
  # asv drops PYTHONPATH from its benchmark processes unless it is passed as ASV_PYTHONPATH
  ASV_PYTHONPATH="$PYTHONPATH" PAGED_BENCH_SWEEP=short asv run --python=same --machine h100 --set-commit-hash "$(git rev-parse HEAD)" \
      --show-stderr 2>&1 | tee "$OUT/asv-run.log" | grep -E "^\[|Decode|Prefill|Mixed" | tail -20
  echo "asv run wall time: $((SECONDS - start)) s" | tee -a "$OUT/asv-run.log"
  asv publish 2>&1 | tail -3 | tee "$OUT/asv-publish.log"
  ls .asv/html | head -5
  tar czf "$OUT/asv.tgz" results/asv .asv/cells
}

for part in "$@"; do "part_$part"; done
stamp done
