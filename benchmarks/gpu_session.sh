#!/usr/bin/env bash
# Issue 22's GPU measurements, round two: phases in order of value, each under `timeout`, each
# copying its raw JSON to OUTDIR the moment it ends, a phase started only when its time is left.
#
# The device lends one H200 for at most two calls of <= 600 s each, 15 minutes in all with the
# machine's start-up, so the session is two calls (benchmarks/session_plan.py holds the phases'
# times and checks that each call fits its budget and the 8 files the device returns):
#
#   call 1 (~540 s):  benchmarks/gpu_session.sh --call 1     # = --phases compile,bench,attn --budget-s 540
#     compile  bench_gpu.py --only fast,fast-fp8 in a fresh TORCHINDUCTOR_CACHE_DIR: each --fast compile
#            (GEMM autotuning included: minutes) timed on its own, one round at 50 steps; stopped at its
#            time limit, it keeps what it saved (every later phase reuses the cache)
#     bench  bench_gpu.py --keep-cache: snippet, snippet as written (no_grad), spo, spo --generator-device
#            cuda, and the --fast contenders whose compile finished, interleaved at 50 and 30 steps
#     attn   bench_attention.py: SDPA backends at SDXL's attention shapes
#   call 2 (~300 s):  benchmarks/gpu_session.sh --call 2     # = --phases serve,eval --budget-s 300
#     serve  bench_serve.py: spo serve under 16 clients vs spo batch, same batch size (1), --fast and 24
#            requests when call 1 finished --fast's compile (a warm machine; marked $WD/fast-compiled),
#            else eager and 12 (the JSON says which)
#     eval   bench_eval.py: spo eval --paper --limit 20 end to end, full-size random SDXL and scorers
#   spares (no call by default): prof (profile_step.py --fast on the compile cache), recipe (the
#   snippet + diffusers' compile recipe, 280 s and more of max-autotune), edit (issue 23's img2img and
#   hires rows), cli (gpu_cli_check.py). If compile.json says a --fast compile did not finish, call 2 is
#   better spent on it: --phases compile,bench --budget-s 540 --keep-cache (on a machine still warm, the
#   compile starts from what call 1 left in the cache).
#
#   benchmarks/gpu_session.sh [--call 1|2] [--phases LIST] [--budget-s S] [--out OUTDIR] [--steps 50,30]
#                             [--keep-cache] [--toy]
#   benchmarks/gpu_session.sh --toy --budget-s 300 --out /tmp/toy --phases compile,bench,attn,serve,eval   # CPU
#
# OUTDIR defaults to $OUT (set by the device runner) or benchmarks/results/session-<time>/. The work
# folder (models, compile cache) is ${TMPDIR:-/tmp}/spo-bench-gpu: a second call on a machine still warm
# from the first reuses both; on a fresh machine, the first phase that needs the model builds it.
# If the repository root holds a .whl/ folder (wheels the node lacks: diffusers, fastapi, uvicorn,
# torchao, ...; see benchmarks/README.md), the ones this node needs (benchmarks/wheelplan.py) are installed
# with pip --target into a private folder; nothing is installed into the node's Python.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
PLAN=("$PY" "$REPO/benchmarks/session_plan.py")
BUDGET=""
TOY=""
STEPS=""
PHASES=""
CALL=""
KEEP_CACHE=""
OUTDIR="${OUT:-}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --toy) TOY="--toy"; shift ;;
    --call) CALL="$2"; shift 2 ;;
    --budget-s) BUDGET="$2"; shift 2 ;;
    --out) OUTDIR="$2"; shift 2 ;;
    --steps) STEPS="$2"; shift 2 ;;
    --phases) PHASES="$2"; shift 2 ;;
    --keep-cache) KEEP_CACHE="--keep-cache"; shift ;;
    *) echo "gpu_session.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
case "$CALL" in
  1) PHASES="${PHASES:-compile,bench,attn}"; BUDGET="${BUDGET:-540}" ;;
  2) PHASES="${PHASES:-serve,eval}"; BUDGET="${BUDGET:-300}" ;;
  "") PHASES="${PHASES:-compile,bench,attn}"; BUDGET="${BUDGET:-540}" ;;
  *) echo "gpu_session.sh: --call is 1 or 2, not '$CALL'" >&2; exit 2 ;;
esac
OUTDIR="${OUTDIR:-$REPO/benchmarks/results/session-$(date -u +%Y%m%d-%H%M%S)}"
mkdir -p "$OUTDIR"
LOG="$OUTDIR/session.log"
WD="${TMPDIR:-/tmp}/spo-bench-gpu${TOY:+-toy}"
T0=$(date +%s)
left() { echo $((BUDGET - ($(date +%s) - T0))); }
say() { echo "[gpu_session +$(($(date +%s) - T0))s] $*" | tee -a "$LOG"; }
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
# One compile cache for every phase: bench_gpu.py (first) empties it and pays the compile, the
# --fast phases after it (2nd bench process, profile, serve, batch) load what it compiled.
export TORCHINDUCTOR_CACHE_DIR="$WD/inductor-cache"
unset TRITON_CACHE_DIR

