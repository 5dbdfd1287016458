"""Preference scorers against their authors' code, on tiny random weights laid out as the real Hub repos.

`scoring_reference.py` reimplements each reference (OpenCLIP for HPSv2, BLIP + med BERT for
ImageReward, the PickScore README, LAION's simple_inference, torchmetrics) and loads the same
checkpoint files strictly under the authors' key names; spo's scorers (transformers models with
renamed keys) must give the same numbers to 1e-5, through the same resolution a user's machine runs.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests import scoring_reference as ref

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("scores")]

LONG = "a red fox " * 40  # past 77 CLIP tokens and 35 BERT tokens
PROMPTS = ["a red fox in fresh snow", "a cat on the moon", LONG, "A  Lighthouse in a STORM at night",
           "a child and a penguin sitting on the moon"]
# (w, h): square, landscape, portrait, SDXL's 832×1216 shape scaled (odd crop offsets), smaller than 32.
SIZES = [(64, 64), (96, 64), (48, 80), (83, 121), (24, 40)]


@pytest.fixture(scope="module")
def score_cache(tmp_path_factory) -> dict[str, Path]:
    """The tiny scorer repos in the session's HF cache; returns their snapshot folders by repo id."""
    from spo_cli import tiny
    from spo_cli.scores import tiny as score_tiny

    cache = Path(os.environ["HF_HUB_CACHE"])
    folders = {}
    for repo, src in score_tiny.save_repos(tmp_path_factory.mktemp("score-repos")).items():
        commit = tiny.add_to_cache(cache, repo, src)
        folders[repo] = cache / ("models--" + repo.replace("/", "--")) / "snapshots" / commit
    return folders


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(7)
    out = []
    for i, (w, h) in enumerate(SIZES):
        # smooth gradients plus noise: resampling differences would show
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], -1)
        out.append(Image.fromarray(np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)))
    out[1] = out[1].convert("L").convert("RGB")
    return out


def spo_scores(name: str, images, prompts, hps_version="v2.1", batch_size=3) -> list[float]:
    import torch

    from spo_cli.resolve import Fetch
    from spo_cli.scores import run

    resolved = run.resolve_metrics([name], hps_version, Fetch())
    folders = {repo: r.path for repo, r in resolved[name].items()}
    from spo_cli.scores import models

    scorer = models.load(name, folders, "cpu", torch.float32, hps_version)
    values = []
    for i in range(0, len(images), batch_size):  # batched, as spo runs: must not change a number
        values += scorer.score(images[i:i + batch_size], prompts[i:i + batch_size])
    return values


def assert_close(ours, theirs):
    assert len(ours) == len(theirs)
    assert np.allclose(ours, theirs, rtol=0, atol=1e-5), (ours, theirs)
    assert len({round(v, 4) for v in theirs}) > 1, theirs  # the stand-ins tell images apart


def test_pickscore(score_cache, images):
    from spo_cli import scores

    theirs = ref.pickscore_scores(score_cache[scores.PICKSCORE], score_cache[scores.CLIP_H], images, PROMPTS)
    assert_close(spo_scores("pickscore", images, PROMPTS), theirs)


@pytest.mark.parametrize("version", ["v2.1", "v2.0"])
def test_hpsv2(score_cache, images, version):
    from transformers import CLIPConfig, CLIPTokenizer

    from spo_cli import scores

    folder = score_cache[scores.CLIP_H]
    config = CLIPConfig.from_pretrained(folder)
    v, t = config.vision_config, config.text_config
    arch = {"embed_dim": config.projection_dim, "vision_width": v.hidden_size, "vision_layers": v.num_hidden_layers,
            "vision_heads": v.num_attention_heads, "patch_size": v.patch_size, "image_size": v.image_size,
            "text_width": t.hidden_size, "text_layers": t.num_hidden_layers, "text_heads": t.num_attention_heads,
            "vocab_size": t.vocab_size, "context_length": 77, "mlp_ratio": v.intermediate_size / v.hidden_size}
    tok = CLIPTokenizer.from_pretrained(folder)
    # open_clip's basic_clean + whitespace_clean + lower (ftfy leaves these prompts as they are)
    ids = lambda text: tok.encode(re.sub(r"\s+", " ", text).strip().lower(), add_special_tokens=False)  # noqa: E731
    theirs = ref.hps_scores(score_cache[scores.HPSV2] / scores.HPS_FILES[version], arch, images, PROMPTS, ids,
                            sot=tok.bos_token_id, eot=tok.eos_token_id)
    assert_close(spo_scores("hpsv2", images, PROMPTS, hps_version=version), theirs)


