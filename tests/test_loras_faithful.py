"""Stacked LoRAs on the tiny pipelines: what spo makes is what diffusers' multi-adapter API makes, pixel
for pixel; prompt tags load from the LoRA folder; sidecars record each LoRA and replay remakes it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import save_file

from spo_cli import presets, tiny
from tests.test_faithful import PROMPT, TINY, authors_pipeline, generate_json, pixels, reference, spo

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("loras")]


@pytest.fixture(scope="module")
def base_pipeline(hub_cache):
    return authors_pipeline(presets.SDXL_BASE)


@pytest.fixture(scope="module")
def lora_dir(base_pipeline, tmp_path_factory) -> Path:
    """Two tiny LoRAs in the SPO release's key format, different from each other and from SPO's."""
    folder = tmp_path_factory.mktemp("loras")
    save_file(tiny.lora_state_dict(base_pipeline.unet, seed=101), folder / "a.safetensors")
    save_file(tiny.lora_state_dict(base_pipeline.unet, seed=202), folder / "b.safetensors")
    return folder


def two_loras(folder: Path) -> list[str]:
    return ["--lora", f"{folder / 'a.safetensors'}:0.7", "--lora", f"{folder / 'b.safetensors'}:-0.4"]


@pytest.fixture(scope="module")
def stacked(lora_dir, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("stacked")
    [written] = generate_json(out, PROMPT, "--seed", "3", *TINY, "--device", "cpu", "--model", "base",
                              *two_loras(lora_dir))
    return written


def test_two_loras_match_diffusers_multi_adapter_pixel_for_pixel(base_pipeline, lora_dir, stacked):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pipe(base_pipeline)  # its own adapters; the components are shared
    try:
        pipe.load_lora_weights(str(lora_dir), weight_name="a.safetensors", adapter_name="a")
        pipe.load_lora_weights(str(lora_dir), weight_name="b.safetensors", adapter_name="b")
        pipe.set_adapters(["a", "b"], adapter_weights=[0.7, -0.4])
        expected = reference(pipe, 3)
        pipe.set_adapters(["a"], adapter_weights=[0.7])
        only_a = reference(pipe, 3)
    finally:
        pipe.unload_lora_weights()
    assert np.array_equal(pixels(stacked["image"]), expected)
    assert not np.array_equal(expected, only_a)  # the second LoRA counts: not the last one kept, nor the first


def test_stacked_loras_are_recorded_with_their_hashes(lora_dir, stacked):
    meta = json.loads(Path(stacked["sidecar"]).read_text())
    a, b = lora_dir / "a.safetensors", lora_dir / "b.safetensors"
    assert [(r["id"], r["scale"], r["tag"]) for r in meta["loras"]] == [(str(a), 0.7, False), (str(b), -0.4, False)]
    assert [r["sha256"] for r in meta["loras"]] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in (a, b)]
    assert meta["lora"]["scale"] == 0.7  # the first, where one LoRA has always been recorded
    assert meta["model_request"]["loras"] == [{"spec": str(b), "scale": -0.4, "unet_scale": None, "name": None}]
    with Image.open(stacked["image"]) as im:
        params = im.text["parameters"]
    hashes = ", ".join(f"{r['name']}: {r['a1111_hash']}" for r in meta["loras"])
    assert f'Lora hashes: "{hashes}"' in params and len(meta["loras"][0]["a1111_hash"]) == 12


def test_one_lora_records_as_before_and_replays_stacked_or_replaced(lora_dir, stacked, out):
    [one] = generate_json(out / "g", PROMPT, "--seed", "3", *TINY, "--device", "cpu", "--model", "base",
                          "--lora", f"{lora_dir / 'a.safetensors'}:0.7")
    meta = json.loads(Path(one["sidecar"]).read_text())
    assert "loras" not in meta and "loras" not in meta["model_request"] and "lora_dir" not in meta["model_request"]
    assert meta["model_request"]["lora_scale"] == 0.7

    def replay(*args):
        return json.loads(spo("replay", stacked["sidecar"], *args, "--out", str(out / "r"), "--json", "--quiet").stdout)

    [again] = replay()  # the recorded stack, read back
    assert np.array_equal(pixels(again["image"]), pixels(stacked["image"]))
    [replaced] = replay("--lora", f"{lora_dir / 'a.safetensors'}:0.7")  # --lora replaces every recorded LoRA
    assert np.array_equal(pixels(replaced["image"]), pixels(one["image"]))


def test_a_prompt_tag_loads_from_the_lora_folder_and_replays(lora_dir, out):
    # The tag's UNet weight is its third number (these LoRAs touch only the UNet: the second, the text
    # encoders', changes nothing here). The reference names the same file with --lora, the tag stripped.
    tagged = f"{PROMPT}<lora:b:0.3:-0.4>"
    common = ["--seed", "3", *TINY, "--device", "cpu", "--model", "base", "--lora", f"{lora_dir / 'a.safetensors'}:0.7"]
    [from_tag] = generate_json(out / "t", tagged, *common, "--lora-dir", str(lora_dir))
    [by_hand] = generate_json(out / "h", PROMPT, *common, "--lora", f"{lora_dir / 'b.safetensors'}:-0.4",
                              "--prompt-syntax", "a1111")
    assert np.array_equal(pixels(from_tag["image"]), pixels(by_hand["image"]))
    meta = json.loads(Path(from_tag["sidecar"]).read_text())
    assert meta["prompt"] == tagged  # as A1111 records it: the tag stays in the prompt's text
    assert [(r["name"], r["scale"], r.get("unet_scale"), r["tag"]) for r in meta["loras"]] == [
        ("a", 0.7, None, False), ("b", 0.3, -0.4, True)]
    assert meta["model_request"]["lora_dir"] == str(lora_dir) and "loras" not in meta["model_request"]

    # Replay: the recorded folder, the tag found again in the prompt: the same image.
    replayed = json.loads(spo("replay", from_tag["sidecar"], "--out", str(out / "r"), "--json", "--quiet").stdout)
    assert np.array_equal(pixels(replayed[0]["image"]), pixels(from_tag["image"]))
    # Without the folder's LoRA (a plain prompt keeps the tag as text), a different image.
    [untagged] = generate_json(out / "u", tagged, *common)
    assert not np.array_equal(pixels(untagged["image"]), pixels(from_tag["image"]))


def test_batch_loads_tags_and_draws_seed_minus_one_per_line(lora_dir, out):
    lines = out / "p.jsonl"
    lines.parent.mkdir(parents=True, exist_ok=True)
    lines.write_text(json.dumps({"prompt": "a fox<lora:b:0.5>", "seed": -1}) + "\n"
                     + json.dumps({"prompt": "a cat <lora:b:0.5>", "seed": 5}) + "\n")
    spo("batch", str(lines), *TINY, "--device", "cpu", "--model", "base", "--lora-dir", str(lora_dir),
        "--out", str(out / "b"), "--quiet")
    metas = [json.loads(p.read_text()) for p in sorted((out / "b").glob("*.json")) if p.name != "manifest.json"]
    metas = [m for m in metas if "seed" in m]
    assert len(metas) == 2 and sorted(m["seed"] for m in metas)[0] >= 0 and 5 in [m["seed"] for m in metas]
    assert all([(r["name"], r["scale"]) for r in m["loras"]] == [("b", 0.5)] for m in metas)


def test_fast_folds_every_stacked_lora_in(lora_dir, stacked, out, monkeypatch):
    """--fast fuses each adapter into the weights before fusing Q/K/V. torch.compile itself is left
    out (identity) here: what is tested is the folding, and a real compile costs minutes on the CPU
    (test_speed compiles for real, with one LoRA)."""
    import torch

    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)
    [fast] = generate_json(out, PROMPT, "--seed", "3", *TINY, "--device", "cpu", "--model", "base", "--fast",
                           *two_loras(lora_dir))
    diff = np.abs(pixels(fast["image"]).astype(int) - pixels(stacked["image"]).astype(int))
    assert diff.max() <= 1  # the same image up to float rounding, the LoRAs folded in or not
