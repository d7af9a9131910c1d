#!/usr/bin/env bash
# The GPU benchmark run for BENCHMARKS.md, in priority order, inside one wall-clock budget.
#
#   bash benchmarks/run_gpu.sh          # part 1 then part 2 while the budget lasts (BUDGET_S, default 510 s)
#   bash benchmarks/run_gpu.sh 2        # part 2 only (a second call, if part 1 used the first one up)
#
# Part 1: phase-2 FFT and phase-1 VPT-deep, ViT-B/16 bf16 at batch 64/128/256: deft_jax and PyTorch eager for
# both steps, then torch.compile for both (batch 128 of deft_jax and of torch.compile FFT profiled).
# Part 2: cuDNN vs XLA attention, ViT-L/14, batch 512, remat, LoRA, fp32 (TF32).
# Each harness call gets what is left of the budget; a group that cannot start in time is recorded as
# "budget", one cut off as "timeout", so the results always say what was not measured.
# Writes results.jsonl, summary.md, harness.log (tail), env.txt and up to four trace files under $OUT
# (or benchmarks/out), and prints the summary last.
set -u
cd "$(dirname "$0")/.."
PART=${1:-all}
PY=${PYTHON:-python3}
BUDGET=${BUDGET_S:-510}
OUTDIR=${OUT:-benchmarks/out}
PROF=${PROFILE_DIR:-/tmp/deft_jax_profiles}
LOG=/tmp/deft_jax_harness.log
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-1}
mkdir -p "$OUTDIR" "$PROF"
RESULTS=$OUTDIR/results.jsonl
: > "$LOG"

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv 2>&1
  $PY -c "import sys, jax, torch, transformers; print(sys.version); print('jax', jax.__version__, jax.devices()); print('torch', torch.__version__, torch.version.cuda, torch.cuda.get_device_name()); print('transformers', transformers.__version__)" 2>&1
} > "$OUTDIR/env.txt" 2>&1
cat "$OUTDIR/env.txt"

# h CAP_S ARGS...: one harness call with min(CAP_S, what is left of the budget).
h() {
  local cap=$1; shift
  local left=$(( BUDGET - SECONDS ))
  local b=$(( left < cap ? left : cap ))
  (( b < 1 )) && b=1
  echo "[run_gpu] t=${SECONDS}s budget ${b}s: $*" | tee -a "$LOG" >&2
  # HARNESS_EXTRA (e.g. "--models tiny --batches 4") overrides the arguments above: a CPU smoke test.
  $PY benchmarks/harness.py --out "$RESULTS" --budget_s "$b" "$@" ${HARNESS_EXTRA:-} 2>>"$LOG"
}

B16="--models vit_b16 --batches 64,128,256"
# Only the first group of each framework and the fp32 one measure the device's matmul peak (seconds each).
NC=--no_calibrate
part1() {
  # deft_jax and the eager peer first (cheap to compile), then torch.compile (its compile dominates the time).
  h 150 --frameworks jax   --steps phase2_fft      $B16 --profile "$PROF" --profile_batches 128
  h 60  --frameworks torch --steps phase2_fft      $B16 --torch_compile off
  h 150 --frameworks jax   --steps phase1_vpt_deep $B16 --profile "$PROF" --profile_batches 128 $NC
  h 60  --frameworks torch --steps phase1_vpt_deep $B16 --torch_compile off $NC
  h 200 --frameworks torch --steps phase2_fft      $B16 --torch_compile on --profile "$PROF" --profile_batches 128 $NC
  h 200 --frameworks torch --steps phase1_vpt_deep $B16 --torch_compile on $NC
}
part2() {
  h 200 --frameworks jax --steps phase2_fft,phase1_vpt_deep $B16 --attention cudnn $NC
  h 240 --frameworks jax --steps phase2_fft,phase1_vpt_deep --models vit_l14 --batches 64,128,256 $NC
  h 120 --frameworks jax --steps phase2_fft,phase1_vpt_deep --models vit_b16 --batches 512 $NC
  h 150 --frameworks torch --steps phase2_fft,phase1_vpt_deep --models vit_b16 --batches 512 --torch_compile on $NC
  h 150 --frameworks jax --steps phase2_fft --models vit_b16,vit_l14 --batches 256 --remat on $NC
  h 120 --frameworks jax --steps phase1_lora $B16 $NC
  h 150 --frameworks torch --steps phase2_fft,phase1_vpt_deep --models vit_l14 --batches 64,128 --torch_compile on $NC
  h 120 --frameworks jax,torch --steps phase2_fft --models vit_b16 --batches 128 --dtypes float32 --torch_compile off
}
case "$PART" in
  1) part1 ;;
  2) part2 ;;
  all) part1; part2 ;;
  *) echo "usage: $0 [1|2|all]" >&2; exit 2 ;;
esac

# Traces of the profiled configurations (the summaries are in the records' "profile" field too).
n=0
for f in $(find "$PROF" -name 'perfetto_trace.json.gz' -o -name '*.trace.json' 2>/dev/null | sort); do
  (( n >= 4 )) && break
  name=$(echo "${f#$PROF/}" | cut -d/ -f1 | tr -c 'A-Za-z0-9._\n-' '_')
  case "$f" in
    *.gz) dest="$OUTDIR/${name}.perfetto.json.gz"; cp "$f" "$dest" ;;
    *) dest="$OUTDIR/${name%.trace.json}.trace.json.gz"; gzip -c "$f" > "$dest" ;;
  esac
  if (( $(stat -c %s "$dest") > 15000000 )); then rm -f "$dest"; else n=$((n + 1)); fi
done
tail -c 4000000 "$LOG" > "$OUTDIR/harness.log"
$PY benchmarks/summarize.py "$RESULTS" > "$OUTDIR/summary.md"
echo "[run_gpu] done in ${SECONDS}s"
cat "$OUTDIR/summary.md"
