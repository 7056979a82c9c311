#!/usr/bin/env bash
# Run THERE (the lent GPU machine), from the project root; /tmp survives between calls while the
# machine stays warm (a call within 30 s of the last).
#   bash scripts/gpu-run.sh receive          store the carried payload part(s) (scripts/gpu-stage.sh); when a
#                                            group is complete, install it: base = the kit (cuDNN frontend, asv)
#                                            in /tmp/site and flash-attn 2 in /tmp/fa_site; peers = FlashInfer /
#                                            FA4 in /tmp/peers; cudnn = the releases in /tmp/cudnn/<version>
#   source scripts/gpu-run.sh env            the environment of every later command (PYTHONPATH, commit, ...)
#   bash scripts/gpu-run.sh start NAME CMD   run CMD in the background, in its own session (it outlives the
#                                            call), log /tmp/logs/NAME.log, exit status /tmp/logs/NAME.rc
#   bash scripts/gpu-run.sh wait NAME [S]    wait up to S seconds (default 25) for NAME; print its log's tail
#   bash scripts/gpu-run.sh collect [DIR..]  tar /tmp/logs and the given folders into $OUT
#   bash scripts/gpu-run.sh await GROUP [S]  (inside a job) wait up to S seconds (default 300) until a later call's
#                                            `receive` has installed GROUP (base, peers, cudnn); status 1 if not
(return 0 2>/dev/null) || set -uo pipefail   # not when sourced: the caller's shell keeps its options

_payload=/tmp/payload

_install_base() {
  local p=$1
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$p"/kit/*.whl || return 1
  mkdir -p /tmp/fa_site && xz -d < "$p/fa_site.tar.xz" | tar -x -C /tmp/fa_site || return 1
  cp "$p/commit" "$_payload/commit"
  echo "gpu-run: installed $(ls /tmp/site | grep -c dist-info) kit distributions and flash-attn 2"
}

_install_peers() {
  local peers=$_payload/peers-unpacked
  rm -rf "$peers" && mkdir -p "$peers" && tar -x -C "$peers" -f "$1/peers.tar" || return 1
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/peers "$peers"/wheels/*.whl || return 1
  if [ -d "$peers/aot" ]; then
    mkdir -p /tmp/peers/flashinfer/data/aot && cp -r "$peers"/aot/* /tmp/peers/flashinfer/data/aot/
  fi
  rm -rf "$peers"
  echo "gpu-run: installed $(ls /tmp/peers | grep -c dist-info) peer distributions"
}

_install_cudnn() {
  mkdir -p /tmp/cudnn && xz -d < "$1/cudnn-releases.tar.xz" | tar -x -C /tmp/cudnn || return 1
  echo "gpu-run: cuDNN releases in /tmp/cudnn: $(ls /tmp/cudnn | tr '\n' ' ')"
}

_receive() {
  mkdir -p "$_payload"
  cp .gpu-stage/*.MANIFEST "$_payload/" 2>/dev/null
  local part
  for part in .gpu-stage/*.part-*; do
    [ -f "$part" ] && cp "$part" "$_payload/$(basename "$part")"
  done
  local manifest group name size sum missing unpack
  for manifest in "$_payload"/*.MANIFEST; do
    [ -f "$manifest" ] || { echo "gpu-run: no MANIFEST carried" >&2; return 1; }
    group=$(basename "$manifest" .MANIFEST)
    [ -f "$_payload/$group.installed" ] && continue
    missing=()
    while read -r name size sum; do
      if [ ! -f "$_payload/$name" ]; then
        missing+=("$name")
      elif [ "$(sha256sum "$_payload/$name" | cut -d' ' -f1)" != "$sum" ]; then
        echo "gpu-run: $name: checksum mismatch, removed (carry it again)" >&2
        rm -f "$_payload/$name"; missing+=("$name")
      fi
    done < "$manifest"
    if [ ${#missing[@]} -gt 0 ]; then
      echo "gpu-run: $group: $(( $(wc -l < "$manifest") - ${#missing[@]} ))/$(wc -l < "$manifest") parts here; to carry: ${missing[*]}"
      continue
    fi
    unpack=$_payload/unpacked
    rm -rf "$unpack" && mkdir -p "$unpack"
    (cd "$_payload" && cat $(awk '{print $1}' "$group.MANIFEST")) | tar -x -C "$unpack" || return 1
    if [ -n "${GPU_RUN_DRY:-}" ]; then  # a check of the parts' round trip (on any machine): list, install nothing
      echo "gpu-run: $group complete: $(cd "$unpack/$group" && ls | tr '\n' ' ')"
    else
      "_install_$group" "$unpack/$group" || return 1
    fi
    rm -rf "$unpack" "$_payload/$group".part-*
    touch "$_payload/$group.installed"
  done
}

_env() {
  export PYTHONPATH="$PWD:/tmp/site:/tmp/fa_site:/tmp/peers:/tmp/peers/nvidia_cutlass_dsl/dsl_packages${PYTHONPATH:+:$PYTHONPATH}"
  export PATH="/tmp/site/bin:$PATH"
  export FLASH_ATTN_BUILD_NOTE="flash-attn 2.8.3.post2 built from source for sm_90; dropout/alibi/softcap/local/uneven-K compiled out"
  export PAGED_BENCH_COMMIT="$(cat "$_payload/commit" 2>/dev/null || echo unknown)"
  export PYTHONUNBUFFERED=1
  # FlashInfer's kernels were built ahead of time (scripts/build-peers-aot.sh) for the standard layer; its
  # JIT would spend minutes of the session's device time per other layout: those cells are `skipped`.
  export FLASHINFER_DISABLE_JIT=${FLASHINFER_DISABLE_JIT:-1}
}

_start() {
  local name=$1; shift
  mkdir -p /tmp/logs
  rm -f "/tmp/logs/$name.rc"
  # { } so that every command of CMD (a; b; c) writes to the log, not only the last
  setsid nohup bash -c "{ $*; } > /tmp/logs/$name.log 2>&1; echo \$? > /tmp/logs/$name.rc" > /dev/null 2>&1 < /dev/null &
  echo "gpu-run: started $name (log /tmp/logs/$name.log)"
}

_wait() {
  local name=$1 seconds=${2:-25} waited=0
  while [ ! -f "/tmp/logs/$name.rc" ] && [ "$waited" -lt "$seconds" ]; do sleep 1; waited=$((waited + 1)); done
  tail -n "${TAIL:-6}" "/tmp/logs/$name.log" 2>/dev/null
  if [ -f "/tmp/logs/$name.rc" ]; then echo "gpu-run: $name finished, exit status $(cat "/tmp/logs/$name.rc")"
  else echo "gpu-run: $name still running"; fi
}

_await() {
  local group=$1 seconds=${2:-300} waited=0
  while [ ! -f "$_payload/$group.installed" ] && [ "$waited" -lt "$seconds" ]; do sleep 1; waited=$((waited + 1)); done
  if [ -f "$_payload/$group.installed" ]; then echo "gpu-run: $group installed (waited ${waited}s)"
  else echo "gpu-run: $group not installed after ${seconds}s" >&2; return 1; fi
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
  await) shift; _await "$@" ;;
  *) echo "usage: see the head of scripts/gpu-run.sh" >&2; (return 2 2>/dev/null) || exit 2 ;;
esac
