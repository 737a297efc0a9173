#!/usr/bin/env bash
# Sets Atelier up on a Debian/Ubuntu machine: finds libtorch (installing
# Debian's libtorch-dev with apt when none is found), installs the npm
# packages, builds the libtorch addon and compiles the TypeScript.
# Usage: bash scripts/setup.sh [--with-reference]
#   --with-reference  also installs Debian's python3-torch, the PyTorch
#                     reference that bench/ and scripts/record-* run against.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'atelier setup: %s\n' "$*"; }
die() { printf 'atelier setup: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@";
  elif command -v sudo >/dev/null; then sudo "$@";
  else die "need root to run: $*"; fi
}

apt_install() {
  command -v apt-get >/dev/null || die "no libtorch found and no apt-get to install libtorch-dev. Set LIBTORCH to an unpacked libtorch folder, or install PyTorch for python3."
  say "installing $* with apt"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

command -v node >/dev/null || die "Node.js 20 or newer is needed (apt-get install nodejs npm)"
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 20 ] || die "Node.js 20 or newer is needed, found $(node --version)"
command -v g++ >/dev/null && command -v make >/dev/null || apt_install g++ make python3

if ! node native/find-libtorch.js --json >/dev/null 2>&1; then
  [ -n "${LIBTORCH:-}" ] && node native/find-libtorch.js --json  # says what is wrong with LIBTORCH
  apt_install libtorch-dev
  node native/find-libtorch.js --json >/dev/null || die "libtorch-dev was installed but is still not found"
fi
# Debian's libtorch calls BLAS through libblas.so.3, which is the unoptimised
# reference BLAS unless an optimised one is installed: OpenBLAS (OpenMP build,
# sharing libtorch's thread pool) makes 1024^3 matmul ~6x faster on 2 cores.
if dpkg -s libtorch-dev >/dev/null 2>&1 && ! dpkg -s libopenblas0-openmp >/dev/null 2>&1 \
   && ! dpkg -s libopenblas0-pthread >/dev/null 2>&1; then
  apt_install libopenblas0-openmp
fi
if [ "${1:-}" = "--with-reference" ] && ! /usr/bin/python3 -c 'import torch' 2>/dev/null; then
  apt_install python3-torch
fi
# Debian's chromium: the studio's browser test drives it (playwright-core, no browser download).
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null; then
  apt_install chromium || say "could not install chromium: the studio's browser test will be skipped"
fi
say "libtorch: $(node -e 'import("./native/find-libtorch.js").then(m => console.log(m.findLibtorch().source))')"

if [ -f package-lock.json ]; then npm ci --no-audit --no-fund --loglevel=error; else npm install --no-audit --no-fund --loglevel=error; fi

# Rebuild the addon only when its sources or the libtorch found changed.
stamp=build/Release/.atelier-stamp
want=$( (cat native/*.cc native/*.h binding.gyp; node native/find-libtorch.js --json) | sha256sum | cut -d' ' -f1)
if [ ! -f build/Release/atelier_native.node ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "building the libtorch addon"
  npx --no-install node-gyp rebuild -j "$(nproc)" --loglevel=error >/dev/null \
    || { npx --no-install node-gyp rebuild -j 1; die "building the addon failed (output above)"; }
  echo "$want" > "$stamp"
fi
npx --no-install tsc -p tsconfig.json
say "ready"