def test_imagereward(score_cache, images):
    from transformers import BertTokenizer

    from spo_cli import scores

    folder = score_cache[scores.IMAGEREWARD]
    tokenizer = BertTokenizer.from_pretrained(score_cache[scores.BERT])
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    theirs = ref.imagereward_scores(folder / "ImageReward.pt", folder / "med_config.json", images, PROMPTS, tokenizer)
    assert_close(spo_scores("imagereward", images, PROMPTS), theirs)


def test_aesthetic(score_cache, images):
    from spo_cli import scores

    theirs = ref.aesthetic_scores(score_cache[scores.CLIP_L], score_cache[scores.AESTHETIC] / scores.AESTHETIC_FILE,
                                  images)
    assert_close(spo_scores("aesthetic", images, PROMPTS), theirs)


def test_clip_score(score_cache, images):
    from spo_cli import scores

    theirs = ref.clip_scores(score_cache[scores.CLIP_L], images, PROMPTS)
    ours = spo_scores("clip", images, PROMPTS)
    # 100 · cos: the cosines agree to 1e-5, so the scores to 1e-3 (float32 rounding at ~37 is 4e-6)
    assert np.allclose(np.array(ours) / 100, np.array(theirs) / 100, rtol=0, atol=1e-5), (ours, theirs)
    raw = ref.clip_scores(score_cache[scores.CLIP_L], images, PROMPTS, clamp=False)
    assert any(v < 0 for v in raw) and any(v > 0 for v in raw), raw  # both sides of the clamp are exercised


@pytest.mark.parametrize("name", ["pickscore", "clip", "hpsv2"])
def test_half_towers_give_float32_products(score_cache, images, name):
    """On a GPU the towers run in float16; the number must still be the float32 product of their
    embeddings (float16 there rounds PickScore's ~22 in steps of ~0.016). bfloat16 on the CPU
    stands in for float16 (coarser still, so a half-precision product cannot pass)."""
    import torch

    from spo_cli.resolve import Fetch
    from spo_cli.scores import models, run

    resolved = run.resolve_metrics([name], "v2.1", Fetch())
    scorer = models.load(name, {repo: r.path for repo, r in resolved[name].items()}, "cpu", torch.bfloat16)
    towers = {}
    for tower in ("get_image_features", "get_text_features"):  # the real towers, their outputs kept
        real = getattr(scorer.model, tower)

        def keep(*args, _real=real, _tower=tower, **kwargs):
            towers[_tower] = out = _real(*args, **kwargs)
            return out

        setattr(scorer.model, tower, keep)
    ours = scorer.score(images[:3], PROMPTS[:3])
    raw = {k: v if isinstance(v, torch.Tensor) else v.pooler_output for k, v in towers.items()}
    assert all(v.dtype == torch.bfloat16 for v in raw.values())  # the towers did run in half precision
    emb = {k: v.float() for k, v in raw.items()}
    cos = torch.nn.functional.cosine_similarity(emb["get_image_features"], emb["get_text_features"], dim=-1,
                                                eps=0).double()
    scale = {"pickscore": scorer.model.logit_scale.detach().float().exp().item(), "clip": 100.0, "hpsv2": 1.0}[name]
    expected = (scale * cos).clamp(min=0) if name == "clip" else scale * cos
    assert np.allclose(ours, expected.numpy(), rtol=1e-6, atol=0), (ours, expected)