if ! plan="$("${PLAN[@]}" show "$PHASES" "$BUDGET")"; then
  echo "gpu_session.sh: --phases $PHASES: $plan" >&2
  exit 2
fi
if grep -q "^unknown phase" <<< "$plan"; then echo "gpu_session.sh: $plan" >&2; exit 2; fi
say "budget ${BUDGET}s, workdir $WD, results in $OUTDIR"
echo "$plan" | tee -a "$LOG"
{ nvidia-smi 2>&1 || echo "(no nvidia-smi)"; uname -a; nproc; free -g 2>/dev/null; df -h "${TMPDIR:-/tmp}"; } >> "$LOG"

if compgen -G "$REPO/.whl/*.whl" > /dev/null; then
  SITE="${TMPDIR:-/tmp}/spo-site"
  rm -rf "$SITE"
  mapfile -t wheels < <("$PY" "$REPO/benchmarks/wheelplan.py" plan "$REPO/.whl" 2>> "$LOG") ||
    { say "wheelplan failed (see the log): installing every wheel of .whl/"; wheels=("$REPO"/.whl/*.whl); }
  if ((${#wheels[@]})); then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      "${wheels[@]}" >> "$LOG" 2>&1 || { say "wheel install failed"; exit 1; }
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  fi
  say "installed ${#wheels[@]} wheel(s): $(printf '%s\n' "${wheels[@]}" | xargs -rn1 basename | tr '\n' ' ')"
fi
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c 'import torch, diffusers, transformers, huggingface_hub, typer, spo_cli; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available(), "diffusers", diffusers.__version__, "transformers", transformers.__version__, "hub", huggingface_hub.__version__, "typer", typer.__version__)' 2>&1 | tee -a "$LOG"
"$PY" -c 'import torchao; print("torchao", torchao.__version__)' 2>&1 | tail -1 | tee -a "$LOG"

# cap_for KEY: the seconds phase KEY may run: what is left, less what the phases after it need, 10 s in hand.
cap_for() { echo $(($(left) - $("${PLAN[@]}" reserve "$1" "$PHASES" $TOY) - 10)); }
# phase KEY CMD...: run CMD if the phase is in --phases and its time (session_plan.py needs) is left,
# under `timeout` with cap_for's seconds. Status 1 when it was skipped for want of time.
phase() {
  local key="$1"; shift
  in_phases "$key" || return 0
  local needs cap
  needs=$("${PLAN[@]}" needs "$key" $TOY); cap=$(cap_for "$key")
  if ((cap < needs)); then
    say "$key: skipped, ${cap}s could be given to it ($(left)s left, less the phases after it) and it needs ${needs}s"
    return 1
  fi
  say "$key: start, ${cap}s allowed"
  timeout --signal=INT --kill-after=10 "$cap" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  say "$key: exit $rc$( ((rc == 124)) && echo " (stopped at its time limit; what it saved is kept)")"
}
in_phases() { [[ ",$PHASES," == *",$1,"* ]]; }
# script_here FILE KEY: true if benchmarks/FILE is on this branch; else one line saying KEY is skipped.
script_here() {
  [[ -f "$REPO/benchmarks/$1" ]] && return 0
  say "$2: skipped, benchmarks/$1 is not on this branch"
  return 1
}
keep() { [[ -f "$WD/results.json" ]] && cp "$WD/results.json" "$OUTDIR/$1" && say "kept $1"; rm -f "$WD/results.json"; }

# --- bench_gpu.py (harness's; its flags may change: adjust here at merge) -------------------------
BENCH_MAIN="${BENCH_MAIN:-snippet,snippet-nograd,spo,spo-cuda-gen,fast,fast-fp8,fast-reuse}"
# The recipe with the snippet and --fast: its child interleaves the three (alone, it has no ratio to give).
BENCH_RECIPE="${BENCH_RECIPE:-snippet,fast,recipe}"
BENCH_EDIT="${BENCH_EDIT:-img2img-snippet,img2img,hires}"
# known_contenders LIST: the contenders of LIST this branch's bench_gpu.py knows (line 1), and a line
# naming the others (line 2, empty when none is missing).
known_contenders() {
  "$PY" - "$1" "$REPO/benchmarks" <<'EOF' 2>> "$LOG"
import sys
sys.path.insert(0, sys.argv[2])
import bench_gpu
wanted = [k for k in sys.argv[1].split(",") if k]
known = [k for k in wanted if k in bench_gpu.CONTENDERS]
print(",".join(known))
missing = [k for k in wanted if k not in known]
print(f"bench_gpu.py on this branch has no contender {', '.join(missing)}: left out" if missing else "")
EOF
}
# bench KEY LIST OUTFILE MARGIN [ARGS...]: bench_gpu.py --only LIST ARGS, its --deadline-s (no new load
# or phase after it) MARGIN seconds short of the cap (a phase in flight is allowed to end),
# results.json kept as OUTFILE.
bench() {
  in_phases "$1" || return 0
  local key="$1" list="$2" file="$3" margin="$4"; shift 4
  local lines; mapfile -t lines < <(known_contenders "$list")
  [[ -n "${lines[1]:-}" ]] && say "$key: ${lines[1]}"
  if [[ -z "${lines[0]:-}" ]]; then say "$key: skipped, none of $list is on this branch's bench_gpu.py"; return 0; fi
  local cap; cap=$(cap_for "$key")
  rm -f "$WD/results.json"  # only this run's results are kept under its name
  phase "$key" "$PY" "$REPO/benchmarks/bench_gpu.py" $TOY --workdir "$WD" --only "${lines[0]}" \
    --deadline-s $((cap > 2 * margin ? cap - margin : cap / 2)) "$@" && keep "$file"
}
# compiled FILE: the --fast contenders whose compile (first call) FILE records as finished.
compiled() {
  "$PY" - "$1" <<'EOF' 2>> "$LOG"
import json, sys
try:
    rows = json.load(open(sys.argv[1]))["rows"]
except (OSError, ValueError, KeyError):
    rows = {}
print(",".join(k for k in ("fast", "fast-fp8") if (rows.get(k) or {}).get("first_call_s") is not None))
EOF
}

# A marker beside the cache: --fast's compile finished into it (a cache that a stopped compile left
# half-filled is not empty, yet spo serve --fast would compile again there, for minutes).
COMPILED_MARK="$WD/fast-compiled"
[[ -z "$KEEP_CACHE" ]] && { in_phases compile || in_phases bench; } && rm -f "$COMPILED_MARK"
mark_compiled() { [[ ",$(compiled "$1")," == *",fast,"* ]] && touch "$COMPILED_MARK"; return 0; }

if in_phases compile; then
  # The compile apart: a fresh cache (unless --keep-cache), the first step count only, one round after
  # the settling one; fp8's compile is started only with 150 s of the phase left.
  STEP1="${STEPS%%,*}"
  bench compile "fast,fast-fp8" compile.json 150 $KEEP_CACHE --repeat 1 ${STEP1:+--steps "$STEP1"}
  mark_compiled "$OUTDIR/compile.json"
  DONE="$(compiled "$OUTDIR/compile.json")"
  say "compile: finished for ${DONE:-none of fast, fast-fp8}; bench runs only those of them, from the cache"
  BENCH_MAIN="snippet,snippet-nograd,spo,spo-cuda-gen${DONE:+,$DONE}"
  bench bench "$BENCH_MAIN" bench.json 120 --keep-cache ${STEPS:+--steps "$STEPS"}
else
  bench bench "$BENCH_MAIN" bench.json 120 $KEEP_CACHE ${STEPS:+--steps "$STEPS"}
  in_phases bench && mark_compiled "$OUTDIR/bench.json"
fi
if in_phases attn && script_here bench_attention.py attn; then
  phase attn "$PY" "$REPO/benchmarks/bench_attention.py" $TOY --out-json "$OUTDIR/attention.json"
fi
phase prof "$PY" "$REPO/benchmarks/profile_step.py" $TOY --workdir "$WD" --fast --out-json "$OUTDIR/profile-fast.json"
if in_phases serve; then
  # --fast only where a phase before it (this call's, or the first call's on a machine still warm)
  # finished --fast's compile: a fresh compile would take most of this call. serve.json records which.
  # Eager images take about twice as long (2.0 s at 30 steps): half the requests, to fit the same time.
  SERVE_FAST=""; SERVE_N=12
  [[ -f "$COMPILED_MARK" ]] && { SERVE_FAST="--fast"; SERVE_N=24; }
  say "serve: ${SERVE_FAST:-eager (no finished --fast compile from an earlier phase)}, $SERVE_N requests"
  phase serve "$PY" "$REPO/benchmarks/bench_serve.py" $TOY --workdir "$WD" --requests "$SERVE_N" --batch-size 1 \
    $SERVE_FAST --out-json "$OUTDIR/serve.json"
fi
phase eval "$PY" "$REPO/benchmarks/bench_eval.py" $TOY --workdir "$WD" --limit 20 --out-json "$OUTDIR/eval.json"
bench recipe "$BENCH_RECIPE" bench-recipe.json 120 --keep-cache ${STEPS:+--steps "$STEPS"}
bench edit "$BENCH_EDIT" bench-edit.json 120 --keep-cache ${STEPS:+--steps "$STEPS"}
phase cli "$PY" "$REPO/benchmarks/gpu_cli_check.py" $TOY --workdir "$WD" --out-json "$OUTDIR/cli_check.json"
say "done in $(($(date +%s) - T0))s; files in $OUTDIR: $(ls "$OUTDIR" | tr '\n' ' ')"
