#!/usr/bin/env bash
# Builds weft: the native addon and the eBPF objects, each only when its sources are newer
# than its output, then the TypeScript, then the agent's bundle. Idempotent; a no-op build
# costs the tsc run and the bundle (~1 s).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/node-env.sh

# newer OUT SRC...: true when OUT is missing or any SRC is newer than it.
newer() {
  local out=$1; shift
  [ -e "$out" ] || return 0
  local src
  for src in "$@"; do [ "$src" -nt "$out" ] && return 0; done
  return 1
}

# --- native addon (first: `node-gyp rebuild` empties build/, eBPF objects included) ---
addon=build/Release/weft_bpf.node
if newer "$addon" binding.gyp native/*.cc native/*.h bpf/weft.h; then
  gyp_args=()
  # Use the headers of the installed node when it ships them, instead of downloading.
  node_prefix=$(dirname "$(dirname "$(node -p 'process.execPath')")")
  if [ -f "$node_prefix/include/node/node_api.h" ]; then gyp_args+=(--nodedir="$node_prefix"); fi
  echo "build: native addon" >&2
  npx --no-install node-gyp rebuild "${gyp_args[@]}" --loglevel=warn >&2
fi

# --- eBPF objects ---
case "$(uname -m)" in
  x86_64) target_arch=x86 ;;
  aarch64) target_arch=arm64 ;;
  *) target_arch=$(uname -m) ;;
esac
mkdir -p build/bpf
for src in bpf/*.bpf.c; do
  name=$(basename "$src" .c)
  out=build/bpf/$name.o
  if newer "$out" "$src" bpf/*.h; then
    echo "build: $out" >&2
    clang -O2 -g -Wall -Werror -target bpf -D__TARGET_ARCH_$target_arch \
      -I"/usr/include/$(uname -m)-linux-gnu" -Ibpf \
      -c "$src" -o "$out.tmp"
    mv "$out.tmp" "$out"
  fi
done

# --- TypeScript ---
npx tsc -p tsconfig.json
# The config schema, compiled once here rather than at every agent start (src/config/schema.ts).
node dist/src/config/schema-build.js
# The agent as bin/weft.js and the image run it: dist/src bundled into a few files in
# dist/bundle/ (scripts/bundle.js says why; the tests and the sandbox run the same).
node scripts/bundle.js