# --- the commands, end to end on the tiny pipelines --------------------------------------------

SMALL = ["--width", "32", "--height", "32", "--steps", "1", "--device", "cpu"]


def invoke(*args: str):
    from typer.testing import CliRunner

    from spo_cli.cli import app

    return CliRunner().invoke(app, list(args))


def test_compare_score_and_eval_and_score(score_cache, hub_cache, tmp_path):
    """compare --score: scores in the index and under the cells, win rates over the pairs; eval: the
    report, resumable; spo score: the same numbers, skipped on a rerun, written into the manifest."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox in fresh snow\n(a cat:1.3) on the moon\n")
    out = tmp_path / "eval"
    r = invoke("eval", str(prompts), "--out", str(out), "--seeds", "0-1", *SMALL, "--metric", "pickscore,aesthetic",
               "--json", "--quiet")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report == json.loads((out / "report.json").read_text())
    assert report["images"] == {"rendered": 8, "reused": 0, "failed": 0, "scored": 8}
    (pair,) = report["summary"]["pairs"]
    assert (pair["a"], pair["b"]) == ("SPO-SDXL", "SDXL base")
    assert pair["metrics"]["pickscore"]["n"] == 4
    md = (out / "report.md").read_text()
    assert "| SPO-SDXL vs SDXL base | pickscore |" in md and "report-plot.png" in md
    # Each scorer says what it computes and in which precision (the product in float32 whatever the towers).
    pick = report["metrics"]["pickscore"]
    assert "logit_scale" in pick["computed"] and "logit-scaled dot in float32" in pick["precision"]
    assert f"| {pick['computed']} | {pick['precision']} |" in md
    with Image.open(out / "report-plot.png") as im:
        assert im.width > 400 and im.height > 200

    # Each cell's scores file: the prompt as the model read it (A1111 weights removed).
    cells = sorted((out / "cells" / "spo-sdxl").glob("*.png"))
    records = [json.loads(store_path(c).read_text()) for c in cells]
    assert {rec["prompt"] for rec in records} == {"a red fox in fresh snow", "a cat on the moon"}
    spo_values = sorted(rec["scores"]["pickscore"]["value"] for rec in records)

    # spo score on the same folder: every value reused (same models, same images), none recomputed.
    r = invoke("score", str(out / "cells" / "spo-sdxl"), "--metric", "pickscore", "--json", "--quiet")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert sorted(row["scores"]["pickscore"] for row in rows) == spo_values
    assert all(row["reused"] == ["pickscore"] for row in rows)
    # --force recomputes them, to the same numbers.
    r = invoke("score", *map(str, cells), "--metric", "pickscore", "--force", "--json", "--quiet")
    assert r.exit_code == 0, r.output
    assert np.allclose(sorted(row["scores"]["pickscore"] for row in json.loads(r.stdout)), spo_values, atol=1e-6)
    assert all(row["reused"] == [] for row in json.loads(r.stdout))

    # Eval again: nothing rendered, nothing rescored, the same summary.
    r = invoke("eval", str(prompts), "--out", str(out), "--seeds", "0-1", *SMALL, "--metric", "pickscore,aesthetic",
               "--json", "--quiet")
    assert r.exit_code == 0, r.output
    again = json.loads(r.stdout)
    assert again["images"]["rendered"] == 0 and again["images"]["reused"] == 8
    assert again["summary"] == report["summary"]

    # compare --score: the grid's index carries every cell's scores and the summary. The columns in
    # the order the options came (--spo first), so the comparison is SDXL base against SPO-SDXL.
    r = invoke("compare", "a red fox in fresh snow", "--seeds", "1,2", *SMALL, "--out", str(tmp_path / "cmp"),
               "--spo", "--base", "--score", "--metric", "pickscore", "--json", "--quiet")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    index = json.loads(Path(summary["index"]).read_text())
    assert [c["label"] for c in index["columns"]] == ["SPO-SDXL", "SDXL base"]
    values = [c["scores"]["pickscore"] for row in index["cells"] for c in row]
    assert len(values) == 4 and all(isinstance(v, float) for v in values)
    (pair,) = index["scores"]["pairs"]
    assert (pair["a"], pair["b"]) == ("SDXL base", "SPO-SDXL")
    got = pair["metrics"]["pickscore"]
    diffs = [row[1]["scores"]["pickscore"] - row[0]["scores"]["pickscore"] for row in index["cells"]]
    assert got["mean_diff"]["value"] == pytest.approx(np.mean(diffs))  # base minus SPO, as ordered
    assert (got["n"], got["prompts"], got["too_few"]) == (2, 1, True)  # two seeds of one prompt
    assert got["mean_diff"]["low"] is None  # one prompt: no interval
    assert summary["scores"] == index["scores"]


def test_eval_columns_keep_their_order_and_direction(score_cache, hub_cache, tmp_path):
    """`--columns base,spo-lora:0.5,spo,spo-lora:0` (issue 27: the list used to be regrouped, and
    "later against earlier" reported LoRA against SPO). Every comparison is the later column
    minus the earlier one, as the cells' own score files say; spo-lora:0 draws SDXL base's pixels,
    so against base it is a tie on every prompt by construction."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox in fresh snow\na cat on the moon\n")
    out = tmp_path / "eval"
    r = invoke("eval", str(prompts), "--out", str(out), "--seeds", "0", *SMALL, "--metric", "pickscore",
               "--columns", "base,spo-lora:0.5,spo,spo-lora:0", "--json", "--quiet")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    labels = ["SDXL base", "SPO LoRA x0.5", "SPO-SDXL", "SPO LoRA x0"]
    assert [c["label"] for c in report["columns"]] == labels
    assert list(report["summary"]["means"]) == labels
    pairs = report["summary"]["pairs"]
    assert [(p["a"], p["b"]) for p in pairs] == [(labels[j], labels[i]) for i in range(4) for j in range(i + 1, 4)]

    def scores(label):  # the scorer's own record of each cell, by prompt
        from spo_cli.outputs import naming

        folder = out / "cells" / naming.slugify(label)
        recs = [json.loads(store_path(c).read_text()) for c in sorted(folder.glob("*.png"))]
        return {rec["prompt"]: rec["scores"]["pickscore"]["value"] for rec in recs}

    for p in pairs:
        a, b = scores(p["a"]), scores(p["b"])
        diffs = [a[k] - b[k] for k in sorted(a)]
        got = p["metrics"]["pickscore"]
        assert got["mean_diff"]["value"] == pytest.approx(np.mean(diffs), abs=1e-9)
        assert got["sign"]["wins"] == sum(d > 0 for d in diffs) and got["sign"]["losses"] == sum(d < 0 for d in diffs)
        assert got["too_few"] and "Too few prompts to conclude anything: 2 prompt(s)" in got["conclusion"]
    tie = pairs[2]["metrics"]["pickscore"]  # SPO LoRA x0 against SDXL base: the same pixels
    assert (pairs[2]["a"], pairs[2]["b"]) == ("SPO LoRA x0", "SDXL base")
    assert tie["sign"] == {"wins": 0, "losses": 0, "ties": 2, "p_value": None}
    assert tie["win_rate"]["value"] == 0.5 and tie["mean_diff"]["value"] == 0.0
    md = (out / "report.md").read_text()
    rows = [line for line in md.splitlines() if " vs " in line and line.startswith("| ") and "(a vs b)" not in line]
    assert [line.split(" | ")[0][2:] for line in rows] == [f"{p['a']} vs {p['b']}" for p in pairs]


