#!/usr/bin/env bash
# Run HERE (a machine with pip and the package registry), from the project root:
#   bash scripts/stage-peers.sh              (PEERS=fa4 for FlashAttention 4 alone)
# Downloads the wheels the peer backends need that the GPU machine lacks (FlashInfer, FlashAttention 4
# and their needs; JAX is already there), for CPython 3.12 / manylinux x86-64, into .peers/wheels/ (a
# git-ignored folder), adds any FlashInfer kernels built ahead of time by scripts/build-peers-aot.sh
# (.peers/aot/), packs everything into one tar and splits it into parts of at most $PART_MB MB
# (.peers/parts/peers.tar.part-aa, -ab, ...) with a MANIFEST (name, bytes, sha256 of each part).
# Each part then travels in its own device call (one call carries at most 64 MiB), see
# scripts/install-peers.sh, which runs THERE.
set -euo pipefail
cd "$(dirname "$0")/.."

PART_MB=${PART_MB:-45}
STAGE=.peers
# One version of each, chosen for torch 2.11 + CUDA 13 + Python 3.12 on sm_90 (docs/peers.md says why).
# Already on the GPU machine, not carried: torch, numpy, einops, click, ninja, requests, tqdm, tabulate,
# nvidia-ml-py, packaging, protobuf, typing-extensions, cuda-bindings/cuda-core/cuda-pathfinder, jax.
# nvidia-cudnn-frontend 1.32.0 (flashinfer-cudnn) comes with the shared kit (.device, gpu-env.sh).
# Left out on purpose (not imported by the paths we run): cuda-tile, nccl4py, nccl-extensions, cuda-python
# (a meta package), torch-c-dlpack-ext (torch >= 2.10 has the DLPack exchange API itself).
# PEERS chooses the backends (default both): PEERS=fa4 stages FlashAttention 4 alone (101 MB, 3 parts with the
# kit instead of 6), for a session whose rows are Triton, cuDNN and FA4 (the Triton kernel's issue).
PEERS=${PEERS:-flashinfer,fa4}
SHARED_WHEELS=(
  apache-tvm-ffi==0.1.15.post2
  nvidia-cutlass-dsl==4.8.1
  nvidia-cutlass-dsl-libs-core==4.8.1
  nvidia-cutlass-dsl-libs-base==4.8.1
  nvidia-cutlass-dsl-libs-cu13==4.8.1
)
WHEELS=("${SHARED_WHEELS[@]}")
for peer in ${PEERS//,/ }; do
  case "$peer" in
    flashinfer) WHEELS+=(flashinfer-python==0.7.4) ;;
    fa4) WHEELS+=(flash-attn-4==4.0.0b36 quack-kernels==0.6.5) ;;
    *) echo "stage-peers.sh: PEERS=$PEERS: '$peer' is not a peer; choose from flashinfer, fa4" >&2; exit 2 ;;
  esac
done
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)

mkdir -p "$STAGE/wheels" "$STAGE/parts"
python3 -m pip download -q --no-deps --only-binary=:all: --pre --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d "$STAGE/wheels" "${WHEELS[@]}"

# Keep exactly the pinned set (a wheel left from an earlier pin would install two versions).
python3 - "$STAGE/wheels" "${WHEELS[@]}" <<'EOF'
import re, sys
from pathlib import Path
folder, pins = Path(sys.argv[1]), sys.argv[2:]
wanted = {re.sub(r"[-_.]+", "_", p.split("==")[0]).lower(): p.split("==")[1] for p in pins}
for wheel in sorted(folder.glob("*.whl")):
    name, version = wheel.name.split("-")[:2]
    if wanted.get(re.sub(r"[-_.]+", "_", name).lower()) != version:
        print(f"removing {wheel.name} (not pinned)")
        wheel.unlink()
have = {re.sub(r"[-_.]+", "_", w.name.split("-")[0]).lower() for w in folder.glob("*.whl")}
missing = sorted(set(wanted) - have)
if missing:
    sys.exit(f"missing wheels: {missing}")
EOF

members=(wheels)
if [[ ",$PEERS," == *",flashinfer,"* ]] && [ -n "$(ls "$STAGE"/aot/*/*.so 2>/dev/null)" ]; then
  members+=(aot)
  echo "including ahead-of-time FlashInfer kernels: $(ls "$STAGE"/aot | wc -l) modules"
fi
rm -f "$STAGE"/parts/peers.tar.part-* "$STAGE/parts/MANIFEST"
tar -cf - -C "$STAGE" "${members[@]}" | split -b "${PART_MB}M" - "$STAGE/parts/peers.tar.part-"
(cd "$STAGE/parts" && for part in peers.tar.part-*; do
   printf '%s %s %s\n' "$part" "$(stat -c %s "$part")" "$(sha256sum "$part" | cut -d' ' -f1)"
 done > MANIFEST)

echo "wheels:"
ls -l "$STAGE/wheels" | awk 'NR > 1 {printf "  %10d  %s\n", $5, $9}'
echo "parts (.peers/parts/MANIFEST):"
awk '{printf "  %-20s %10d  %s\n", $1, $2, $3}' "$STAGE/parts/MANIFEST"
count=$(wc -l < "$STAGE/parts/MANIFEST")
echo "carry one part per device call, each with the manifest, e.g. for the first:"
echo "  carry: [\".peers/parts/MANIFEST\", \".peers/parts/peers.tar.part-aa\"]   command: bash scripts/install-peers.sh"
echo "($count calls; the last one installs into /tmp/peers and prints the PYTHONPATH line)"
