#!/usr/bin/env bash
# Run HERE, in the project root, before a session on the lent GPU machine: everything that machine
# lacks, in ONE payload split into parts that each fit a device call beside the working tree
# (a call carries at most 64 MiB in all). Inputs, each made beforehand (missing ones are left out):
#   ../shared/device          the kit: nvidia-cudnn-frontend and asv wheels, gpu-env.sh, prebuilt flash-attn 2
#   .peers/parts/             FlashInfer / FlashAttention 4 wheels (+ FlashInfer kernels built ahead of time):
#                             bash scripts/build-peers-aot.sh; bash scripts/stage-peers.sh
#   .cudnn-release/           cuDNN releases in one archive: bash scripts/pack-cudnn-releases.sh .cudnn-release V...
# Output: .gpu-stage/payload.part-aa, -ab, ... and .gpu-stage/MANIFEST (name, bytes, sha256); one part per
# call (carry [".gpu-stage/MANIFEST", ".gpu-stage/payload.part-XX"]), received THERE by
# `bash scripts/gpu-run.sh receive`, which installs everything once the last part is in.
set -euo pipefail
cd "$(dirname "$0")/.."
PART_MIB=${PART_MIB:-56}
SHARED=${SHARED_DEVICE:-../shared/device}
stage=.gpu-stage
rm -rf "$stage" && mkdir -p "$stage/payload/kit"
for wheel in "$SHARED"/wheels/nvidia_cudnn_frontend-*.whl "$SHARED"/wheels/asv-*.whl "$SHARED"/wheels/asv_runner-*.whl \
             "$SHARED"/wheels/json5-*.whl "$SHARED"/wheels/Pympler-*.whl "$SHARED"/wheels/importlib_metadata-*.whl; do
  cp "$wheel" "$stage/payload/kit/"
done
cp "$SHARED"/prebuilt/flash_attn-*-sm90-reduced.tar.xz "$stage/payload/fa_site.tar.xz"
if [ -f .peers/parts/MANIFEST ]; then
  (cd .peers/parts && cat $(awk '{print $1}' MANIFEST)) > "$stage/payload/peers.tar"
fi
if ls .cudnn-release/cudnn-releases.tar.xz.part-* >/dev/null 2>&1; then
  cat .cudnn-release/cudnn-releases.tar.xz.part-* > "$stage/payload/cudnn-releases.tar.xz"
fi
git rev-parse --short=12 HEAD > "$stage/payload/commit"
tar -cf - -C "$stage" payload | split -b "${PART_MIB}M" -a 2 - "$stage/payload.part-"
rm -rf "$stage/payload"
(cd "$stage" && for part in payload.part-*; do
   printf '%s %s %s\n' "$part" "$(stat -c %s "$part")" "$(sha256sum "$part" | cut -d' ' -f1)"
 done > MANIFEST)
cat "$stage/MANIFEST"
echo "$(wc -l < "$stage/MANIFEST") parts; working tree: $(git ls-files -co --exclude-standard -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1) bytes"
