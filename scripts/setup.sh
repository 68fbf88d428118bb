#!/usr/bin/env bash
# Installs what building and testing weft needs on a fresh Debian machine, and only what is
# missing: a machine that has everything costs a few `command -v` calls. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

arch_dir="/usr/include/$(uname -m)-linux-gnu"
need=()
have_cmd() { command -v "$1" >/dev/null 2>&1; }
want_cmd() { have_cmd "$1" || need+=("$2"); }
want_file() { [ -e "$1" ] || need+=("$2"); }

want_cmd clang clang
want_cmd llvm-strip llvm
want_cmd bpftool bpftool
want_cmd ip iproute2
want_cmd nsenter util-linux
want_cmd make make
want_cmd g++ g++
want_cmd pkg-config pkg-config
want_cmd curl curl
want_cmd tcpdump tcpdump
# h2load: the HTTP/2 tests and benchmarks (h2c load through the agent)
want_cmd h2load nghttp2-client
want_file /usr/include/bpf/libbpf.h libbpf-dev
want_file /usr/include/libelf.h libelf-dev
want_file /usr/include/zlib.h zlib1g-dev
want_file "$arch_dir/asm/types.h" linux-libc-dev

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    if have_cmd sudo; then sudo=(sudo); else
      echo "setup: missing ${need[*]} and not root (no sudo): install them and rerun" >&2
      exit 1
    fi
  else
    sudo=()
  fi
  echo "setup: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The Node.js LTS weft runs on (installed from the npm registry where the machine's is older).
source scripts/node-env.sh

# Missing, or older than the lock file (a pull that changed dependencies).
if [ ! -d node_modules ] || { [ -f package-lock.json ] && [ package-lock.json -nt node_modules/.package-lock.json ]; }; then
  echo "setup: installing node modules" >&2
  if [ -f package-lock.json ]; then npm ci --no-audit --no-fund --loglevel=error
  else npm install --no-audit --no-fund --loglevel=error; fi
fi
