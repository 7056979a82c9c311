# Source on the GPU machine from the project root: `source scripts/device-env.sh`.
# Installs the carried kit (.device, from ../shared/device/stage.sh) and flash-attn: from a prebuilt
# archive in .fa_prebuilt/ when one was carried (saves the ~6.5 min build), else built from source.
# Exports PAGED_BENCH_COMMIT so that results record the real commit (the copy that travels has no .git).
if [ -n "$(ls .fa_prebuilt/fa_site.tar.xz.part-* 2>/dev/null)" ] && [ ! -d /tmp/fa_site/flash_attn ]; then
  mkdir -p /tmp/fa_site && cat .fa_prebuilt/fa_site.tar.xz.part-* | xz -d | tar x -C /tmp/fa_site || return 1
fi
if [ -d /tmp/fa_site/flash_attn ]; then
  source .device/gpu-env.sh || return 1
  export PYTHONPATH=/tmp/fa_site:$PYTHONPATH
  export FLASH_ATTN_BUILD_NOTE="flash-attn 2.8.3.post2 built from source for sm_90; dropout/alibi/softcap/local/uneven-K compiled out"
else
  source .device/gpu-env.sh --flash-attn || return 1
fi
export PYTHONPATH=$PWD:$PYTHONPATH
[ -f .device/commit ] && export PAGED_BENCH_COMMIT=$(cat .device/commit)
python3 -c "import flash_attn; print('flash-attn', flash_attn.__version__)"
