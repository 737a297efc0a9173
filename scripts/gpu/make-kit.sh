#!/usr/bin/env bash
# Builds the GPU kit: everything a machine with `python3` + a CUDA torch + g++
# but no Node.js and no network needs to build the addon and run Atelier's
# CUDA tests and benchmarks (scripts/gpu/run.sh there). One file,
# kit/atelier-kit.tar.xz, small enough to travel with the source tree (64 MiB
# in all, on the device runner of this project):
#   node                  this machine's Node binary (xz compresses it ~4×)
#   include/node/         the N-API headers (node_api.h & co.; all the addon uses)
#   node_modules/         the runtime packages only (package.json "dependencies")
#   dist/                 the compiled JavaScript, built fresh here
# Usage: bash scripts/gpu/make-kit.sh [--out FILE]
set -euo pipefail
cd "$(dirname "$0")/../.."
out=kit/atelier-kit.tar.xz
[ "${1:-}" = "--out" ] && out=$2
say() { printf 'gpu kit: %s\n' "$*"; }
die() { printf 'gpu kit: %s\n' "$*" >&2; exit 1; }

node_bin=$(command -v node) || die "node is not installed here: run bash scripts/setup.sh first"
node_bin=$(readlink -f "$node_bin")
headers=""
for d in "$(dirname "$(dirname "$node_bin")")/include/node" /usr/include/node /usr/local/include/node; do
  [ -f "$d/node_api.h" ] && { headers=$d; break; }
done
[ -n "$headers" ] || die "Node's headers (node_api.h) are not found; install nodejs's headers (Debian: libnode-dev)"
[ -f node_modules/node-addon-api/napi.h ] || die "node_modules is missing: run bash scripts/setup.sh first"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/kit/include/node" "$(dirname "$out")"
cp "$node_bin" "$stage/kit/node"
cp "$headers"/{js_native_api.h,js_native_api_types.h,node_api.h,node_api_types.h} "$stage/kit/include/node/"
# The runtime dependency tree exactly as npm resolved it (no dev packages).
npm ls --omit=dev --all --parseable 2>/dev/null | tail -n +2 | while read -r p; do
  rel=${p#"$PWD/"}
  [ -e "$stage/kit/$rel" ] && continue # a nested package already copied with its parent
  mkdir -p "$stage/kit/$(dirname "$rel")"
  cp -r "$p" "$stage/kit/$rel"
done
say "compiling the TypeScript"
rm -rf "$stage/dist" && npx --no-install tsc -p tsconfig.json --outDir "$stage/kit/dist"
printf '%s\n' "node $("$node_bin" --version)" "commit $(git rev-parse --short HEAD 2>/dev/null || echo none)" \
  "built $(date -u +%FT%TZ) on $(uname -m)" > "$stage/kit/VERSION"
say "compressing (xz -9, a few minutes)"
tar -C "$stage" -cf - kit | xz -9 -T0 > "$out.tmp"
mv "$out.tmp" "$out"
kit_mb=$(du -m "$out" | cut -f1)
tree_mb=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | awk '{printf "%d", $1/1048576}')
say "$out: ${kit_mb} MiB; with the source tree (${tree_mb} MiB) $((kit_mb + tree_mb)) MiB"
