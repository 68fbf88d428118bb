#!/usr/bin/env bash
# Sourced by setup.sh, build.sh and lts.sh: puts the Node.js LTS that weft runs on first in
# PATH, installing it from the npm registry's `node-linux-<arch>` package when the machine's
# own Node is older. That package carries the binary and the headers node-gyp needs, so the
# addon builds offline against it (build.sh passes --nodedir). The version is pinned in
# scripts/node-version; the image (deploy/Dockerfile) uses the same major.
weft_node_version=$(tr -d ' \n' < "$(dirname "${BASH_SOURCE[0]}")/node-version")
weft_node_major=${weft_node_version%%.*}

weft_node_ok() { # PATH's node is at least the pinned major
  command -v node >/dev/null 2>&1 || return 1
  local have; have=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null) || return 1
  [ "$have" -ge "$weft_node_major" ]
}

if ! weft_node_ok; then
  case "$(uname -m)" in
    x86_64) weft_node_arch=x64 ;;
    aarch64) weft_node_arch=arm64 ;;
    *) echo "weft: no Node.js $weft_node_major here and no node-linux package for $(uname -m): install Node.js >= $weft_node_major" >&2; exit 1 ;;
  esac
  weft_node_dir=${WEFT_NODE_DIR:-/opt/weft-node}/v$weft_node_version
  if [ ! -x "$weft_node_dir/bin/node" ]; then
    echo "setup: installing Node.js $weft_node_version (npm package node-linux-$weft_node_arch) in $weft_node_dir" >&2
    weft_node_tmp=$(mktemp -d)
    ( cd "$weft_node_tmp" && npm pack --silent "node-linux-$weft_node_arch@$weft_node_version" >/dev/null )
    mkdir -p "$weft_node_dir.tmp"
    tar xzf "$weft_node_tmp"/node-linux-*.tgz -C "$weft_node_dir.tmp" --strip-components=1
    rm -rf "$weft_node_tmp" "$weft_node_dir"
    mv "$weft_node_dir.tmp" "$weft_node_dir"
  fi
  export PATH="$weft_node_dir/bin:$PATH"
fi
