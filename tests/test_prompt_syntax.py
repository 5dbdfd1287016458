"""A1111 prompt syntax on the tiny pipeline: long prompts, emphasis, BREAK, and what `auto` keeps.

The reference side is written out here step by step with the tokenizers and text encoders, and
handed to diffusers as `prompt_embeds`; the other side is the real CLI.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from spo_cli import presets
from spo_cli.cli import app

pytestmark = pytest.mark.slow  # pipelines: not in the fast tier

TINY = ["--width", "64", "--height", "64", "--steps", "3", "--device", "cpu"]
# Single tokens of the tiny tokenizer (spo_cli.tiny._WORDS), no commas: 90 tokens, two windows.
WORDS = ("a red fox in fresh snow at golden hour near the old lighthouse " * 8).split()[:90]
LONG = " ".join(WORDS)


def spo(*args: str):
    result = CliRunner().invoke(app, [*args])
    assert result.exit_code == 0, result.output
    return result


def generate(out: Path, *args: str) -> tuple[np.ndarray, dict]:
    [written] = json.loads(spo("generate", *args, *TINY, "--out", str(out), "--json", "--quiet").stdout)
    with Image.open(written["image"]) as im:
        return np.asarray(im.convert("RGB")), json.loads(Path(written["sidecar"]).read_text())


@pytest.fixture(scope="module")
def pipe(hub_cache):
    from diffusers import StableDiffusionXLPipeline

    with warnings.catch_warnings():  # diffusers' FutureWarning for torch_dtype, the authors' spelling
        warnings.simplefilter("ignore", FutureWarning)
        p = StableDiffusionXLPipeline.from_pretrained(presets.SPO_MERGED, torch_dtype=torch.float32)
    p.set_progress_bar_config(disable=True)
    return p


def hand_embeddings(pipe, fragments: list[tuple[str, float]], emphasis: str = "original"):
    """A1111's encoding by hand for text without commas or BREAK: the weighted tokens cut every 75,
    each window wrapped as BOS + 75 + EOS (padded with the tokenizer's pad after EOS) and encoded
    alone; weights multiplied into the penultimate hidden states, then ("original") the window's
    mean restored; windows concatenated; pooled from CLIP-G's first window."""
    per_encoder, pooled = [], None
    for tok, enc in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        ids, weights = [], []
        for text, w in fragments:
            t = tok(text, add_special_tokens=False).input_ids
            ids, weights = ids + t, weights + [w] * len(t)
        windows = []
        for start in range(0, max(len(ids), 1), 75):
            part, wpart = ids[start:start + 75], weights[start:start + 75]
            fill = 75 - len(part)
            with torch.no_grad():
                out = enc(torch.tensor([[tok.bos_token_id, *part, tok.eos_token_id] + [tok.pad_token_id] * fill]),
                          output_hidden_states=True)
            z = out.hidden_states[-2]
            if start == 0 and out[0].ndim == 2:
                pooled = out[0]
            m = torch.tensor([1.0, *wpart] + [1.0] * (fill + 1))[None, :, None]
            weighted = z * m
            if emphasis == "original":
                weighted = weighted * (z.mean() / weighted.mean())
            windows.append(weighted)
        per_encoder.append(torch.cat(windows, dim=1))
    return torch.cat(per_encoder, dim=-1), pooled


def reference(pipe, seed: int, **embeds) -> np.ndarray:
    image = pipe(num_inference_steps=3, width=64, height=64, guidance_scale=5.0,
                 generator=torch.Generator("cpu").manual_seed(seed), **embeds).images[0]
    return np.asarray(image)


def test_a_long_weighted_prompt_is_a1111s_encoding_exactly(pipe, out):
    prompt = "(" + " ".join(WORDS[:3]) + ":1.4) " + " ".join(WORDS[3:])
    image, meta = generate(out, prompt, "--seed", "3")
    assert (meta["prompt_syntax"], meta["emphasis"], meta["prompt_windows"]) == ("a1111", "original", 2)
    embeds, pooled = hand_embeddings(pipe, [(" ".join(WORDS[:3]), 1.4), (" ".join(WORDS[3:]), 1.0)])
    assert embeds.shape[1] == 154
    assert np.array_equal(image, reference(pipe, 3, prompt_embeds=embeds, pooled_prompt_embeds=pooled))


def test_no_norm_and_a_negative_prompt_padded_to_the_prompts_windows(pipe, out):
    prompt, negative = f"[{LONG}]", "blurry (dark:1.2) sky"
    image, meta = generate(out, prompt, "--negative", negative, "--emphasis", "none-norm", "--seed", "4")
    assert (meta["emphasis"], meta["prompt_windows"]) == ("none-norm", 2)
    embeds, pooled = hand_embeddings(pipe, [(LONG, 1 / 1.1)], "none-norm")
    neg, neg_pooled = hand_embeddings(pipe, [("blurry", 1.0), ("dark", 1.2), ("sky", 1.0)], "none-norm")
    empty, _ = hand_embeddings(pipe, [("", 1.0)], "none-norm")  # A1111 pads with the empty prompt
    expected = reference(pipe, 4, prompt_embeds=embeds, pooled_prompt_embeds=pooled,
                         negative_prompt_embeds=torch.cat([neg, empty], dim=1),
                         negative_pooled_prompt_embeds=neg_pooled)
    assert np.array_equal(image, expected)


def test_auto_leaves_plain_prompts_to_diffusers_and_weight_one_is_no_weight(hub_cache, out):
    plain, meta = generate(out / "a", "a red fox", "--seed", "5")
    assert meta["prompt_syntax"] == "plain" and "emphasis" not in meta
    forced, meta = generate(out / "b", "a red fox", "--seed", "5", "--prompt-syntax", "a1111")
    assert meta["prompt_syntax"] == "a1111"
    unit, _ = generate(out / "c", "a (red:1) fox", "--seed", "5")
    assert np.array_equal(plain, forced) and np.array_equal(plain, unit)
    weighted, _ = generate(out / "d", "a (red:1.5) fox", "--seed", "5")
    no_norm, _ = generate(out / "e", "a (red:1.5) fox", "--seed", "5", "--emphasis", "none-norm")
    assert np.abs(weighted.astype(int) - plain).max() > 0 and np.abs(no_norm.astype(int) - weighted).max() > 0


def test_words_past_token_77_count_under_a1111_only(hub_cache, out):
    a, _ = generate(out / "a", LONG, "--seed", "6", "--prompt-syntax", "plain")
    b, meta = generate(out / "b", LONG + " zebra", "--seed", "6", "--prompt-syntax", "plain")
    assert meta["prompt_syntax"] == "plain" and np.array_equal(a, b)
    c, meta = generate(out / "c", LONG, "--seed", "6")
    d, _ = generate(out / "d", LONG + " zebra", "--seed", "6")
    assert meta["prompt_syntax"] == "a1111" and np.abs(c.astype(int) - d).max() > 0


def test_break_starts_a_new_window(hub_cache, out):
    one, meta1 = generate(out / "a", "a red fox BREAK", "--seed", "7")
    two, meta2 = generate(out / "b", "a red BREAK fox", "--seed", "7")
    assert (meta1["prompt_windows"], meta2["prompt_windows"]) == (1, 2)
    assert np.abs(one.astype(int) - two).max() > 0


def test_mixed_window_counts_in_one_batch_match_batch_size_one(hub_cache, tmp_path):
    lines = [{"prompt": "a red fox", "seed": 1}, {"prompt": LONG, "seed": 2}, {"prompt": "a (cat:1.3)", "seed": 3},
             {"prompt": LONG + " BREAK snow", "seed": 4, "emphasis": "none-norm"},
             {"prompt": LONG + " (snow:1.2)", "seed": 5, "prompt_syntax": "plain"}]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    images = {}
    for bs in ("1", "4"):
        spo("batch", str(tmp_path / "p.jsonl"), *TINY, "--out", str(tmp_path / bs), "--batch-size", bs, "--quiet")
        images[bs] = {p.name: np.asarray(Image.open(p).convert("RGB"), dtype=int)
                      for p in (tmp_path / bs).glob("*.png")}
    assert len(images["1"]) == 5 and images["1"].keys() == images["4"].keys()
    for name, img in images["1"].items():
        assert np.abs(img - images["4"][name]).max() <= 1, name
    metas = sorted((json.loads(p.read_text()) for p in (tmp_path / "4").glob("*.json")), key=lambda m: m["seed"])
    assert [(m["prompt_syntax"], m.get("prompt_windows"), m.get("emphasis")) for m in metas] == [
        ("plain", None, None), ("a1111", 2, "original"), ("a1111", 1, "original"), ("a1111", 3, "none-norm"),
        ("plain", None, None)]


def test_replay_reads_the_recorded_syntax_back(hub_cache, out):
    first, meta = generate(out / "a", "a (red:1.3) fox BREAK snow", "--seed", "8", "--emphasis", "none-norm")
    sidecar = next((out / "a").glob("*.json"))
    spo("replay", str(sidecar), *TINY[-2:], "--out", str(out / "b"), "--quiet")
    [png] = (out / "b").glob("*.png")
    again = json.loads(png.with_suffix(".json").read_text())
    assert np.array_equal(first, np.asarray(Image.open(png).convert("RGB")))
    assert (again["prompt_syntax"], again["emphasis"], again["prompt_windows"]) == ("a1111", "none-norm", 2)
    assert "Emphasis: No norm" in Image.open(png).text["parameters"]


def test_a_sidecar_from_before_the_syntax_replays_as_plain(hub_cache, out):
    # Files made before 0.2 have no prompt_syntax: their prompts were read as plain text, cut at 77.
    first, meta = generate(out / "a", LONG + " (zebra:1.5)", "--seed", "9", "--prompt-syntax", "plain")
    sidecar = next((out / "a").glob("*.json"))
    old = {k: v for k, v in meta.items() if k != "prompt_syntax"}
    sidecar.write_text(json.dumps(old))
    spo("replay", str(sidecar), *TINY[-2:], "--out", str(out / "b"), "--quiet")
    [png] = (out / "b").glob("*.png")
    assert np.array_equal(first, np.asarray(Image.open(png).convert("RGB")))
    assert "Prompt syntax: plain" in Image.open(png).text["parameters"]


def test_compare_gives_every_column_the_same_encoding(hub_cache, tmp_path):
    spo("compare", LONG, "--base", "--spo", "--seeds", "1", *TINY, "--out", str(tmp_path), "--quiet")
    metas = [json.loads(p.read_text()) for p in tmp_path.rglob("*.json") if "prompt" in json.loads(p.read_text())]
    assert len(metas) == 2
    assert all((m["prompt_syntax"], m["prompt_windows"]) == ("a1111", 2) for m in metas)


A1111_TEXT = ("a (red:1.2) fox in fresh snow\nNegative prompt: blurry, [dark]\n"
              "Steps: 3, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 5, Seed: 11, Size: 64x64, "
              'Model hash: 31e35c80fc, Model: sd_xl_base_1.0, VAE hash: 235745af8d, Lora hashes: "a: 1, b: 2", '
              "ADetailer model: face_yolov8n.pt, Version: v1.10.1")


def test_replay_takes_a1111_parameters_from_text_or_an_a1111_png(hub_cache, out):
    same, meta = generate(out / "generate", "a (red:1.2) fox in fresh snow", "--negative", "blurry, [dark]",
                          "--scheduler", "dpm++2m-karras", "--guidance", "5", "--seed", "11")
    png = out / "a1111.png"
    info = __import__("PIL.PngImagePlugin", fromlist=["PngInfo"]).PngInfo()
    info.add_text("parameters", A1111_TEXT)
    Image.new("RGB", (64, 64)).save(png, pnginfo=info)
    for source in (["--infotext", A1111_TEXT], [str(png)]):
        r = CliRunner().invoke(app, ["replay", *source, "--device", "cpu", "--out", str(out / "r"), "--json"])
        assert r.exit_code == 0, r.output
        [written] = json.loads(r.stdout)
        msg = " ".join(r.stderr.split())
        assert "Model hash, Model, VAE hash, Lora hashes, ADetailer model, Version" in msg
        assert "will not be identical to A1111's" in msg
        again = json.loads(Path(written["sidecar"]).read_text())
        assert (again["scheduler"]["name"], again["steps"], again["seed"], again["negative_prompt"]) == \
            ("dpm++2m-karras", 3, 11, "blurry, [dark]")
        assert again["prompt_syntax"] == "a1111" and again["model_request"]["model"] == presets.DEFAULT_PRESET
        with Image.open(written["image"]) as im:
            assert np.array_equal(np.asarray(im.convert("RGB")), same)


def test_replay_refuses_a_sampler_spo_does_not_have(hub_cache, out):
    r = CliRunner().invoke(app, ["replay", "--infotext", A1111_TEXT.replace("DPM++ 2M", "LCM"), "--out", str(out)])
    assert r.exit_code == 2 and "--infotext: " in r.stderr and "DPM++ 2M Karras" in r.stderr
    assert not out.exists() or not any(out.iterdir())
    r = CliRunner().invoke(app, ["replay", "--out", str(out)])
    assert r.exit_code == 2 and "Give one FILE to replay, or --infotext TEXT" in " ".join(r.stderr.split())


# ---------------------------------------------------------------------------------------------
# encoding.py alone: the tokenizers and text encoders of the tiny pipeline, no denoising

ONE = "a red fox in fresh snow at golden hour near the old".split()  # one token each ("lighthouse" is 6)


def tokens(n: int) -> str:
    return " ".join((ONE * (n // len(ONE) + 1))[:n])


def test_auto_keeps_exactly_75_tokens_plain(pipe):
    from spo_cli import encoding

    assert encoding.fits_plain(pipe.tokenizer, tokens(75))  # one window holds 75: diffusers sees all
    assert not encoding.fits_plain(pipe.tokenizer, tokens(76))
    assert encoding.plan(pipe, tokens(75), None, "auto") == encoding.Plan("plain", 1)
    assert encoding.plan(pipe, tokens(76), None, "auto") == encoding.Plan("a1111", 2)


def test_windows_past_the_limit_are_refused_with_the_count_before_encoding(pipe):
    from spo_cli import encoding, validate
    from spo_cli.errors import UsageError

    at_limit = " ".join(["a"] * (75 * validate.WINDOWS_MAX))  # one token each, within the character limit
    assert len(at_limit + " fox") <= validate.PROMPT_MAX_CHARS
    assert encoding.plan(pipe, at_limit, None, "a1111").chunks == validate.WINDOWS_MAX
    with pytest.raises(UsageError, match=rf"The prompt takes 33 text-encoder windows .* limit is {validate.WINDOWS_MAX}"):
        encoding.plan(pipe, at_limit + " fox", None, "auto")
    with pytest.raises(UsageError, match=r"The negative prompt takes 33 text-encoder windows"):
        encoding.plan(pipe, "a fox", at_limit + " fox", "a1111")


def test_extra_network_tags_are_taken_out_of_the_prompt_not_the_negative(pipe):
    from spo_cli import encoding

    tagged = encoding.embeddings(pipe, ["a red <lora:detail:0.6>fox"], ["blurry <lora:x:1>"], 1, "original")
    plain = encoding.embeddings(pipe, ["a red fox"], ["blurry <lora:x:1>"], 1, "original")
    kept = encoding.embeddings(pipe, ["a red fox"], ["blurry"], 1, "original")
    assert torch.equal(tagged["prompt_embeds"], plain["prompt_embeds"])
    assert torch.equal(tagged["negative_prompt_embeds"], plain["negative_prompt_embeds"])
    assert not torch.equal(plain["negative_prompt_embeds"], kept["negative_prompt_embeds"])
    assert encoding.plan(pipe, "a red fox <lora:detail:0.6>", None, "auto").syntax == "a1111"
    # 74 words and a tag: one window once the tag is out
    assert encoding.plan(pipe, tokens(74) + " <lora:long_name_of_a_lora:0.75>", None, "auto").chunks == 1


def test_a_weight_half_precision_cannot_hold_is_named_not_a_nan_image(pipe):
    import copy

    from spo_cli import encoding
    from spo_cli.errors import GenerationError

    half = copy.deepcopy(pipe.text_encoder).to(torch.float16)
    chunks = encoding.windows(pipe.tokenizer, "a (red:65504) fox")
    with pytest.raises(GenerationError, match=r"prompt's A1111 weight 65504 .* float16 holds \(largest 65504\)"):
        encoding._encode(half, chunks, "none-norm", "prompt")
    # Weighted in float32 as A1111 does, "Original" brings the values back into range: no error.
    z, _ = encoding._encode(half, chunks, "original", "prompt")
    assert z.dtype == torch.float16 and torch.isfinite(z).all()
    # In float32 the weighting is what it always was.
    full, _ = encoding._encode(pipe.text_encoder, encoding.windows(pipe.tokenizer, "a (red:1.3) fox"), "original", "p")
    ref, _ = hand_embeddings(pipe, [("a", 1.0), ("red", 1.3), ("fox", 1.0)])
    assert torch.equal(full, ref[..., :full.shape[-1]])
