#!/usr/bin/env bash
# Everything issue 13 asks of a short GPU lease, in one command that ends inside a time budget:
#
#   1. bench_gpu.py: the authors' snippet, spo (default) and spo --offload model at --steps;
#   1b. bench_gpu.py: diffusers' img2img, spo --image and spo --hires 1.5 (issue 23);
#   2. gpu_cli_check.py: spo generate / batch / compare end to end on CUDA at full size;
#   3. bench_gpu.py: spo --fast (first call in a fresh compile cache, steady state, and a second
#      process reusing the cache);
#   4. bench_gpu.py: spo --offload sequential at a few steps, if time is left;
#   5. profile_step.py: where one image's time goes, default and then --fast (a third process on
#      the same compile cache, so its first call is one more cache-reuse measurement).
#
# Each phase's raw results are copied to OUTDIR as soon as it ends (a run cut short keeps what it
# measured), and the whole log goes to OUTDIR/session.log. A phase is started only if the time it
# needs is left, and runs under `timeout` so the script itself ends before the budget.
#
#   benchmarks/gpu_session.sh [--toy] [--budget-s 570] [--out OUTDIR] [--steps 30,50] [--phases run1,edit,cli,fast,seq,prof]
#
# OUTDIR defaults to $OUT (set by the lab's device runner) or benchmarks/results/session-<time>/.
# If the repository root holds a .whl/ folder (wheels the node lacks, e.g. diffusers), they are
# installed with pip --target into a private folder first; nothing is installed into the node's Python.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
BUDGET=570
TOY=""
STEPS="30,50"
PHASES="run1,edit,cli,fast,seq,prof"
OUTDIR="${OUT:-}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --toy) TOY="--toy"; STEPS="2"; shift ;;
    --budget-s) BUDGET="$2"; shift 2 ;;
    --out) OUTDIR="$2"; shift 2 ;;
    --steps) STEPS="$2"; shift 2 ;;
    --phases) PHASES="$2"; shift 2 ;;
    *) echo "gpu_session.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
OUTDIR="${OUTDIR:-$REPO/benchmarks/results/session-$(date -u +%Y%m%d-%H%M%S)}"
mkdir -p "$OUTDIR"
LOG="$OUTDIR/session.log"
WD="${TMPDIR:-/tmp}/spo-bench-gpu${TOY:+-toy}"
T0=$(date +%s)
left() { echo $((BUDGET - ($(date +%s) - T0))); }
say() { echo "[gpu_session +$(($(date +%s) - T0))s] $*" | tee -a "$LOG"; }
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1

say "budget ${BUDGET}s, workdir $WD, results in $OUTDIR"
{ nvidia-smi 2>&1 || echo "(no nvidia-smi)"; uname -a; nproc; free -g 2>/dev/null; df -h "${TMPDIR:-/tmp}"; } >> "$LOG"

if compgen -G "$REPO/.whl/*.whl" > /dev/null; then
  SITE="${TMPDIR:-/tmp}/spo-site"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$REPO"/.whl/*.whl >> "$LOG" 2>&1 || { say "wheel install failed"; exit 1; }
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  say "installed $(ls "$REPO"/.whl/*.whl | xargs -n1 basename | tr '\n' ' ')"
fi
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c 'import torch, diffusers, transformers, huggingface_hub, typer, spo_cli; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available(), "diffusers", diffusers.__version__, "transformers", transformers.__version__, "hub", huggingface_hub.__version__, "typer", typer.__version__)' 2>&1 | tee -a "$LOG"

# phase NAME NEEDS_S CMD...: run CMD under `timeout` if NEEDS_S seconds are left, keeping 10 s in hand.
phase() {
  local key="$1" name="$2" needs="$3"; shift 3
  [[ ",$PHASES," == *",$key,"* ]] || return 0
  local l; l=$(left)
  if ((l < needs)); then say "$name: skipped, ${l}s left and it needs ${needs}s"; return 0; fi
  say "$name: start (${l}s left)"
  timeout --signal=INT --kill-after=5 $((l - 10)) "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  say "$name: exit $rc"
}
keep() { [[ -f "$WD/results.json" ]] && cp "$WD/results.json" "$OUTDIR/$1"; rm -f "$WD/results.json"; }
BENCH=("$PY" "$REPO/benchmarks/bench_gpu.py" $TOY --workdir "$WD" --steps "$STEPS")

phase run1 "run 1: snippet, spo, offload model" 120 "${BENCH[@]}" --only snippet,spo,offload-model --repeat 2
keep results-run1.json
phase edit "run 1b: img2img (diffusers, spo) and hires 1.5" 90 "${BENCH[@]}" --only img2img-snippet,img2img,hires
keep results-run1b-edit.json
phase cli "run 1: CLI end to end" 150 "$PY" "$REPO/benchmarks/gpu_cli_check.py" $TOY --workdir "$WD" \
  --out-json "$OUTDIR/cli_check.json"
# --fast: the first call compiles for minutes; the second process needs the cache plus a load.
# The profiles after it need about 150 s, kept back from --fast's deadlines when they are to run.
reserve=0; [[ ",$PHASES," == *",prof,"* ]] && reserve=150
l=$(($(left) - reserve))
phase fast "run 2: --fast" 120 "${BENCH[@]}" --only fast,fast-reuse \
  --deadline-s $((l > 100 ? l - 100 : 1)) --child-timeout $((l > 40 ? l - 40 : 30))
keep results-run2-fast.json
phase seq "offload sequential" 60 "${BENCH[@]}" --only offload-sequential --seq-steps 3
keep results-offload-sequential.json
PROFILE=("$PY" "$REPO/benchmarks/profile_step.py" $TOY --workdir "$WD")
phase prof "profile: spo default" 45 "${PROFILE[@]}" --out-json "$OUTDIR/profile-default.json"
phase prof "profile: spo --fast (3rd process, same compile cache)" 60 \
  env TORCHINDUCTOR_CACHE_DIR="$WD/inductor-cache" "${PROFILE[@]}" --fast --out-json "$OUTDIR/profile-fast.json"
say "done; files in $OUTDIR: $(ls "$OUTDIR" | tr '\n' ' ')"
