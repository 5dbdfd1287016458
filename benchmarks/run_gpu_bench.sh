#!/usr/bin/env bash
# Run benchmarks/bench_gpu.py on a GPU node that has no network (and no diffusers or typer).
#
#   Step A, where there IS network, with the Python of a working spo-cli environment:
#     benchmarks/run_gpu_bench.sh download [--wheels DIR] [-- PIP_DOWNLOAD_ARGS...]
#   fetches wheels (no sdists) of spo-cli's dependency closure without torch, pinned to the versions
#   installed in that Python (diffusers, typer, rich, click, shellingham, markdown-it-py, mdurl,
#   pygments, huggingface_hub, transformers, ...), with the extras the GPU session uses (serve, score,
#   fp8: fastapi, uvicorn, pyarrow, ftfy, torchao; wheelplan.py's NODE_EXTRAS), into DIR (default
#   benchmarks/wheels/). For a node
#   with another Python or platform, pass pip's own flags after --, e.g.
#     benchmarks/run_gpu_bench.sh download -- --python-version 3.10 --platform manylinux2014_x86_64
#
#   Step B, on the node (copy the repo with its benchmarks/wheels/ there):
#     benchmarks/run_gpu_bench.sh run [--wheels DIR] [--target DIR] [--python PY] [BENCH_ARGS...]
#   installs, with `pip install --no-index --no-deps --target DIR`, only the wheels the node's
#   Python lacks (or has in a version spo-cli's dependencies do not accept; see
#   benchmarks/wheelplan.py), puts DIR and the project's src/ on PYTHONPATH (nothing is installed
#   into the node's Python), checks the imports, then runs
#     python benchmarks/bench_gpu.py BENCH_ARGS...
#   e.g. `run`, `run --steps 30,50`, `run --skip offload-sequential`, `run --toy` (CPU).
#
# Environment: PYTHON (default python3), SPO_WHEELS (default benchmarks/wheels),
# SPO_SITE (default ${TMPDIR:-/tmp}/spo-bench-site).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
WHEELS="${SPO_WHEELS:-$REPO/benchmarks/wheels}"
TARGET="${SPO_SITE:-${TMPDIR:-/tmp}/spo-bench-site}"
MARK=".spo-bench-site"

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"; }
die() { echo "run_gpu_bench.sh: $*" >&2; exit 1; }

cmd="${1:-}"
[[ $# -gt 0 ]] && shift
while [[ $# -gt 0 ]]; do
  case "$1" in
    --wheels) WHEELS="$2"; shift 2 ;;
    --target) TARGET="$2"; shift 2 ;;
    --python) PY="$2"; shift 2 ;;
    --) shift; break ;;
    *) break ;;
  esac
done

case "$cmd" in
  download)
    mkdir -p "$WHEELS"
    pyver=""
    args=("$@")
    for ((i = 0; i < ${#args[@]}; i++)); do
      [[ "${args[$i]}" == "--python-version" ]] && pyver="${args[$((i + 1))]:-}"
    done
    pins="$("$PY" "$REPO/benchmarks/wheelplan.py" pins ${pyver:+--python-version "$pyver"})"
    echo "$pins" > "$WHEELS/requirements-node.txt"
    echo "Fetching $(wc -l < "$WHEELS/requirements-node.txt") wheels into $WHEELS (list: $WHEELS/requirements-node.txt)"
    # One call for the lot; if pip cannot find one of them, go one by one and name the missing.
    if ! "$PY" -m pip download --no-deps --only-binary=:all: -d "$WHEELS" -r "$WHEELS/requirements-node.txt" "$@" -q; then
      missing=()
      while read -r req; do
        "$PY" -m pip download --no-deps --only-binary=:all: -d "$WHEELS" "$req" "$@" -q >/dev/null 2>&1 ||
          missing+=("$req")
      done < "$WHEELS/requirements-node.txt"
      if [[ ${#missing[@]} -gt 0 ]]; then
        echo "No wheel for: ${missing[*]}" >&2
        echo "(the node may already have these; \`run\` says if it needs one)" >&2
      fi
    fi
    echo "Done: $(ls "$WHEELS"/*.whl | wc -l) wheels, $(du -sh "$WHEELS" | cut -f1). Copy the repo (with $WHEELS) to the node and run:"
    echo "  benchmarks/run_gpu_bench.sh run"
    ;;

  run)
    [[ -d "$WHEELS" ]] || die "no wheel folder $WHEELS: run \`$0 download\` where there is network first"
    command -v "$PY" >/dev/null || die "no Python '$PY' (set PYTHON or --python)"
    "$PY" -c "import torch" 2>/dev/null || die "$PY has no torch: install a CUDA build of PyTorch on the node first"
    echo "Python: $("$PY" -c 'import sys, torch; print(sys.executable, sys.version.split()[0], "· torch", torch.__version__, "· CUDA", torch.version.cuda, "· GPU", torch.cuda.is_available())')"
    plan="$(env -u PYTHONPATH "$PY" "$REPO/benchmarks/wheelplan.py" plan "$WHEELS")" || exit 1
    if [[ -e "$TARGET" && ! -e "$TARGET/$MARK" ]]; then
      [[ -z "$(ls -A "$TARGET")" ]] || die "$TARGET exists and was not made by this script; choose another --target"
    fi
    rm -rf "$TARGET"
    mkdir -p "$TARGET"
    touch "$TARGET/$MARK"
    if [[ -n "$plan" ]]; then
      mapfile -t wheels <<< "$plan"
      echo "Installing ${#wheels[@]} wheels into $TARGET"
      if "$PY" -m pip --version >/dev/null 2>&1; then
        "$PY" -m pip install --no-index --no-deps --target "$TARGET" --disable-pip-version-check -q "${wheels[@]}"
      else
        echo "(no pip in $PY: unpacking the wheels directly)"
        "$PY" "$REPO/benchmarks/wheelplan.py" extract "$TARGET" "${wheels[@]}"
      fi
    fi
    export PYTHONPATH="$TARGET:$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
    "$PY" - <<'EOF' || die "the imports fail with the wheels above; see the error"
import diffusers, torch, transformers, typer, huggingface_hub
import spo_cli, spo_cli.cli, spo_cli.engine
print(f"Imports OK: spo-cli {spo_cli.__version__} from {spo_cli.__file__.rsplit('/', 2)[0]}, diffusers "
      f"{diffusers.__version__}, transformers {transformers.__version__}, huggingface_hub "
      f"{huggingface_hub.__version__}, torch {torch.__version__}")
EOF
    echo "(the CLI works the same way here: PYTHONPATH=$PYTHONPATH $PY -m spo_cli ...)"
    exec "$PY" "$REPO/benchmarks/bench_gpu.py" "$@"
    ;;

  -h | --help | help | "")
    usage
    ;;
  *)
    usage >&2
    die "unknown subcommand '$cmd' (download or run)"
    ;;
esac
