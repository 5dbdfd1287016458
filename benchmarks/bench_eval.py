"""`spo eval --paper --limit 20` end to end, timed, with no Hub: what the 500-prompt run costs.

`spo eval --paper` renders SDXL base and SPO-SDXL (the authors' settings: 50 steps, 1024², guidance 5,
the fp16-fix VAE, a CUDA generator seeded 42) on Pick-a-Pic v1's validation_unique captions and scores
every image with the five scorers (PickScore, HPS v2.1, ImageReward, Aesthetic, CLIP score). The GPU node
has no network, so every repo it reads is laid out here as a Hugging Face cache under its real id
(HF_HUB_CACHE=WORKDIR/eval-hub, HF_HUB_OFFLINE=1; files hard-linked, not copied), and the real CLI
resolves them through the same code path a user's machine takes:

- the two SDXL columns: bench_gpu.py's full-size random SDXL (WORKDIR/model) as SPO-SDXL, and the same
  with another random UNet (WORKDIR/model-b, as gpu_cli_check.py builds it; text encoders and VAE
  hard-linked, so that they are shared between the columns as the real base and SPO share them) as
  SDXL base; the fp16-fix VAE is WORKDIR/vae;
- the scorers: random weights at the real architectures (benchmarks/scorers/*.json, whose parameter
  counts tests/test_bench_session.py checks against the published ones): CLIP ViT-H/14 for PickScore and
  HPS v2.1 (OpenCLIP's key layout), BLIP ViT-L/16 + BERT-base with cross-attention for ImageReward (the
  release's key layout), CLIP ViT-L/14 + the LAION MLP for the aesthetic predictor and CLIP score, saved
  in float16 (the real files are float32 or float16: only the load's bytes differ). Their tokenizers
  are spo_cli.tiny's small BPE and a small BERT vocabulary (ids below the real vocab sizes: the same
  sequence lengths reach the towers, so the time is the real one; the numbers mean nothing);
- the prompts: SYNTHETIC, not Pick-a-Pic's: --limit captions made from examples/prompts.txt, written
  as the dataset's parquet shard (data/validation_unique-00000-of-00001-<hash>.parquet, column caption).

What it times: the whole `spo eval --paper --limit N` process (wall), and inside it, from the files'
modification times, the rendering (per column, one image per prompt) and the scoring; the JSON
(--out-json, default WORKDIR/eval.json) has the command, its report's timing fields, the per-image
times and an extrapolation to the 500 prompts (the per-image parts × 500/N, the rest as measured).
--tiny-scorers times the generation at full size with spo_cli's tiny scorers instead, and says so.

    python benchmarks/bench_eval.py --workdir /tmp/spo-bench-gpu               # GPU: after bench_gpu.py
    python benchmarks/bench_eval.py --workdir /tmp/spo-bench-gpu --tiny-scorers
    python benchmarks/bench_eval.py --toy --out-json /tmp/eval-toy.json         # CPU, tiny everything, 64², 2 steps
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
try:
    import spo_cli  # noqa: F401
except ImportError:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(HERE.parent / "src"))

from common import ensure_model, gpu_name  # noqa: E402

SCORER_CONFIGS = HERE / "scorers"
PAPER_PROMPTS = 500  # the split's captions, as the README and the paper count them
# Published parameter counts of the scorers' towers (tests/test_bench_session.py checks the configs):
# transformers' CLIPModel for openai/clip-vit-large-patch14 and laion/CLIP-ViT-H-14-laion2B-s32B-b79K
# (keras-hub's CLIP presets give 427,616,770 and 986,109,698: 257 more each, its own extra weights); timm's
# vit_large_patch16_224 (304,326,632) less its 1000-class head (1,025,000) for BLIP's ViT-L/16; BERT-base-
# uncased (109,482,240) less its pooler (590,592) and token-type table (1,536), plus two added tokens
# (1,536) and 12 cross-attention blocks of 2,757,120 for ImageReward's text encoder.
PUBLISHED = {"clip_vit_large_patch14": 427_616_513, "clip_vit_h_14": 986_109_441,
             "imagereward_vision": 304_326_632 - 1_025_000,
             "imagereward_text": 109_482_240 - 590_592 - 1_536 + 1_536 + 12 * 2_757_120}


def load_config(name: str) -> dict:
    cfg = json.loads((SCORER_CONFIGS / f"{name}.json").read_text())
    cfg.pop("_source", None)
    return cfg


def scorer_modules(device: str = "meta", only: tuple[str, ...] | None = None) -> dict:
    """The full-size towers from benchmarks/scorers (on `device`: meta counts parameters for free)."""
    import torch
    from transformers import BlipTextConfig, BlipVisionConfig, CLIPConfig, CLIPModel
    from transformers.models.blip.modeling_blip import BlipVisionModel
    from transformers.models.blip.modeling_blip_text import BlipTextModel

    med = load_config("imagereward_med_config")
    build = {
        "clip_vit_large_patch14": lambda: CLIPModel(CLIPConfig(**load_config("clip_vit_large_patch14"))),
        "clip_vit_h_14": lambda: CLIPModel(CLIPConfig(**load_config("clip_vit_h_14"))),
        "imagereward_vision": lambda: BlipVisionModel(BlipVisionConfig(**load_config("imagereward_vision"))),
        "imagereward_text": lambda: BlipTextModel(BlipTextConfig(
            vocab_size=med["vocab_size"], hidden_size=med["hidden_size"], encoder_hidden_size=med["encoder_width"],
            intermediate_size=med["intermediate_size"], num_hidden_layers=med["num_hidden_layers"],
            num_attention_heads=med["num_attention_heads"], max_position_embeddings=med["max_position_embeddings"],
            layer_norm_eps=med["layer_norm_eps"], is_decoder=True), add_pooling_layer=False),
    }
    with torch.device(device):
        return {name: make() for name, make in build.items() if only is None or name in only}


def check_scorer_configs() -> tuple[bool, list[str]]:
    ok, lines = True, []
    for name, module in scorer_modules().items():
        n = sum(p.numel() for p in module.parameters())
        good = n == PUBLISHED[name]
        ok &= good
        lines.append(f"{name:<24} {n:>13,} params ({'matches' if good else 'DIFFERS from'} {PUBLISHED[name]:,})")
    return ok, lines


# ---------------------------------------------------------------------------------------------
# The offline Hub


def link_to_cache(cache: Path, repo_id: str, source: Path, repo_type: str = "model") -> str:
    """`source` as one commit of `repo_id` in a Hugging Face cache, every file hard-linked (a copy where
    links fail) into blobs/, as huggingface_hub lays a cache out. A blob is named by its file's identity
    (device and inode), not its SHA-256: hashing gigabytes would cost the lease's time, nothing checks
    the name, and files hard-linked between two folders stay one blob, as identical files do on the Hub
    (spo compare and eval share a component whose blobs are the same)."""
    files = {p.relative_to(source).as_posix(): p for p in sorted(source.rglob("*"))
             if p.is_file() and not p.name.startswith(".")}
    ids = {rel: hashlib.sha256(f"{p.stat().st_dev}:{p.stat().st_ino}".encode()).hexdigest() for rel, p in files.items()}
    commit = hashlib.sha1(json.dumps([repo_id, sorted(ids.items())]).encode()).hexdigest()
    root = cache / (f"{repo_type}s--" + repo_id.replace("/", "--"))
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "refs").mkdir(exist_ok=True)
    for rel, src in files.items():
        blob = root / "blobs" / ids[rel]
        if not blob.exists():
            try:
                os.link(src, blob)
            except OSError:
                shutil.copyfile(src, blob)
        link = root / "snapshots" / commit / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(os.path.relpath(blob, link.parent))
    (root / "refs" / "main").write_text(commit)
    return commit


def synthetic_prompts(n: int) -> list[str]:
    examples = (HERE.parent / "examples" / "prompts.txt").read_text().splitlines()
    base = [p.strip() for p in examples if p.strip() and not p.startswith("#")]
    return [f"{base[k % len(base)]}, variation {k}" for k in range(n)]


def write_dataset(folder: Path, captions: list[str]) -> None:
    """Pick-a-Pic v1 as the Hub holds it: a parquet shard per split, named by push_to_hub."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    shutil.rmtree(folder, ignore_errors=True)
    (folder / "data").mkdir(parents=True)
    pq.write_table(pa.table({"caption": captions, "has_label": [True] * len(captions)}),
                   folder / "data" / "validation_unique-00000-of-00001-5b1a8e2c.parquet")


