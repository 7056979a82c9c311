#!/usr/bin/env bash
# Pack several cached cuDNN releases (python -m harness.releases.cudnn_release fetch VERSION) into ONE xz archive
# split in parts, for a machine without network that takes at most ~64 MiB per transfer. The same
# library of consecutive releases differs little: ordered library by library across releases and
# compressed with a dictionary larger than one library, each release after the first costs about a
# fifth of its own size (measured: two runtime_compiled libraries 14.2 MB alone, 17.0 MB together).
#   PAGED_BENCH_CUDNN_CACHE=DIR bash scripts/pack-cudnn-releases.sh OUT_DIR VERSION [VERSION ...]
# There: cat OUT_DIR/cudnn-releases.tar.xz.part-* | xz -d | tar x -C /tmp/cudnn   -> /tmp/cudnn/<version>/
set -euo pipefail
out=$1; shift
cache=${PAGED_BENCH_CUDNN_CACHE:-$HOME/.cache/paged-attn-bench/cudnn}
mkdir -p "$out"
rm -f "$out"/cudnn-releases.tar.xz.part-*
files=()
for lib in libcudnn_graph libcudnn_heuristic libcudnn_engines_runtime_compiled libcudnn; do
  for version in "$@"; do files+=("$version/$lib.so.9"); done
done
for version in "$@"; do files+=("$version/release.json"); done
tar -C "$cache" -cf - "${files[@]}" | xz -T1 --lzma2=preset=6,dict=384MiB | split -b 40M -a 2 - "$out/cudnn-releases.tar.xz.part-"
ls -la "$out"
