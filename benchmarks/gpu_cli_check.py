"""The `spo` CLI end to end on a GPU, at full SDXL size, through real subprocesses.

Uses the random-weight SDXL folders that bench_gpu.py saved under --workdir (model/ and vae/), and
checks what a user would see, on CUDA, in float16:

  1. spo generate -n 4 --batch-size 4 --generator-device cuda, and the same with --batch-size 1:
     exit codes, four PNGs with sidecars that name the GPU, and batch 4 equal to batch 1 within 1/255;
  2. spo batch of 8 prompts (batch size 4): 8 images, 8 sidecars, a manifest that says so;
  3. spo compare with two local models that share text encoders, tokenizers and VAE (hard links) and
     differ in the UNet (a second UNet saved with other random weights): the grid, the index, and
     that the two columns differ.

Each command's exit code, wall time and the last lines of its stderr go to WORKDIR/cli_check.json
(and --out-json); a line per check is printed. Exit status 1 if any check failed.

    python benchmarks/gpu_cli_check.py [--workdir DIR] [--steps 20] [--out-json FILE]
    python benchmarks/gpu_cli_check.py --toy        # the same on the CPU with bench_gpu.py --toy's model
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROMPT = "a child and a penguin sitting on the moon"
BATCH_PROMPTS = [
    "a red fox in fresh snow, golden hour",
    "a lighthouse in a storm, oil painting",
    "a bowl of ramen, studio photo",
    "an astronaut riding a horse on mars",
    "a watercolor of a quiet harbor at dawn",
    "a cyberpunk street market at night, rain",
    "a macro photo of a dew drop on a leaf",
    "a cozy reading nook with a cat, warm light",
]


def spo(args: list[str], env: dict, log: list) -> tuple[int, str, float]:
    """Run `python -m spo_cli ARGS`; record exit code, wall time and the tail of stderr."""
    cmd = [sys.executable, "-m", "spo_cli", *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    log.append({"argv": ["spo", *args], "rc": proc.returncode, "wall_s": round(wall, 2),
                "stderr_tail": proc.stderr[-3000:]})
    print(f"$ spo {' '.join(args)}\n  exit {proc.returncode} in {wall:.1f} s", flush=True)
    if proc.returncode != 0:
        print(proc.stderr[-3000:], flush=True)
    return proc.returncode, proc.stdout, wall


def pixels(path: Path):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def second_model(model: Path, dest: Path, toy: bool, device: str) -> None:
    """`model` again, with every file hard-linked except the UNet, which gets other random weights."""
    import torch
    from diffusers import UNet2DConditionModel

    if (dest / ".ready").exists():
        return
    shutil.rmtree(dest, ignore_errors=True)
    for src in model.rglob("*"):
        rel = src.relative_to(model)
        if rel.parts[0] == "unet" or src.is_dir() or src.name == ".spo-bench.json":
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dest / rel)
        except OSError:
            shutil.copyfile(src, dest / rel)
    config = json.loads((model / "unet" / "config.json").read_text())
    dtype = torch.float32 if toy else torch.float16
    with torch.device("cpu" if toy else device):
        torch.manual_seed(1)
        unet = UNet2DConditionModel.from_config(config)
    unet.to(dtype).save_pretrained(dest / "unet")
    del unet
    (dest / ".ready").touch()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--toy", action="store_true", help="CPU, bench_gpu.py --toy's tiny model, 64×64, 2 steps")
    ap.add_argument("--workdir", type=Path, default=None, help="bench_gpu.py's workdir (model/, vae/)")
    ap.add_argument("--steps", type=int, default=None, help="denoising steps per image (default 20; --toy: 2)")
    ap.add_argument("--out-json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    toy = args.toy
    workdir = (args.workdir or Path(tempfile.gettempdir()) / ("spo-bench-gpu-toy" if toy else "spo-bench-gpu")).resolve()
    steps = str(args.steps or (2 if toy else 20))
    model, vae = workdir / "model", workdir / "vae"
    if not (model / "model_index.json").exists() or not vae.exists():
        sys.exit(f"No model in {workdir}: run benchmarks/bench_gpu.py{' --toy' if toy else ''} first.")
    out = workdir / "cli"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(
        p for p in [str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")] if p)}
    device = "cpu" if toy else "cuda"
    size = ["--width", "64", "--height", "64"] if toy else []
    common = ["--vae", str(vae), "--device", device, "--steps", steps, *size]
    log: list = []
    checks: dict[str, object] = {}

    def check(name: str, ok: bool, detail: str = "") -> None:
        checks[name] = {"ok": bool(ok), "detail": detail}
        print(f"  [{'ok' if ok else 'FAILED'}] {name}{': ' + detail if detail else ''}", flush=True)

    # 1. generate, batch 4 against batch 1.
    gen = {}
    for bs in (4, 1):
        rc, stdout, wall = spo(["generate", PROMPT, "--model", str(model), *common, "-n", "4", "--batch-size",
                                str(bs), "--seed", "42", "--generator-device", device, "--out",
                                str(out / f"gen-bs{bs}"), "--json"], env, log)
        check(f"generate --batch-size {bs}: exit 0", rc == 0, f"{wall:.1f} s")
        try:
            gen[bs] = json.loads(stdout) if rc == 0 else []
        except json.JSONDecodeError:
            gen[bs] = []
            check(f"generate --batch-size {bs}: --json stdout parses", False, stdout[:200])
        files = sorted((out / f"gen-bs{bs}").glob("*.png"))
        check(f"generate --batch-size {bs}: 4 PNGs and 4 sidecars",
              len(files) == 4 and len(list((out / f"gen-bs{bs}").glob("*.json"))) == 4)
        if gen[bs]:
            side = json.loads(Path(gen[bs][0]["sidecar"]).read_text())
            where = json.dumps({k: side.get(k) for k in ("device", "dtype", "gpu", "generator_device")})
            flat = json.dumps(side)
            check(f"generate --batch-size {bs}: sidecar records the run", (device in flat) and
                  ("float16" in flat or toy) and (toy or side.get("generator_device") == "cuda"), where[:300])
    if len(gen.get(4, [])) == 4 and len(gen.get(1, [])) == 4:
        import numpy as np

        diffs = [int(np.abs(pixels(Path(a["image"])) - pixels(Path(b["image"]))).max())
                 for a, b in zip(sorted(gen[4], key=lambda r: r["seed"]), sorted(gen[1], key=lambda r: r["seed"]))]
        distinct = int(np.abs(pixels(Path(gen[1][0]["image"])) - pixels(Path(gen[1][1]["image"]))).max())
        check("batch size 4 equals batch size 1 within 1/255", max(diffs) <= 1, f"max |Δ| per image {diffs} (of 255)")
        check("different seeds give different images", distinct > 1, f"max |Δ| seed 42 vs 43: {distinct}")

    # 2. batch: 8 prompts.
    prompts = out / "prompts.txt"
    prompts.write_text("\n".join(BATCH_PROMPTS) + "\n")
    rc, stdout, wall = spo(["batch", str(prompts), "--model", str(model), *common, "--batch-size", "4", "--seed", "7",
                            "--out", str(out / "batch"), "--json"], env, log)
    check("batch of 8 prompts: exit 0", rc == 0, f"{wall:.1f} s")
    pngs = list((out / "batch").rglob("*.png"))
    sidecars = [p for p in (out / "batch").rglob("*.json") if p.with_suffix(".png").exists()]
    check("batch: 8 images with sidecars", len(pngs) == 8 and len(sidecars) == 8, f"{len(pngs)} PNGs, {len(sidecars)} sidecars")
    try:
        report = json.loads(stdout)
        check("batch: report says 8 generated, 0 failed",
              report.get("generated") == 8 and not report.get("failed"), json.dumps(
                  {k: report.get(k) for k in ("total", "generated", "failed", "manifest")}))
    except (json.JSONDecodeError, AttributeError):
        check("batch: --json report parses", False, stdout[:300])

    # 3. compare: two models that share all but the UNet.
    t0 = time.perf_counter()
    model_b = workdir / "model-b"
    second_model(model, model_b, toy, device)
    print(f"second model (other UNet, shared files hard-linked) ready in {time.perf_counter() - t0:.1f} s", flush=True)
    rc, stdout, wall = spo(["compare", PROMPT, "--model", str(model), "--label", "A", "--model", str(model_b),
                            "--label", "B", *common, "--seeds", "1,2", "--out", str(out / "compare"), "--json"], env, log)
    check("compare of two models: exit 0", rc == 0, f"{wall:.1f} s")
    try:
        res = json.loads(stdout)
        grids = [Path(p) for p in res.get("grid", [])]
        check("compare: grid page(s) and index written", bool(grids) and all(p.exists() for p in grids)
              and Path(res["index"]).exists(), ", ".join(p.name for p in grids))
        cells = sorted((out / "compare").rglob("cells/**/*.png"))
        check("compare: 4 cells (2 columns × 2 seeds)", len(cells) == 4, f"{len(cells)} cells")
        if len(cells) == 4:
            import numpy as np

            by_col: dict[str, list[Path]] = {}
            for c in cells:
                by_col.setdefault(c.parent.name, []).append(c)
            a, b = (sorted(v) for v in by_col.values())
            d = int(np.abs(pixels(a[0]) - pixels(b[0])).max())
            check("compare: the two UNets give different images for one seed", d > 1, f"max |Δ| {d}")
        log[-1]["result"] = res
    except (json.JSONDecodeError, KeyError, ValueError) as e:
        check("compare: --json result parses", False, f"{e}: {stdout[:300]}")

    ok = all(c["ok"] for c in checks.values())
    result = {"toy": toy, "steps": int(steps), "ok": ok, "checks": checks, "commands": log}
    (workdir / "cli_check.json").write_text(json.dumps(result, indent=2))
    if args.out_json:
        args.out_json.write_text(json.dumps(result, indent=2))
    print(f"\nCLI checks: {sum(c['ok'] for c in checks.values())}/{len(checks)} passed", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