def test_score_fails_an_image_not_the_run(score_cache, tmp_path):
    """A 12000² PNG (refused from its header, never decoded, PIL's warning kept in) and an image
    whose scores file name is taken by a folder each fail with one line; the others are scored."""
    import zlib

    def chunk(kind, data):
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = (12000).to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    (tmp_path / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                                        + chunk(b"IDAT", zlib.compress(b"\0" * 7)) + chunk(b"IEND", b""))
    for name in ("good", "taken"):
        Image.new("RGB", (40, 40), (200, 40, 40)).save(tmp_path / f"{name}.png")
    store_path(tmp_path / "taken.png").mkdir()
    r = invoke("score", str(tmp_path), "--prompt", "a red square", "--metric", "aesthetic,clip", "--device", "cpu")
    assert r.exit_code == 1, r.output
    assert "Unexpected" not in r.output and "DecompressionBomb" not in r.output and "Traceback" not in r.output
    lines = [ln for ln in r.output.splitlines() if "huge.png" in ln and ln.startswith("error")]
    assert len(lines) == 1 and "12000×12000 (144 Mpx)" in lines[0] and "aesthetic" not in lines[0], r.output
    assert r.output.count("taken.scores.json beside it is a folder") == 1, r.output
    assert set(json.loads(store_path(tmp_path / "good.png").read_text())["scores"]) == {"aesthetic", "clip"}