def _clip_repo(folder: Path, config: dict, weights, image: int) -> None:
    """A transformers CLIP repo: config, a working CLIP tokenizer (spo_cli.tiny's), a processor at
    `image` pixels, and float16 safetensors when `weights` (a CLIPModel) is given."""
    from spo_cli.scores import tiny as score_tiny

    folder.mkdir(parents=True, exist_ok=True)
    score_tiny._processor_files(folder)
    pre = json.loads((folder / "preprocessor_config.json").read_text())
    pre.update(size={"shortest_edge": image}, crop_size={"height": image, "width": image})
    (folder / "preprocessor_config.json").write_text(json.dumps(pre))
    if weights is not None:
        weights.save_pretrained(folder, safe_serialization=True)
    else:
        from transformers import CLIPConfig

        CLIPConfig(**config).save_pretrained(folder)


def build_full_scorers(dest: Path, device: str) -> dict[str, Path]:
    """Full-size random scorer repos (the real architectures, float16) under their real ids in `dest`."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    from spo_cli import scores
    from spo_cli.scores import tiny as score_tiny
    from spo_cli.scores.models import _reward_mlp

    shutil.rmtree(dest, ignore_errors=True)
    folders = {repo: dest / repo.replace("/", "--") for repo in
               (scores.CLIP_H, scores.PICKSCORE, scores.HPSV2, scores.CLIP_L, scores.AESTHETIC, scores.IMAGEREWARD,
                scores.BERT)}
    h, l_cfg = load_config("clip_vit_h_14"), load_config("clip_vit_large_patch14")
    torch.manual_seed(0)
    with torch.device(device):  # random init on the GPU takes seconds, on the CPU minutes
        _clip_repo(folders[scores.CLIP_H], h, None, 224)  # CLIP-H: config and processor only, as spo reads it
        pick = CLIPModel(CLIPConfig(**h)).half()
        _clip_repo(folders[scores.PICKSCORE], h, pick, 224)
        folders[scores.HPSV2].mkdir(parents=True)
        torch.save({"state_dict": {k: v.cpu() for k, v in score_tiny.to_openclip(pick.state_dict()).items()}},
                   folders[scores.HPSV2] / scores.HPS_FILES["v2.1"])  # another ViT-H-14: the same bytes would do
        del pick
        clip_l = CLIPModel(CLIPConfig(**l_cfg)).half()
        _clip_repo(folders[scores.CLIP_L], l_cfg, clip_l, 224)
        del clip_l
        folders[scores.AESTHETIC].mkdir(parents=True)
        torch.save({k: v.cpu() for k, v in _reward_mlp(l_cfg["projection_dim"]).state_dict().items()},
                   folders[scores.AESTHETIC] / scores.AESTHETIC_FILE)
        modules = scorer_modules(device, ("imagereward_vision", "imagereward_text"))
        vision, text = modules["imagereward_vision"].half(), modules["imagereward_text"].half()
        med = load_config("imagereward_med_config")
        mlp = _reward_mlp(med["hidden_size"])
    # Outside the device context: the checkpoint's unused projections are drawn from a CPU generator,
    # which a CUDA default device refuses.
    folders[scores.IMAGEREWARD].mkdir(parents=True)
    (folders[scores.IMAGEREWARD] / "med_config.json").write_text(json.dumps(med, indent=2))
    state = {k: v.cpu() for k, v in score_tiny.imagereward_checkpoint(vision, text, mlp, 0).items()}
    torch.save(state, folders[scores.IMAGEREWARD] / "ImageReward.pt")
    del modules, vision, text, state
    score_tiny._bert_vocab(folders[scores.BERT])
    return folders


def offline_hub(workdir: Path, toy: bool, tiny_scorers: bool, limit: int, device: str) -> tuple[Path, dict]:
    """WORKDIR/eval-hub: SDXL base, SPO-SDXL, the fp16-fix VAE, the scorers and the prompts."""
    from spo_cli import presets, scores
    from spo_cli.scores import tiny as score_tiny

    sys.path.insert(0, str(HERE))
    import gpu_cli_check

    timings = {}
    t0 = time.perf_counter()
    model, vae = ensure_model(workdir, toy)
    base = workdir / "model-b"
    gpu_cli_check.second_model(model, base, toy, device)  # reused when gpu_cli_check.py made it
    timings["second_unet_s"] = round(time.perf_counter() - t0, 2)
    hub = workdir / "eval-hub"
    shutil.rmtree(hub, ignore_errors=True)
    for repo, src in ((presets.SDXL_BASE, base), (presets.SPO_MERGED, model), (presets.FP16_FIX_VAE, vae)):
        link_to_cache(hub, repo, src)
    t0 = time.perf_counter()
    marker = workdir / "scorers" / ".built"
    kind = "tiny" if (toy or tiny_scorers) else "full"
    if not (marker.exists() and marker.read_text() == kind):
        folders = (score_tiny.save_repos(workdir / "scorers-src") if kind == "tiny"
                   else build_full_scorers(workdir / "scorers-src", device))
        shutil.rmtree(workdir / "scorers", ignore_errors=True)
        (workdir / "scorers").mkdir()
        for repo, folder in folders.items():
            shutil.move(str(folder), workdir / "scorers" / repo.replace("/", "--"))
        shutil.rmtree(workdir / "scorers-src", ignore_errors=True)
        marker.write_text(kind)
    for repo in (scores.CLIP_H, scores.PICKSCORE, scores.HPSV2, scores.CLIP_L, scores.AESTHETIC, scores.IMAGEREWARD,
                 scores.BERT):
        link_to_cache(hub, repo, workdir / "scorers" / repo.replace("/", "--"))
    timings["scorers_build_s"] = round(time.perf_counter() - t0, 2)
    dataset = workdir / "eval-dataset"
    write_dataset(dataset, synthetic_prompts(limit))
    link_to_cache(hub, "yuvalkirstain/pickapic_v1_no_images", dataset, repo_type="dataset")
    timings["scorers"] = kind
    return hub, timings


# ---------------------------------------------------------------------------------------------
# The run


def span(times: list[float]) -> tuple[float, float | None]:
    """(last − first, median gap between consecutive times) of finish times: the gap is one image's
    time in a steady run."""
    t = sorted(times)
    gaps = [b - a for a, b in zip(t, t[1:])]
    return (t[-1] - t[0] if t else 0.0), (statistics.median(gaps) if gaps else None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=None, help="bench_gpu.py's workdir (model/, vae/)")
    ap.add_argument("--toy", action="store_true", help="CPU, tiny SDXL and tiny scorers, 64², 2 steps")
    ap.add_argument("--tiny-scorers", action="store_true", help="full-size generation, tiny scorers")
    ap.add_argument("--limit", type=int, default=20, help="prompts (spo eval --paper --limit)")
    ap.add_argument("--out-json", type=Path, default=None, help="results (default WORKDIR/eval.json)")
    ap.add_argument("--timeout-s", type=float, default=3600.0, help="longest the spo eval process may run")
    ap.add_argument("--check-configs", action="store_true", help="only check benchmarks/scorers/*.json's sizes")
    args = ap.parse_args()
    if args.check_configs:
        ok, lines = check_scorer_configs()
        print("\n".join(lines))
        sys.exit(0 if ok else 1)
    if args.limit < 2:
        sys.exit("--limit: at least 2 prompts (the per-image time is the gap between two images)")
    toy = args.toy
    workdir = (args.workdir or Path(tempfile.gettempdir()) / ("spo-bench-gpu-toy" if toy else "spo-bench-gpu")).resolve()
    out_json = args.out_json or workdir / "eval.json"
    device = "cpu" if toy else "cuda"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    t0 = time.perf_counter()
    hub, timings = offline_hub(workdir, toy, args.tiny_scorers, args.limit, device)
    timings["setup_s"] = round(time.perf_counter() - t0, 2)
    out = workdir / "eval-out"
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "HF_HUB_CACHE": str(hub), "HF_HOME": str(workdir / "eval-hf-home"), "HF_HUB_OFFLINE": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1",
           "PYTHONPATH": os.pathsep.join(p for p in [str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")] if p)}
    small = ["--steps", "2", "--width", "64", "--height", "64", "--device", "cpu"] if toy else []
    argv = ["eval", "--paper", "--limit", str(args.limit), "--out", str(out), *small, "--json"]
    print(f"$ spo {' '.join(argv)}   ({'CPU TOY RUN' if toy else 'CUDA'}; scorers: {timings['scorers']}; "
          f"prompts: {args.limit} SYNTHETIC captions in Pick-a-Pic's parquet layout)", flush=True)
    log = workdir / "eval.log"
    t0 = time.perf_counter()
    stopped = None
    # stderr to a file and the process waited for here: a run cut short by the phase's `timeout` (SIGINT
    # to the whole group: spo stops after its image in flight) still leaves its log and its images to count.
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "spo_cli", *argv], env=env, stdout=subprocess.PIPE, stderr=err,
                                text=True)
        try:
            stdout, _ = proc.communicate(timeout=args.timeout_s)
        except (KeyboardInterrupt, subprocess.TimeoutExpired) as e:
            stopped = f"stopped ({type(e).__name__}) after {time.perf_counter() - t0:.1f} s"
            proc.terminate()
            try:
                stdout, _ = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                stdout, _ = proc.communicate()
    wall = time.perf_counter() - t0
    stderr = log.read_text(errors="replace")
    try:
        report = json.loads(stdout) if proc.returncode == 0 else {}
    except json.JSONDecodeError:
        report = {}

    cells = sorted((out / "cells").rglob("*.png")) if (out / "cells").exists() else []
    by_column: dict[str, list[float]] = {}
    for c in cells:
        by_column.setdefault(c.parent.name, []).append(c.stat().st_mtime)
    scored = [p.stat().st_mtime for p in (out / "cells").rglob("*.scores.json")] if cells else []
    columns = {}
    for name, times in by_column.items():
        total, gap = span(times)
        columns[name] = {"images": len(times), "first_to_last_s": round(total, 3),
                         "s_per_image": round(gap, 4) if gap else None}
    # Scoring starts when the last image is written and ends with the last scores file (each image's file
    # is rewritten after every metric): the five scorers' loads and their work on 2N images.
    scoring_s = max(scored) - max(c.stat().st_mtime for c in cells) if scored and cells else 0.0
    per_image = sum(c["s_per_image"] * c["images"] for c in columns.values() if c["s_per_image"])
    # What grows with the prompts is each column's images, and the scoring less its model loads. The
    # loads are not told apart from the files' times, so two bounds: scoring as a fixed cost (low) and
    # scoring grown with the prompts, loads included (high). Only a whole run is extrapolated.
    complete = proc.returncode == 0 and not stopped
    scale = PAPER_PROMPTS / args.limit - 1
    low, high = wall + scale * per_image, wall + scale * (per_image + scoring_s)
    result = {
        "benchmark": "bench_eval.py: spo eval --paper --limit N" + (" (--toy: CPU, tiny; not GPU numbers)" if toy else ""),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device, "gpu": gpu_name() if not toy else None,
        "measured": ("generation at full size (random SDXL-base-1.0 architecture, float16) and the five scorers at "
                     "their real architectures (random weights, float16 towers)" if timings["scorers"] == "full" and not toy
                     else "generation at full size; scoring with spo_cli's TINY scorers (the scoring time is not the "
                     "real one)" if not toy else "CPU toy: tiny SDXL, tiny scorers, 64², 2 steps"),
        "prompts": f"{args.limit} synthetic captions (examples/prompts.txt variations) in Pick-a-Pic v1's "
                   "validation_unique parquet layout, not the real captions",
        "command": ["spo", *argv], "exit_code": proc.returncode, "complete": complete, "stopped": stopped,
        "wall_s": round(wall, 2), "setup": timings, "columns": columns, "scoring_s": round(scoring_s, 2),
        "estimate_500_prompts_s": [round(low, 1), round(high, 1)] if complete else None,
        "estimate_rule": "wall + (500/N - 1) × Σ columns (s_per_image × images) [low: scoring fixed], + (500/N - 1) × "
                         "scoring_s [high: scoring and its model loads grown with the prompts]; start-up and the "
                         "SDXL loads counted once",
        "report": {k: report.get(k) for k in ("elapsed_s", "images", "settings", "seeds", "prompts", "versions")
                   if k in report},
        "deviations": (report.get("paper") or {}).get("deviations"),
        "stderr_tail": stderr[-3000:],
    }
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=2, default=str))
    print(f"spo eval --paper --limit {args.limit}: {wall:.1f} s, exit {proc.returncode}{', ' + stopped if stopped else ''}"
          f" (set-up before it, not counted: {timings['setup_s']:.1f} s)")
    for name, c in columns.items():
        print(f"  {name}: {c['images']} images, {c['s_per_image']} s per image")
    print(f"  scoring (5 metrics, {len(scored)} images, their model loads included): {scoring_s:.1f} s")
    if complete:
        print(f"  the 500-prompt run, extrapolated: {low / 60:.1f} to {high / 60:.1f} min ({result['estimate_rule']})")
    else:
        print(f"  not complete: no extrapolation; the end of its log:\n{stderr[-2000:]}")
    print(f"  measured: {result['measured']}; prompts: {result['prompts']}")
    print(f"raw: {out_json}")
    if not complete:
        sys.exit(1)


if __name__ == "__main__":
    main()
