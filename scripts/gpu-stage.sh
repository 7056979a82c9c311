#!/usr/bin/env bash
# Run HERE, in the project root, before a session on the lent GPU machine: everything that machine
# lacks, in ONE payload split into parts that each fit a device call beside the working tree
# (a call carries at most 64 MiB in all). Inputs, each made beforehand (missing ones are left out):
#   ../shared/device          the kit: nvidia-cudnn-frontend and asv wheels, gpu-env.sh, prebuilt flash-attn 2
#   .peers/parts/             FlashInfer / FlashAttention 4 wheels (+ FlashInfer kernels built ahead of time):
#                             bash scripts/build-peers-aot.sh; bash scripts/stage-peers.sh
#   .cudnn-release/           cuDNN releases in one archive: bash scripts/pack-cudnn-releases.sh .cudnn-release V...
# Output: three groups of parts, .gpu-stage/base.part-aa ... (kit, flash-attn 2, the commit),
# .gpu-stage/peers.part-aa ... (FlashInfer, FA4) and .gpu-stage/cudnn.part-aa ... (the releases), each with a
# MANIFEST (name, bytes, sha256). One part per call (carry the MANIFESTs and ".gpu-stage/<part>"), received
# THERE by `bash scripts/gpu-run.sh receive`, which installs a group as soon as its last part is in: the base
# comes first, so a job that needs only the kit (the Triton kernel's tuning) can start while the peers travel.
set -euo pipefail
cd "$(dirname "$0")/.."
PART_MIB=${PART_MIB:-58}
SHARED=${SHARED_DEVICE:-../shared/device}
stage=.gpu-stage
rm -rf "$stage" && mkdir -p "$stage/base/kit" "$stage/peers" "$stage/cudnn"
# base: what every run needs (installed as soon as its parts are in)
for wheel in "$SHARED"/wheels/nvidia_cudnn_frontend-*.whl "$SHARED"/wheels/asv-*.whl "$SHARED"/wheels/asv_runner-*.whl \
             "$SHARED"/wheels/json5-*.whl "$SHARED"/wheels/Pympler-*.whl "$SHARED"/wheels/importlib_metadata-*.whl; do
  cp "$wheel" "$stage/base/kit/"
done
cp "$SHARED"/prebuilt/flash_attn-*-sm90-reduced.tar.xz "$stage/base/fa_site.tar.xz"
# GPU_STAGE_NO_PEERS=1 leaves FlashInfer / FA4 out (a session that only tunes the Triton kernel)
if [ -f .peers/parts/MANIFEST ] && [ -z "${GPU_STAGE_NO_PEERS:-}" ]; then
  (cd .peers/parts && cat $(awk '{print $1}' MANIFEST)) > "$stage/peers/peers.tar"
fi
git rev-parse --short=12 HEAD > "$stage/base/commit"
# cudnn: the releases archive (only the release comparison needs it); GPU_STAGE_BASE_ONLY=1 leaves it out
# (e.g. while pack-cudnn-releases.sh is still writing it: base can travel first, cudnn in a later stage)
if [ -z "${GPU_STAGE_BASE_ONLY:-}" ] && ls .cudnn-release/cudnn-releases.tar.xz.part-* >/dev/null 2>&1; then
  cat .cudnn-release/cudnn-releases.tar.xz.part-* > "$stage/cudnn/cudnn-releases.tar.xz"
fi
for group in base peers cudnn; do
  [ -n "$(ls "$stage/$group")" ] || continue
  tar -cf - -C "$stage" "$group" | split -b "${PART_MIB}M" -a 2 - "$stage/$group.part-"
  rm -rf "${stage:?}/$group"
  (cd "$stage" && for part in $group.part-*; do
     printf '%s %s %s\n' "$part" "$(stat -c %s "$part")" "$(sha256sum "$part" | cut -d' ' -f1)"
   done > "$group.MANIFEST")
done
rmdir "$stage"/base "$stage"/peers "$stage"/cudnn 2>/dev/null || true
cat "$stage"/*.MANIFEST
echo "working tree: $(git ls-files -co --exclude-standard -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1) bytes"
