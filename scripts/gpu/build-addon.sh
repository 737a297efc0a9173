#!/usr/bin/env bash
# Builds build/Release/atelier_native.node with g++ alone (no node-gyp, no
# network), with the flags binding.gyp gives, against the libtorch
# native/find-libtorch.js finds (python3's torch first: a CUDA build on GPU
# machines). Usage: NODE=path/to/node NODE_HEADERS=dir bash scripts/gpu/build-addon.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
node=${NODE:-node}
headers=${NODE_HEADERS:?NODE_HEADERS: the folder holding node_api.h}
desc=$("$node" native/find-libtorch.js --json) || exit 1
field() { "$node" native/find-libtorch.js "$1"; }
napi=$("$node" -p "require('node-addon-api').include_dir")
includes=(-I"$napi" -I"$headers")
for d in $(field include_dirs); do includes+=(-I"$d"); done
flags=(-std=gnu++17 -O2 -fPIC -frtti -fexceptions -Wno-unused-parameter -Wno-deprecated-declarations
  -DNAPI_VERSION=8 -DNAPI_CPP_EXCEPTIONS -DBUILDING_NODE_EXTENSION -DNODE_GYP_MODULE_NAME=atelier_native
  -D_GLIBCXX_USE_CXX11_ABI="$(field abi)")
obj=build/Release/obj.g++
mkdir -p "$obj"
echo "build-addon: libtorch $(printf '%s' "$desc" | "$node" -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const j=JSON.parse(s);console.log(`${j.source}${j.cuda?" (CUDA)":""}`)})')"
jobs=$(nproc 2>/dev/null || echo 2)
pids=()
for src in native/*.cc; do
  o="$obj/$(basename "${src%.cc}").o"
  g++ "${flags[@]}" "${includes[@]}" -c "$src" -o "$o" &
  pids+=($!)
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do sleep 0.2; done
done
for p in "${pids[@]}"; do wait "$p"; done
# --no-as-needed keeps libtorch_cuda, whose kernels register when it loads (see find-libtorch.js).
g++ -shared -o build/Release/atelier_native.node "$obj"/*.o -L"$(field lib_dir)" "$(field rpath)" \
  -Wl,--no-as-needed $(field libs) -Wl,--as-needed
echo "build-addon: build/Release/atelier_native.node"
