#!/usr/bin/env bash
# Run THERE (the GPU machine), from the project root, once per device call that carries one part made
# by scripts/stage-peers.sh (carry [".peers/parts/MANIFEST", ".peers/parts/peers.tar.part-XX"]):
#   bash scripts/install-peers.sh            # stores the carried part(s) in /tmp/peers-parts
# Once every part listed in the MANIFEST is there (the machine keeps /tmp between calls while it stays
# warm), it unpacks them, installs the wheels with
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/peers <wheels>
# copies any ahead-of-time FlashInfer kernels into FlashInfer's AOT folder, and prints the PYTHONPATH line.
# Later calls only print that line. Sourced (`source scripts/install-peers.sh`), it also exports it.
# PEERS_TARGET overrides /tmp/peers.

_peers_main() {
  local parts=.peers/parts store=/tmp/peers-parts target=${PEERS_TARGET:-/tmp/peers}
  local manifest=$parts/MANIFEST
  mkdir -p "$store"
  if [ -f "$manifest" ]; then
    cp "$manifest" "$store/MANIFEST"
  fi
  if [ ! -f "$store/MANIFEST" ]; then
    echo "install-peers: no MANIFEST carried (.peers/parts/MANIFEST) and none stored yet" >&2
    return 1
  fi
  local part name size sum
  for part in "$parts"/peers.tar.part-*; do
    [ -f "$part" ] || continue
    name=$(basename "$part")
    cp "$part" "$store/$name.tmp" && mv "$store/$name.tmp" "$store/$name"
  done
  local missing=() bad=()
  while read -r name size sum; do
    if [ ! -f "$store/$name" ]; then
      missing+=("$name")
    elif [ "$(sha256sum "$store/$name" | cut -d' ' -f1)" != "$sum" ]; then
      bad+=("$name"); rm -f "$store/$name"
    fi
  done < "$store/MANIFEST"
  if [ ${#bad[@]} -gt 0 ]; then
    echo "install-peers: checksum mismatch, removed: ${bad[*]} (carry them again)" >&2
    return 1
  fi
  local total
  total=$(wc -l < "$store/MANIFEST")
  if [ ${#missing[@]} -gt 0 ]; then
    echo "install-peers: $((total - ${#missing[@]}))/$total parts stored in $store; still to carry: ${missing[*]}"
    return 0
  fi
  local stamp
  stamp=$(sha256sum "$store/MANIFEST" | cut -c1-16)
  if [ "$(cat "$target/.peers-stamp" 2>/dev/null)" != "$stamp" ]; then
    local unpack=/tmp/peers-unpacked
    rm -rf "$unpack" && mkdir -p "$unpack"
    (cd "$store" && cat $(awk '{print $1}' MANIFEST)) | tar -x -C "$unpack" || return 1
    rm -rf "$target"
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$target" "$unpack"/wheels/*.whl || return 1
    if [ -d "$unpack/aot" ]; then
      local fi_data="$target/flashinfer/data/aot"
      mkdir -p "$fi_data" && cp -r "$unpack"/aot/* "$fi_data"/
      echo "install-peers: $(ls "$unpack/aot" | wc -l) ahead-of-time FlashInfer modules in $fi_data"
    fi
    echo "$stamp" > "$target/.peers-stamp"
    rm -rf "$unpack"
    echo "install-peers: installed $(ls "$target" | grep -c dist-info) distributions into $target"
  fi
  # nvidia-cutlass-dsl puts its packages on the path with a .pth file, which --target folders never read.
  PEERS_PYTHONPATH="$target:$target/nvidia_cutlass_dsl/dsl_packages"
  echo "export PYTHONPATH=$PEERS_PYTHONPATH\${PYTHONPATH:+:\$PYTHONPATH}"
  return 0
}

if (return 0 2>/dev/null); then  # sourced: export the path too
  _peers_main && [ -n "${PEERS_PYTHONPATH:-}" ] && export PYTHONPATH="$PEERS_PYTHONPATH${PYTHONPATH:+:$PYTHONPATH}"
else
  _peers_main
  exit $?
fi
