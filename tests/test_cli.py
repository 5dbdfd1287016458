"""The `spo` command as users meet it: options, output streams, messages, exit codes."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import run_spo
from spo_cli import presets
from spo_cli.outputs import files, metadata
from spo_cli.cli import app

TINY = ["--width", "64", "--height", "64", "--steps", "2", "--device", "cpu"]
# For float16 runs (many times slower than float32 on a CPU): the smallest size the tiny models take.
SMALL = ["--width", "16", "--height", "16", "--steps", "1", "--device", "cpu"]


def invoke(*args: str, **kw):
    return CliRunner().invoke(app, list(args), **kw)


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# -- start-up: no torch for help, version, models, argument errors ---------------------------------

# One process runs every command line in turn and says, after each, which heavy modules are loaded:
# modules only accumulate, so the first command line that imports one is the first reported with it.
PROBE = """
import json, sys
from spo_cli.cli import app
for args in json.loads(sys.argv[1]):
    try:
        app(args)
    except SystemExit as e:
        code = e.code
    heavy = sorted(m for m in ("torch", "diffusers", "transformers") if m in sys.modules)
    print("HEAVY:" + json.dumps(args) + ":" + ",".join(heavy), file=sys.stderr)
"""

pytestmark = pytest.mark.slow  # pipelines and subprocesses: not in the fast tier


FAST_PATHS = [
    ["--help"], ["--version"], ["generate", "--help"], ["replay", "--help"], ["models"],
    ["download", "--help"], ["doctor", "--help"], ["generate"], ["generate", "x", "--width", "100"],
    ["generate", "x", "--scheduler", "nope"], ["generate", "x", "--image-format", "gif"],
    ["generate", "x", "--guidance", "nan"], ["generate", "x", "-n", "1000000000"], ["generate", "x", "--steps", "0"],
    ["generate", "x", "--lora-scale", "0.5"], ["generate", "x", "--out", "/etc/hostname"],
    ["batch", "no-such-file.txt"], ["replay", "no-such-file.json"], ["compare", "x", "--seeds", "a"],
    ["generate", "a (fox:1.2.3)"], ["replay", "--infotext", "x\nSteps: 3, Sampler: LCM, Seed: 1"],
    ["inspect", "--help"], ["inspect", "no-such-file.png"],
    ["generate", "x", "--sign", "--sign-key", "no-such.key", "--sign-cert", "no-such.pem"],
]


def test_fast_paths_do_not_import_torch(hub_cache):
    proc = __import__("subprocess").run([sys.executable, "-c", PROBE, json.dumps(FAST_PATHS)], capture_output=True,
                                        text=True, env=os.environ.copy())
    reports = [line for line in proc.stderr.splitlines() if line.startswith("HEAVY:")]
    heavy = [line for line in reports if not line.endswith(":")]
    assert reports == [f"HEAVY:{json.dumps(args)}:" for args in FAST_PATHS], heavy[:1] or proc.stderr


def test_version():
    from spo_cli import __version__

    r = invoke("--version")
    assert r.exit_code == 0 and r.stdout.strip() == f"spo-cli {__version__}"


def test_generate_help_shows_examples_and_contract_options():
    r = invoke("generate", "--help", env={"COLUMNS": "200"})
    assert r.exit_code == 0
    for opt in ("--negative", "--seed", "--num-images", "--batch-size", "--steps", "--guidance", "--width",
                "--height", "--scheduler", "--model", "--lora", "--lora-scale", "--revision", "--vae", "--device",
                "--dtype", "--out", "--image-format", "--json", "--quiet", "--debug", "--generator-device"):
        assert opt in r.stdout, opt
    assert "Examples" in r.stdout and "spo generate" in r.stdout


# -- streams ------------------------------------------------------------------------------------------


def test_json_mode_prints_only_json_on_stdout_and_progress_on_stderr(hub_cache, out):
    r = invoke("generate", "a red fox in fresh snow", "--seed", "42", "-n", "2", *TINY, "--out", str(out), "--json")
    assert r.exit_code == 0, r.output
    written = json.loads(r.stdout)
    assert [w["seed"] for w in written] == [42, 43]
    assert all(Path(w["image"]).exists() and Path(w["sidecar"]).exists() for w in written)
    assert "Loading" in r.stderr and "Traceback" not in r.stderr


def test_human_mode_summary_on_stdout(hub_cache, out):
    r = invoke("generate", "a red fox", "--seed", "1", *TINY, "--out", str(out), env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    [png] = [n for n in files_in(out) if n.endswith(".png")]
    assert str(out / png) in r.stdout and "Wrote 1 image" in r.stderr


def test_quiet_prints_only_the_written_paths(hub_cache, out):
    r = invoke("generate", "a red fox", "--seed", "1", "-n", "2", *TINY, "--out", str(out), "--quiet")
    assert r.exit_code == 0 and r.stderr == ""
    assert r.stdout.splitlines() == sorted(str(p.resolve()) for p in out.glob("*.png"))


# -- options end to end ---------------------------------------------------------------------------------


def test_file_names_sidecar_and_png_chunks(hub_cache, out):
    r = invoke("generate", "A red fox, in fresh snow: golden hour!", "--seed", "42", "--negative", "blurry",
               "--generator-device", "cpu", *TINY, "--out", str(out), "--json", "--quiet")
    assert r.exit_code == 0, r.output
    [w] = json.loads(r.stdout)
    image = Path(w["image"])
    assert image.name.endswith("-a-red-fox-in-fresh-snow-golden-hour-s42.png")
    assert image.name[:15].replace("-", "").isdigit()
    meta = json.loads(Path(w["sidecar"]).read_text())
    assert meta["schema"] == metadata.SCHEMA and meta["file"] == image.name
    assert (meta["seed"], meta["negative_prompt"], meta["generator_device"]) == (42, "blurry", "cpu")
    assert (meta["width"], meta["height"], meta["steps"], meta["guidance"]) == (64, 64, 2, 5.0)
    assert meta["model"]["id"] == presets.SPO_MERGED and meta["model"]["commit"] == hub_cache[presets.SPO_MERGED]
    assert meta["model"]["preset"] == "spo" and meta["lora"] is None
    assert meta["vae"] == {"id": None, "source": "model"}  # float32 on CPU keeps the checkpoint's VAE
    assert meta["dtype"] == "float32" and meta["device"] == "cpu"
    assert set(meta["versions"]) >= {"spo-cli", "diffusers", "torch"}
    assert meta["elapsed_s"] > 0 and meta["created"]
    with Image.open(image) as im:
        assert json.loads(im.text["spo-cli"]) == meta
        params = im.text["parameters"]
    assert params.startswith("A red fox, in fresh snow: golden hour!\nNegative prompt: blurry\nSteps: 2, ")
    assert "Sampler: Euler, CFG scale: 5.0, Seed: 42, Size: 64x64, Model: SPO-SDXL_4k-p_10ep" in params


def test_random_seed_is_recorded(hub_cache, out):
    r = invoke("generate", "a cat", *TINY, "--out", str(out), "--json", "--quiet")
    [w] = json.loads(r.stdout)
    meta = json.loads(Path(w["sidecar"]).read_text())
    assert 0 <= meta["seed"] < 2**32 and Path(w["image"]).stem.endswith(f"-s{meta['seed']}")


@pytest.mark.parametrize("fmt", ["jpg", "webp"])
def test_jpeg_and_webp_carry_parameters_in_exif(hub_cache, out, fmt):
    r = invoke("generate", "a cat", "--seed", "3", *TINY, "--out", str(out), "--image-format", fmt, "--json", "--quiet")
    assert r.exit_code == 0, r.output
    [w] = json.loads(r.stdout)
    assert w["image"].endswith("." + fmt)
    comment = metadata.read_user_comment(Path(w["image"]))
    assert comment.startswith("a cat\nSteps: 2, Sampler: Euler, CFG scale: 5.0, Seed: 3, Size: 64x64")
    # replay finds the sidecar next to it
    r2 = invoke("replay", w["image"], "--out", str(out / "again"), "--json", "--quiet")
    assert r2.exit_code == 0, r2.output


def test_local_folder_model_vae_and_lora(hub_cache, repos, out):
    lora = repos[presets.SPO_LORA] / presets.SPO_LORA_FILE
    r = invoke("generate", "a cat", "--seed", "3", *TINY, "--model", str(repos[presets.SDXL_BASE]),
               "--lora", str(lora), "--lora-scale", "0.5", "--vae", str(repos[presets.FP16_FIX_VAE]),
               "--out", str(out), "--json", "--quiet")
    assert r.exit_code == 0, r.output
    meta = json.loads(Path(json.loads(r.stdout)[0]["sidecar"]).read_text())
    assert meta["model"]["source"] == "local" and meta["model"]["commit"] is None
    assert meta["lora"]["id"] == str(lora) and meta["lora"]["scale"] == 0.5
    assert meta["vae"]["id"] == str(repos[presets.FP16_FIX_VAE])


def test_vae_model_keeps_checkpoint_vae_in_fp16(hub_cache, out):
    r = invoke("generate", "a cat", "--seed", "3", *SMALL, "--dtype", "fp16", "--vae", "model",
               "--out", str(out), "--json", "--quiet")
    assert r.exit_code == 0, r.output
    meta = json.loads(Path(json.loads(r.stdout)[0]["sidecar"]).read_text())
    assert meta["vae"]["source"] == "model" and meta["dtype"] == "float16"


def test_revision_pins_a_commit(hub_cache, out):
    commit = hub_cache[presets.SPO_MERGED]
    r = invoke("generate", "a cat", "--seed", "3", *TINY, "--revision", commit, "--out", str(out), "--json", "--quiet")
    assert r.exit_code == 0, r.output
    meta = json.loads(Path(json.loads(r.stdout)[0]["sidecar"]).read_text())
    assert meta["model"]["commit"] == commit and meta["model"]["revision"] == commit


# -- errors: one paragraph, exit code, no traceback, nothing half-written -----------------------------


@pytest.mark.parametrize("args, code, words", [
    (["--model", "nonsense"], 2, "neither a preset"),
    (["--model", "./no/such/folder"], 2, "does not exist"),
    (["--scheduler", "fancy"], 2, "dpm++2m-karras"),
    (["--width", "100"], 2, "multiple of 8"),
    (["--height", "0"], 2, "multiple of 8"),
    (["--seed", "-2"], 2, "--seed must be from 0 to 4,294,967,295, not -2"),
    (["--image-format", "gif"], 2, "png, jpg, webp"),
    (["--batch-size", "0"], 2, "--batch-size must be from 1 to 64, not 0"),
    (["--steps", "0"], 2, "--steps must be from 1 to 1,000, not 0"),
    (["--lora", "weights.bin"], 2, "is not .safetensors; spo-cli never loads pickled weights"),
    (["--lora", "missing.safetensors"], 2, "missing.safetensors does not exist"),
    (["--model", "someorg/not-cached"], 1, "spo download someorg/not-cached"),
    (["--revision", "v9.9"], 1, "spo download spo --revision v9.9"),
    (["--dtype", "fp8"], 2, "--dtype cannot be 'fp8'"),
])
def test_bad_input_gives_a_clear_message(hub_cache, out, args, code, words):
    r = invoke("generate", "a cat", *TINY[:6], *args, "--out", str(out))
    assert r.exit_code == code, r.output
    assert words in " ".join(r.stderr.split()), r.stderr
    assert "Traceback" not in r.output
    assert files_in(out) == []


@pytest.mark.parametrize("args, words", [
    (["--guidance", "nan"], "--guidance must be a finite number, not nan"),
    (["--guidance", "inf"], "--guidance must be a finite number, not inf"),
    (["-n", "1000000000"], "--num-images must be from 1 to 10,000, not 1,000,000,000"),
    (["--width", "8192"], "--width is 8192 pixels; the limit is 4096"),
    (["--width", "2048", "--height", "2560"], "2048×2560 is 5.2 megapixels; the limit is 4.2"),
    (["--steps", "5000"], "--steps must be from 1 to 1,000, not 5,000"),
    (["--lora-scale", "0.5"], "--lora-scale 0.5 has nothing to act on: the model 'spo' has no LoRA"),
    (["--lora-scale", "nan", "--model", "spo-lora"], "--lora-scale must be a finite number"),
    (["--generator-device", "gpu"], "--generator-device cannot be 'gpu'"),
])
def test_limits_and_nonsense_fail_before_anything_loads(out, args, words):
    r = invoke("generate", "a cat", *args, "--out", str(out))
    assert r.exit_code == 2, r.output
    assert words in " ".join(r.stderr.split())
    assert "Loading" not in r.stderr and not out.exists()


def test_a_huge_prompt_is_refused_by_its_size_not_echoed(out):
    r = invoke("generate", "fox " * 500_000, "--out", str(out))
    assert r.exit_code == 2 and "PROMPT is 2,000,000 characters long; the limit is 10,000" in " ".join(r.stderr.split())
    assert "fox fox" not in r.output


def test_no_size_limit_lifts_the_limit(hub_cache, out):
    r = invoke("generate", "a cat", *TINY[:4], "--width", "4104", "--height", "8", "--steps", "1", "--seed", "1",
               "--no-size-limit", "--out", str(out), "--json", "--quiet")
    assert r.exit_code == 0, r.output
    with Image.open(json.loads(r.stdout)[0]["image"]) as im:
        assert im.size == (4104, 8)


@pytest.mark.parametrize("where", ["file", "under-file"])
def test_out_that_is_a_file(tmp_path, where):
    f = tmp_path / "taken"
    f.write_text("a user's file")
    out = f if where == "file" else f / "sub"
    r = invoke("generate", "a cat", "--out", str(out))
    assert r.exit_code == 2 and f"{f} is a file, not a folder" in " ".join(r.stderr.split())
    assert f.read_text() == "a user's file"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA (it checks the refusal)")
def test_cuda_on_a_machine_without_it(hub_cache, tmp_path, out):
    r = invoke("generate", "a cat", *TINY[:6], "--generator-device", "cuda", "--out", str(out))
    msg = " ".join(r.stderr.split())
    assert r.exit_code == 2 and "--generator-device cuda was asked for" in msg
    assert "--generator-device cpu draws the same noise on any machine" in msg and "Loading" not in msg
    # the same from a sidecar made on a GPU
    r = invoke("generate", "a cat", *TINY, "--seed", "3", "--out", str(out), "--json", "--quiet")
    sidecar = Path(json.loads(r.stdout)[0]["sidecar"])
    meta = json.loads(sidecar.read_text())
    meta["generator_device"] = "cuda"
    sidecar.write_text(json.dumps(meta))
    r = invoke("replay", str(sidecar), "--out", str(out))
    assert r.exit_code == 2 and "--generator-device cpu draws the same noise" in " ".join(r.stderr.split())
    assert invoke("replay", str(sidecar), "--generator-device", "cpu", "--out", str(out), "-q").exit_code == 0
    r = invoke("generate", "a cat", *TINY[:6], "--device", "cuda", "--out", str(out))
    assert r.exit_code == 2 and "--device cuda was asked for, but this PyTorch" in " ".join(r.stderr.split())


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA (it checks the refusal)")
def test_fp16_on_the_cpu_warns(hub_cache, out):
    r = invoke("generate", "a cat", *SMALL, "--dtype", "fp16", "--out", str(out))
    assert r.exit_code == 0, r.output
    assert "--dtype float16 on the CPU is many times slower" in " ".join(r.stderr.split())


def test_empty_prompt(hub_cache, out):
    r = invoke("generate", "  ", "--out", str(out))
    assert r.exit_code == 2 and "PROMPT is empty" in r.stderr


def test_missing_prompt_is_a_usage_error():
    r = invoke("generate")
    assert r.exit_code == 2


def test_offline_without_cache_names_repo_and_download_command(tmp_path, out):
    proc = run_spo("generate", "a cat", *TINY, "--out", str(out), env={"HF_HUB_CACHE": str(tmp_path / "empty")})
    assert proc.returncode == 1
    msg = " ".join(proc.stderr.split())
    assert presets.SPO_MERGED in msg and "spo download spo" in msg and "HF_HUB_OFFLINE" in msg
    assert "Traceback" not in proc.stderr and files_in(out) == []


def test_debug_shows_the_traceback(out):
    # In this process: --debug is read per command, not at start-up. The model is in no cache.
    r = invoke("generate", "a cat", *TINY, "--model", "someorg/not-cached", "--out", str(out), "--debug")
    assert r.exit_code == 1 and "Traceback" in r.stderr and "spo download someorg/not-cached" in r.stderr


def test_cuda_out_of_memory_message(hub_cache, out, monkeypatch):
    from diffusers import UNet2DConditionModel

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(UNet2DConditionModel, "forward", oom)
    r = invoke("generate", "a cat", *TINY, "--out", str(out))
    assert r.exit_code == 1
    msg = " ".join(r.stderr.split())
    assert "ran out of memory" in msg and "--offload model" in msg and "Traceback" not in r.output
    assert files_in(out) == []
    r = invoke("generate", "a cat", *TINY, "-n", "2", "--batch-size", "2", "--out", str(out))
    msg = " ".join(r.stderr.split())
    assert r.exit_code == 1 and "smaller --batch-size (this call had 2 images)" in msg


def test_nan_output_is_reported_not_written(hub_cache, repos, tmp_path, out):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "nan-model"
    shutil.copytree(repos[presets.SPO_MERGED], broken)
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state["conv_out.weight"] = torch.full_like(state["conv_out.weight"], float("nan"))
    save_file(state, weights)
    r = invoke("generate", "a cat", *SMALL, "--model", str(broken), "--dtype", "fp16", "--out", str(out))
    assert r.exit_code == 1
    msg = " ".join(r.stderr.split())
    assert "NaN" in msg and "--dtype fp32" in msg and "fp16-fix VAE" in msg
    assert files_in(out) == []
    r = invoke("generate", "a cat", *SMALL, "--model", str(broken), "--out", str(out))
    assert r.exit_code == 1 and "NaN" in r.stderr and "weights" in r.stderr and "fp16-fix" not in r.stderr


def test_disk_full_leaves_nothing_half_written(hub_cache, out, monkeypatch):
    import errno

    def full(*a):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "link", full)
    r = invoke("generate", "a cat", *TINY, "--out", str(out))
    assert r.exit_code == 1 and "disk is full" in r.stderr
    assert files_in(out) == []  # no image, no sidecar, no temporary file


def test_long_prompt_warns_with_the_dropped_words_only_when_read_as_plain_text(hub_cache, out):
    prompt = " ".join(["a tiny red fox"] * 30) + " zebra unicorn"
    negative = " ".join(["blurry dark sky"] * 30) + " ugly hands"
    r = invoke("generate", prompt, "--negative", negative, *TINY, "--out", str(out), "--prompt-syntax", "plain",
               env={"COLUMNS": "300"})
    assert r.exit_code == 0, r.output
    msg = " ".join(r.stderr.split())
    assert "The prompt is longer than the text encoders' 77 tokens" in msg and msg.count("zebra unicorn") == 1
    assert "The negative prompt is longer than the text encoders' 77 tokens" in msg and msg.count("ugly hands") == 1
    assert "--prompt-syntax a1111 reads all of it" in msg
    # By default (auto), nothing is dropped; --debug says how many windows the prompt took.
    r = invoke("generate", prompt, "--negative", negative, *TINY, "--out", str(out), "--debug",
               env={"COLUMNS": "300"})
    assert r.exit_code == 0, r.output
    msg = " ".join(r.stderr.split())
    assert "77 tokens" not in msg
    assert re.search(r"A1111 prompt syntax, [2-9] window\(s\) of 75 tokens: a tiny red fox", msg), msg


def test_replay_of_a_foreign_file_is_a_usage_error(tmp_path):
    p = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(p)
    r = invoke("replay", str(p))
    assert r.exit_code == 2 and "no spo-cli metadata" in r.stderr


# -- models, doctor -------------------------------------------------------------------------------------


def test_models_lists_presets_and_cache_state(hub_cache):
    r = invoke("models", "--json")
    assert r.exit_code == 0, r.output
    rows = {m["name"]: m for m in json.loads(r.stdout)}
    assert set(rows) == set(presets.PRESETS)
    assert rows["spo"]["repo"] == presets.SPO_MERGED and rows["spo"]["default"]
    assert rows["spo-lora"]["lora_file"] == presets.SPO_LORA_FILE
    assert all(m["cache"]["float16"]["cached"] and m["cache"]["float32"]["cached"] for m in rows.values())
    human = invoke("models", env={"COLUMNS": "200"})
    assert "spo-lora" in human.stdout and presets.SPO_LORA in human.stdout


def test_models_in_an_empty_cache(tmp_path):
    proc = run_spo("models", "--json", env={"HF_HUB_CACHE": str(tmp_path)})
    assert proc.returncode == 0
    assert not any(m["cache"]["float16"]["cached"] for m in json.loads(proc.stdout))


def test_doctor_runs_a_smoke_generation_and_never_shows_the_token(hub_cache):
    token = {"HF_TOKEN": "hf_doctor_secret_token"}  # huggingface_hub reads it at each call
    r = invoke("doctor", "--device", "cpu", "--json", env=token)
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["smoke_test"]["ok"] and report["device"] == "cpu"
    assert report["cache"]["token"] is True and report["hub"]["status"].startswith("offline by setting")
    assert report["cache"]["presets"]["spo"]["float16"]["cached"]
    human = invoke("doctor", "--device", "cpu", env={**token, "COLUMNS": "200"})
    assert human.exit_code == 0 and "smoke test" in human.stdout and "Next step" in human.stderr
    assert "hf_doctor_secret_token" not in r.stdout + r.stderr + human.stdout + human.stderr
    # a bad SPO_SDPA_BACKENDS is one of the problems it reports (it refused with exit 2 before), not its own refusal
    r = invoke("doctor", "--device", "cpu", "--json", env={"SPO_SDPA_BACKENDS": "flash;math"})
    report = json.loads(r.stdout)
    assert r.exit_code == 1 and report["smoke_test"]["ok"], r.output
    assert [p for p in report["problems"] if p.startswith("SPO_SDPA_BACKENDS='flash;math'")]


def test_ctrl_c_exits_130_and_writes_nothing(hub_cache, out, monkeypatch):
    from diffusers import UNet2DConditionModel

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(UNet2DConditionModel, "forward", interrupted)
    r = invoke("generate", "a cat", *TINY, "--out", str(out))
    assert r.exit_code == 130 and "Interrupted" in r.stderr
    assert files_in(out) == []


@pytest.mark.parametrize("args,new_name,words", [
    (["generate", "a cat", "--format", "gif"], "--image-format", "png, jpg, webp"),
    (["batch", "prompts.txt", "--format", "xml"], "--prompt-format", "xml"),
    (["compare", "a cat", "--format", "xml"], "--prompt-format", "xml"),
])
def test_the_old_format_spelling_still_works_and_says_its_new_name(out, args, new_name, words):
    # The value given to --format is the one checked (and refused here), after a rename warning.
    r = invoke(*args, "--out", str(out))
    assert r.exit_code == 2, r.output
    text = " ".join(r.stderr.split())
    assert f"--format is now {new_name}" in text and words in text, text
    assert "Traceback" not in r.output


def test_help_shows_the_extras_names_rich_would_take_for_markup():
    # rich reads an unescaped "[fp8]" in a help text as a style tag and drops it: "Needs spo-cli." told
    # nobody what to install.
    for args, extras in ((["generate", "--help"], ("fp8", "watermark", "c2pa")), (["serve", "--help"], ("fp8", "watermark")),
                         (["inspect", "--help"], ("c2pa", "watermark"))):
        r = invoke(*args, env={"COLUMNS": "200"})
        assert r.exit_code == 0
        text = re.sub(r"[\s│]+", " ", r.stdout)
        for extra in extras:
            assert f"spo-cli[{extra}]" in text, (args, extra)
        assert not re.search(r"spo-cli[.)]", text), args
