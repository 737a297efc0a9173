#!/usr/bin/env bash
# The GPU check in one command, on a machine that has python3 with a (CUDA)
# torch and g++, but maybe no Node.js and no network:
#   bash scripts/gpu/run.sh [--kit FILE] [--out DIR] [--quick]
# It unpacks the kit (scripts/gpu/make-kit.sh), builds the addon against
# python3's libtorch, runs the CUDA tests, then the benchmarks against the same
# torch on the same GPU, and writes logs, JSON and summary.md to --out
# (default $OUT, else gpu-results/). Where no GPU is present it says CUDA is
# absent and runs the CPU smoke versions, so the kit can be tried anywhere.
# Every step has a time limit and is recorded; a failed step does not stop
# the others.
set -uo pipefail
cd "$(dirname "$0")/../.."
kit=kit/atelier-kit.tar.xz
out=${OUT:-gpu-results}
quick=0
while [ $# -gt 0 ]; do
  case $1 in
    --kit) kit=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    *) echo "usage: bash scripts/gpu/run.sh [--kit FILE] [--out DIR] [--quick]" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
out=$(cd "$out" && pwd)
summary=$out/summary.md
t_start=$(date +%s)
log() { printf '%s\n' "$*" | tee -a "$summary"; }
py=$(command -v python3) || { echo "python3 is not found" >&2; exit 1; }

# step NAME LIMIT_S CMD...: runs CMD with a time limit, output to $out/NAME.log, one summary line.
step() {
  local name=$1 limit=$2
  shift 2
  local t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  local s=$(($(date +%s) - t0))
  local verdict=ok
  [ $rc -eq 0 ] || verdict="FAILED (exit $rc$([ $rc -ge 124 ] && echo ", time limit ${limit} s"))"
  log "- $name: $verdict, ${s} s (log: $name.log)"
  return $rc
}

: > "$summary"
log "# Atelier GPU check, $(date -u +%FT%TZ)"
log ""
[ -f "$kit" ] || { log "no kit at $kit: build it with bash scripts/gpu/make-kit.sh"; exit 1; }
log "- kit: $kit, $(du -m "$kit" | cut -f1) MiB"

# 1. Unpack (tar + xz where present, else python3's tarfile) and link into the tree.
work=${KIT_DIR:-$PWD/.gpu-kit}
rm -rf "$work" && mkdir -p "$work"
if command -v xz >/dev/null && command -v tar >/dev/null; then
  tar -C "$work" -xJf "$kit"
else
  "$py" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$kit" "$work"
fi
node=$work/kit/node
chmod +x "$node"
# Moved, not linked: Node resolves a module's real path, and the benchmarks find
# their PyTorch twins (bench/*.py) beside the real dist/.
for d in node_modules dist; do
  if [ -e "$d" ] && [ ! -L "$d" ]; then log "- $d/ exists here and is not the kit's: kept as it is"
  else rm -f "$d" && mv "$work/kit/$d" "$d"; fi
done
log "- node $("$node" --version), $(sed -n 2p "$work/kit/VERSION") (tree: $(git rev-parse --short HEAD 2>/dev/null || echo 'no git'))"
log "- python3: $("$py" -c 'import torch
c = torch.cuda.is_available()
print("torch", torch.__version__ + ", CUDA", (torch.version.cuda + ", " + torch.cuda.get_device_name(0)) if c else "absent")' 2>&1 | tail -1)"
command -v nvidia-smi >/dev/null && log "- GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"

# 2. Build the addon against python3's torch.
export PYTHON=$py
step build-addon 900 env NODE="$node" NODE_HEADERS="$work/kit/include/node" bash scripts/gpu/build-addon.sh \
  || { log ""; log "the addon did not build: see build-addon.log"; exit 1; }
cuda=$("$node" --input-type=module -e 'import { cudaAvailable } from "./dist/src/engine/index.js"; console.log(cudaAvailable() ? "present" : "absent")' 2>"$out/probe.log")
log "- CUDA seen by Atelier: ${cuda:-unknown (see probe.log)}"

# 3. Tests: the CUDA parity tests and the device-aware ones (they skip their CUDA parts without a GPU).
# (engine tests only: they need no ../shared fixtures, which a GPU machine may not have.)
step tests 600 "$node" --test --test-concurrency=1 dist/test/engine/cuda.test.js dist/test/engine/core.test.js \
  dist/test/engine/ops.test.js dist/test/engine/optim.test.js
grep -E '^# (tests|pass|fail|skipped)' "$out/tests.log" | sed 's/^# /  - /' | tee -a "$summary"

# 4. Benchmarks against python3's torch on the same device, GPU memory sampled by nvidia-smi.
sampler=""
if [ "$cuda" = present ] && command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv,noheader,nounits -lms 200 \
    > "$out/gpu-memory.csv" 2>/dev/null &
  sampler=$!
fi
if [ "$cuda" = present ]; then
  dev=(--device cuda --python "$py")
  if [ $quick = 1 ]; then sizes=(1); else sizes=(1 4 8); fi
  for b in "${sizes[@]}"; do
    step "bench-train-lora-b$b" 420 "$node" dist/bench/train.js "${dev[@]}" --only lora --latent 64 --batch "$b"
  done
  step bench-train-full 420 "$node" dist/bench/train.js "${dev[@]}" --only full --latent 64
  step bench-models 420 "$node" dist/bench/models.js "${dev[@]}" --only unet,txt2img
else
  step bench-train-quick 600 "$node" dist/bench/train.js --quick --reps 1 --warmup 0 --python "$py"
fi
[ -n "$sampler" ] && kill "$sampler" 2>/dev/null
if [ -s "$out/gpu-memory.csv" ]; then
  log ""
  log "GPU memory per process (peak MiB, nvidia-smi; the caching allocator's reserve, both sides alike):"
  awk -F', *' '{ if ($3 > peak[$1]) { peak[$1] = $3; name[$1] = $2 } } END { for (p in peak) printf "  - pid %s %s: %d\n", p, name[p], peak[p] }' \
    "$out/gpu-memory.csv" | sort -t: -k1 | tee -a "$summary"
fi
log ""
log "ratios (Atelier ÷ PyTorch, lower is better):"
for f in "$out"/bench-*.log; do
  [ -f "$f" ] || continue
  # the benchmarks' table: its header and the rows that end in "atelier ms, pytorch ms, ratio[, cpu ratio]"
  grep -hE 'atelier ms|[0-9]+ +[0-9]+ +[0-9.]+( +[0-9.]+)?$' "$f" | sed "s|^|  $(basename "$f" .log): |" | tee -a "$summary"
done
log ""
log "total $(($(date +%s) - t_start)) s; results in $out"