def paper_dataset(folder: Path) -> str:
    """Pick-a-Pic v1 as the Hub holds it: parquet shards per split, named by push_to_hub. Only the
    validation_unique shard may be read; the validation shard beside it is a decoy."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from spo_cli import tiny, validate

    data = folder / "data"
    data.mkdir(parents=True)
    captions = ["a red fox in fresh snow", "", "a red fox in fresh snow", "x" * (validate.PROMPT_MAX_CHARS + 1),
                "(a cat:1.3) on the moon", "a third prompt, past --limit"]
    pq.write_table(pa.table({"caption": captions, "has_label": [True] * len(captions)}),
                   data / "validation_unique-00000-of-00001-5b1a8e2c.parquet")
    pq.write_table(pa.table({"caption": ["a decoy from the validation split"]}),
                   data / "validation-00000-of-00001-77aa01ff.parquet")
    return tiny.add_to_cache(Path(os.environ["HF_HUB_CACHE"]), "yuvalkirstain/pickapic_v1_no_images", folder,
                             repo_type="dataset")


def test_eval_paper(score_cache, hub_cache, tmp_path, monkeypatch):
    """--paper: the validation_unique captions (deduplicated, unusable ones left out with a warning),
    seed 42, the prompt read as it is; every difference from the authors' setting in the report."""
    from huggingface_hub import constants

    out = tmp_path / "paper"
    # Not in the cache: one paragraph that names the download command, before anything is rendered.
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    r = invoke("eval", "--paper", "--out", str(out), "--metric", "pickscore", *SMALL)
    assert r.exit_code == 1 and "spo download paper-prompts" in r.output, r.output
    assert not (out / "cells").exists()
    monkeypatch.undo()

    commit = paper_dataset(tmp_path / "dataset")
    r = invoke("download", "paper-prompts", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["repos"][0]["files"] == ["data/validation_unique-00000-of-00001-5b1a8e2c.parquet"]

    r = invoke("eval", "--paper", "--limit", "2", "--out", str(out), "--metric", "pickscore", *SMALL, "--json")
    assert r.exit_code == 0, r.output
    assert "yuvalkirstain/pickapic_v1_no_images:4: 'caption' is 1" in r.output  # the long one, named
    report = json.loads((out / "report.json").read_text())
    assert report["prompts"] | {"file": None} == {
        "file": None, "count": 2, "dataset": "yuvalkirstain/pickapic_v1_no_images", "split": "validation_unique",
        "commit": commit, "files": ["data/validation_unique-00000-of-00001-5b1a8e2c.parquet"], "dropped": 1}
    assert report["seeds"] == [42] and report["images"]["rendered"] == 4
    assert report["settings"]["prompt_syntax"] == "plain" and report["settings"]["generator_device"] == "cpu"
    deviations = report["paper"]["deviations"]
    assert any(d.startswith("steps is 1;") for d in deviations) and any("ran in float32" in d for d in deviations)
    assert not any(d.startswith(("guidance", "seeds", "prompt_syntax", "the columns")) for d in deviations)
    assert report["paper"]["reported"] == {"pickscore": "21.95 → 23.06"}
    # The prompt as the authors' pipeline read it: plain, so '(a cat:1.3)' is text, and scored as such.
    prompts = {json.loads(store_path(c).read_text())["prompt"] for c in (out / "cells" / "spo-sdxl").glob("*.png")}
    assert prompts == {"a red fox in fresh snow", "(a cat:1.3) on the moon"}
    md = (out / "report.md").read_text()
    assert "## Against the paper" in md and "| pickscore | 21.95 → 23.06 |" in md and "- steps is 1;" in md
    # beside the paper's numbers, what this run can say of SPO against SDXL: with 2 prompts, nothing
    assert "| too few prompts (sign p " in md and ", 2 prompts) |" in md


def store_path(image: Path) -> Path:
    from spo_cli.scores import store

    return store.scores_path(image)


def test_score_refuses_early(tmp_path):
    """Bad input: exit 2 with one clear line, before any model is touched."""
    image = tmp_path / "photo.png"
    Image.new("RGB", (8, 8)).save(image)
    r = invoke("score", str(image))
    assert r.exit_code == 2 and "records no prompt" in r.output and "--prompt" in r.output
    r = invoke("score", str(image), "--metric", "pickscore,nope")
    assert r.exit_code == 2 and "'nope' is not a metric" in r.output
    r = invoke("score", str(tmp_path / "missing.png"))
    assert r.exit_code == 2 and "does not exist" in r.output
    r = invoke("compare", "a cat", "--metric", "clip")
    assert r.exit_code == 2 and "--score is not given" in r.output
    r = invoke("eval", str(tmp_path / "p.txt"), "--seeds", "3-1")
    assert r.exit_code == 2 and "--seeds" in r.output
    r = invoke("eval")
    assert r.exit_code == 2 and "Give a prompt file, or --paper" in r.output
    r = invoke("eval", str(tmp_path / "p.txt"), "--paper")
    assert r.exit_code == 2 and "not both" in r.output
    r = invoke("eval", "--paper", "--limit", "0")
    assert r.exit_code == 2 and "--limit must be from 1" in r.output
    for columns, twice in (("base,base", "base"), ("base, spo,org/m,spo", "spo"), ("org/m,org/m", "org/m")):
        r = invoke("eval", str(tmp_path / "p.txt"), "--columns", columns)
        assert r.exit_code == 2 and f"--columns names '{twice}' twice" in r.output, r.output
    r = invoke("eval", str(tmp_path / "p.txt"), "--columns", "spo-lora,spo-lora:1")  # one column, spelt twice
    assert r.exit_code == 2 and "--columns names the SPO LoRA at strength 1 twice" in r.output, r.output


@pytest.mark.parametrize("text", ['{"a":' * 100_000, '{"schema": "spo-cli/scores-1"}' + " " * (2 << 20)])
def test_a_hostile_scores_file_is_not_reused_and_never_raises(tmp_path, text):
    # Before: a deeply nested file raised RecursionError (a traceback from `spo score`), and any size was read.
    from spo_cli.scores import store

    image = tmp_path / "a.png"
    store_path(image).write_text(text)
    assert store.read(image) == {}
    store_path(image).unlink()
    os.mkfifo(store_path(image))  # never opened: reading a FIFO waits for a writer forever
    assert store.read(image) == {}


@pytest.mark.parametrize("value", [10**400, True, float("nan"), float("inf"), -float("inf"), "0.5", None])
def test_a_recorded_score_that_is_no_finite_number_is_computed_again(value):
    # Before: 10**400 raised OverflowError, True was reused as the score 1.0, NaN and inf as themselves.
    from spo_cli.scores import store

    record = {"image_sha256": "d", "prompt": "p", "scores": {"m": {"models": {"x": "1"}, "value": value}}}
    assert store.current(record, "m", {"x": "1"}, "d", "p") is None
    record["scores"]["m"]["value"] = 21.5
    assert store.current(record, "m", {"x": "1"}, "d", "p") == 21.5
