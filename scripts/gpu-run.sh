#!/usr/bin/env bash
# Run THERE (the lent GPU machine), from the project root; /tmp survives between calls while the
# machine stays warm (a call within 30 s of the last).
#   bash scripts/gpu-run.sh receive          store the carried payload part (scripts/gpu-stage.sh); after the
#                                            last one, install: the kit (cuDNN frontend, asv) in /tmp/site,
#                                            flash-attn 2 in /tmp/fa_site, FlashInfer / FA4 in /tmp/peers,
#                                            cuDNN releases in /tmp/cudnn/<version>
#   source scripts/gpu-run.sh env            the environment of every later command (PYTHONPATH, commit, ...)
#   bash scripts/gpu-run.sh start NAME CMD   run CMD in the background, in its own session (it outlives the
#                                            call), log /tmp/logs/NAME.log, exit status /tmp/logs/NAME.rc
#   bash scripts/gpu-run.sh wait NAME [S]    wait up to S seconds (default 25) for NAME; print its log's tail
#   bash scripts/gpu-run.sh collect [DIR..]  tar /tmp/logs and the given folders into $OUT
(return 0 2>/dev/null) || set -uo pipefail   # not when sourced: the caller's shell keeps its options

_payload=/tmp/payload

_install() {
  local unpack=$_payload/unpacked
  rm -rf "$unpack" && mkdir -p "$unpack"
  (cd "$_payload" && cat $(awk '{print $1}' MANIFEST)) | tar -x -C "$unpack" || return 1
  local p=$unpack/payload
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$p"/kit/*.whl || return 1
  mkdir -p /tmp/fa_site && xz -d < "$p/fa_site.tar.xz" | tar -x -C /tmp/fa_site || return 1
  if [ -f "$p/peers.tar" ]; then
    mkdir -p "$unpack/peers" && tar -x -C "$unpack/peers" -f "$p/peers.tar" || return 1
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/peers "$unpack"/peers/wheels/*.whl || return 1
    if [ -d "$unpack/peers/aot" ]; then
      mkdir -p /tmp/peers/flashinfer/data/aot && cp -r "$unpack"/peers/aot/* /tmp/peers/flashinfer/data/aot/
    fi
  fi
  if [ -f "$p/cudnn-releases.tar.xz" ]; then
    mkdir -p /tmp/cudnn && xz -d < "$p/cudnn-releases.tar.xz" | tar -x -C /tmp/cudnn || return 1
  fi
  cp "$p/commit" "$_payload/commit"
  rm -rf "$unpack"
  touch "$_payload/installed"
  echo "gpu-run: installed: $(ls /tmp/site | grep -c dist-info) kit, $(ls /tmp/peers 2>/dev/null | grep -c dist-info) peer" \
       "distributions; cuDNN releases: $(ls /tmp/cudnn 2>/dev/null | tr '\n' ' ')"
}

_receive() {
  mkdir -p "$_payload"
  [ -f .gpu-stage/MANIFEST ] && cp .gpu-stage/MANIFEST "$_payload/MANIFEST"
  [ -f "$_payload/MANIFEST" ] || { echo "gpu-run: no MANIFEST carried" >&2; return 1; }
  local part name size sum missing=()
  for part in .gpu-stage/payload.part-*; do
    [ -f "$part" ] && cp "$part" "$_payload/$(basename "$part")"
  done
  while read -r name size sum; do
    if [ ! -f "$_payload/$name" ]; then
      missing+=("$name")
    elif [ "$(sha256sum "$_payload/$name" | cut -d' ' -f1)" != "$sum" ]; then
      echo "gpu-run: $name: checksum mismatch, removed (carry it again)" >&2
      rm -f "$_payload/$name"
      missing+=("$name")
    fi
  done < "$_payload/MANIFEST"
  if [ ${#missing[@]} -gt 0 ]; then
    echo "gpu-run: $(( $(wc -l < "$_payload/MANIFEST") - ${#missing[@]} ))/$(wc -l < "$_payload/MANIFEST") parts here; to carry: ${missing[*]}"
    return 0
  fi
  [ -f "$_payload/installed" ] || _install
}

_env() {
  export PYTHONPATH="$PWD:/tmp/site:/tmp/fa_site:/tmp/peers:/tmp/peers/nvidia_cutlass_dsl/dsl_packages${PYTHONPATH:+:$PYTHONPATH}"
  export PATH="/tmp/site/bin:$PATH"
  export FLASH_ATTN_BUILD_NOTE="flash-attn 2.8.3.post2 built from source for sm_90; dropout/alibi/softcap/local/uneven-K compiled out"
  export PAGED_BENCH_COMMIT="$(cat "$_payload/commit" 2>/dev/null || echo unknown)"
  export PYTHONUNBUFFERED=1
}

_start() {
  local name=$1; shift
  mkdir -p /tmp/logs
  rm -f "/tmp/logs/$name.rc"
  setsid nohup bash -c "$* > /tmp/logs/$name.log 2>&1; echo \$? > /tmp/logs/$name.rc" > /dev/null 2>&1 < /dev/null &
  echo "gpu-run: started $name (log /tmp/logs/$name.log)"
}

_wait() {
  local name=$1 seconds=${2:-25} waited=0
  while [ ! -f "/tmp/logs/$name.rc" ] && [ "$waited" -lt "$seconds" ]; do sleep 1; waited=$((waited + 1)); done
  tail -n "${TAIL:-6}" "/tmp/logs/$name.log" 2>/dev/null
  if [ -f "/tmp/logs/$name.rc" ]; then echo "gpu-run: $name finished, exit status $(cat "/tmp/logs/$name.rc")"
  else echo "gpu-run: $name still running"; fi
}

_collect() {
  local out=${OUT:-gpu-out}
  mkdir -p "$out"
  tar -czf "$out/logs.tgz" -C /tmp logs 2>/dev/null
  local dir
  for dir in "$@"; do
    [ -e "$dir" ] && tar -czf "$out/$(basename "$dir").tgz" -C "$(dirname "$dir")" "$(basename "$dir")"
  done
  ls -la "$out"
}

case "${1:-}" in
  receive) _receive ;;
  env) _env ;;
  start) shift; _start "$@" ;;
  wait) shift; _wait "$@" ;;
  collect) shift; _collect "$@" ;;
  *) echo "usage: see the head of scripts/gpu-run.sh" >&2; (return 2 2>/dev/null) || exit 2 ;;
esac
