"""`--model file.safetensors`: SDXL single-file checkpoints (the original Stability / A1111 layout).

The fast tier checks what a file is from headers written here byte by byte (no torch), the hash and
its cache, the configs found in the cache, and the metadata. The slow tier writes a tiny SDXL in the
original layout (`original_layout`, a port of diffusers' convert_diffusers_to_original_sdxl.py) and
holds spo to bare diffusers' `from_single_file`, pixel for pixel, and to the diffusers pipeline it
was converted from.

The tiny SDXL here has a second text encoder 48 wide (the session's tiny repos have both at 32):
diffusers' single-file loader tells SDXL's two encoders apart by width, as on the real model (768
and 1280); at equal widths it would fill the second with the first's weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import HANG, TINY, run_spo
from spo_cli import presets
from spo_cli.errors import ModelError, UsageError
from spo_cli.outputs import metadata
from spo_cli.request import ModelRequest
from spo_cli.resolve import model as resolve_model_module, single
from spo_cli.resolve.model import resolve_model

BASE = presets.SDXL_BASE
UNET, CLIP_L, OPENCLIP_G, VAE = single.UNET, single.CLIP_L, single.OPENCLIP_G, single.VAE


# ---------------------------------------------------------------------------------------------
# Headers written byte by byte: what a file is, without torch


def write_safetensors(path: Path, shapes: dict[str, list[int]], metadata: dict | None = None,
                      cut: int = 0) -> Path:
    """A valid safetensors file (float32 zeros) with these tensor names and shapes; `cut` bytes short."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        n = 4
        for d in shape:
            n *= d
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    if metadata:
        header["__metadata__"] = metadata
    blob = json.dumps(header).encode()
    data = struct.pack("<Q", len(blob)) + blob + bytes(offset)
    path.write_bytes(data[:len(data) - cut] if cut else data)
    return path


SDXL = {
    UNET + "input_blocks.0.0.weight": [8, 4, 3, 3],
    UNET + "label_emb.0.0.weight": [4, 4],
    CLIP_L + "text_model.embeddings.position_embedding.weight": [77, 4],
    OPENCLIP_G + "positional_embedding": [77, 6],
    OPENCLIP_G + "transformer.resblocks.0.attn.in_proj_weight": [18, 6],
    VAE + "encoder.conv_in.weight": [4, 3, 3, 3],
}
SD15 = {UNET + "input_blocks.0.0.weight": [8, 4, 3, 3],
        "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": [77, 4],
        VAE + "encoder.conv_in.weight": [4, 3, 3, 3]}
KINDS = {
    "Stable Diffusion 1.x": SD15,
    "Stable Diffusion 2.x": {UNET + "input_blocks.0.0.weight": [8, 4, 3, 3],
                             "cond_stage_model.model.positional_embedding": [77, 4]},
    "SDXL refiner": {UNET + "input_blocks.0.0.weight": [8, 4, 3, 3],
                     "conditioner.embedders.0.model.positional_embedding": [77, 4]},
    "SDXL inpainting": {**SDXL, UNET + "input_blocks.0.0.weight": [8, 9, 3, 3]},
    "Playground v2.5": {**SDXL, "edm_mean": [1, 4, 1, 1]},
    "v-prediction SDXL": {**SDXL, "v_pred": [0]},
    "Stable Diffusion 3": {UNET + "joint_blocks.0.x_block.attn.qkv.weight": [6, 2]},
    "Flux": {"double_blocks.0.img_attn.qkv.weight": [6, 2]},
    "LoRA": {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": [4, 8]},
    "missing one of its two text encoders": {k: v for k, v in SDXL.items() if not k.startswith(OPENCLIP_G)},
    "SDXL UNet alone": {UNET + "input_blocks.0.0.weight": [8, 4, 3, 3], UNET + "label_emb.0.0.weight": [4, 4]},
    "diffusers layout": {"down_blocks.0.resnets.0.conv1.weight": [4, 4, 3, 3]},
    "VAE alone": {"encoder.down.0.block.0.conv1.weight": [4, 4, 3, 3], "decoder.up.0.block.0.conv1.weight": [4]},
    "not a Stable Diffusion checkpoint": {"weight": [2]},
}


@pytest.mark.parametrize("what", KINDS)
def test_a_file_that_is_not_sdxl_is_refused_naming_what_it_is(tmp_path, what):
    path = write_safetensors(tmp_path / "model.safetensors", KINDS[what])
    with pytest.raises(ModelError) as e:
        resolve_model_module.precheck(ModelRequest(model=str(path)))
    assert what in e.value.message and "not an SDXL checkpoint" in e.value.message, e.value.message


def test_a_hostile_shape_is_not_echoed():
    shapes = {**SDXL, UNET + "input_blocks.0.0.weight": [8, "x" * 10_000, 3, 3]}
    assert single.kind(set(shapes), shapes) is None  # left to the loader, whose message is cut to 200 characters


def test_an_sdxl_file_passes_the_header_checks(tmp_path):
    path = write_safetensors(tmp_path / "model.safetensors", SDXL, metadata={"modelspec.title": "x"})
    resolve_model_module.precheck(ModelRequest(model=str(path)))
    assert single.kind(set(SDXL), SDXL) is None


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth", ".bin", ".CKPT"])
def test_pickles_are_refused_unopened(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    path.mkdir()  # a folder: opening it as a file would fail differently, so the refusal is by name alone
    with pytest.raises(UsageError) as e:
        resolve_model_module.precheck(ModelRequest(model=str(path)))
    assert "is a pickled checkpoint" in e.value.message and "never loads pickles" in e.value.message


@pytest.mark.parametrize("spec, words", [
    ("https://huggingface.co/org/repo/blob/main/model.safetensors", "not from a URL"),
    ("missing.safetensors", "does not exist"),
    ("a" * 300 + ".safetensors", "cannot be read: File name too long"),
])
def test_a_file_that_cannot_be_read_here(tmp_path, monkeypatch, spec, words):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError) as e:
        resolve_model_module.precheck(ModelRequest(model=spec))
    assert words in e.value.message


@pytest.mark.parametrize("damage, words", [
    (lambda p: write_safetensors(p, SDXL, cut=10), "cut short"),
    (lambda p: p.write_bytes(b"PK\x03\x04 a zip, as torch.save writes"), "not a safetensors file"),
    (lambda p: p.write_bytes(struct.pack("<Q", 1 << 40) + b"{}"), "header length is impossible"),
    (lambda p: p.write_bytes(struct.pack("<Q", 2) + b"[]"), "not a JSON object"),
])
def test_a_damaged_or_disguised_file_is_refused_before_loading(tmp_path, damage, words):
    path = tmp_path / "model.safetensors"
    damage(path)
    with pytest.raises(ModelError) as e:
        resolve_model_module.precheck(ModelRequest(model=str(path)))
    assert words in e.value.message


def test_a_name_too_long_for_the_file_system_is_no_path():
    with pytest.raises(UsageError) as e:
        resolve_model_module.precheck(ModelRequest(model="a" * 300))
    assert "neither a preset, an existing folder" in e.value.message


def test_revision_does_not_apply_to_a_file(tmp_path):
    path = write_safetensors(tmp_path / "model.safetensors", SDXL)
    with pytest.raises(UsageError) as e:
        resolve_model_module.precheck(ModelRequest(model=str(path), revision="main"))
    assert "--revision" in e.value.message


# ---------------------------------------------------------------------------------------------
# Resolution: SDXL base's configs from the cache, the hash, the VAE


def test_resolves_with_sdxl_base_configs_from_the_cache_and_no_weights(hub_cache, tmp_path):
    path = write_safetensors(tmp_path / "my-finetune.safetensors", SDXL)
    r = resolve_model(ModelRequest(model=str(path)), "float32")
    assert r.pipeline.path == path and r.pipeline.source == "local" and r.pipeline.file == path.name
    assert r.pipeline.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert r.config.id == BASE and r.config.commit == hub_cache[BASE]
    assert set(r.config.files) >= {"model_index.json", "unet/config.json", "vae/config.json",
                                   "text_encoder_2/config.json", "scheduler/scheduler_config.json",
                                   "tokenizer/vocab.json", "tokenizer_2/merges.txt", "tokenizer/tokenizer_config.json"}
    assert not [f for f in r.config.files if not f.endswith((".json", ".txt"))]
    assert r.model_index["_class_name"] == "StableDiffusionXLPipeline"
    described = r.describe()["model"]
    assert described["sha256"] == r.pipeline.sha256 and described["file"] == path.name
    assert described["config"] == {"id": BASE, "commit": hub_cache[BASE]}
    assert r.identity()["model"]["sha256"] == r.pipeline.sha256


def test_identity_of_other_models_is_unchanged(hub_cache):
    # Spec hashes of folders made before single files existed must stay the same (resume).
    ident = resolve_model(ModelRequest(model="base"), "float32").identity()["model"]
    assert set(ident) == {"id", "commit", "variant", "file", "subfolder"}


def test_missing_configs_say_what_to_download(hub_cache, tmp_path, monkeypatch):
    from huggingface_hub import constants

    path = write_safetensors(tmp_path / "my-finetune.safetensors", SDXL)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelError) as e:
        resolve_model(ModelRequest(model=str(path)), "float32")
    msg = e.value.paragraph()
    assert BASE in msg and f"spo download {path}" in msg and "spo download base" in msg and "HF_HUB_OFFLINE" in msg


def test_a_file_without_a_vae_needs_one(hub_cache, repos, tmp_path):
    path = write_safetensors(tmp_path / "no-vae.safetensors", {k: v for k, v in SDXL.items() if not k.startswith(VAE)})
    with pytest.raises(ModelError) as e:
        resolve_model(ModelRequest(model=str(path)), "float32")
    assert "holds no VAE" in e.value.message and "--vae" in e.value.paragraph()
    # float16's default VAE (the fp16-fix one) or --vae replaces it: nothing is missing then.
    assert resolve_model(ModelRequest(model=str(path)), "float16").vae.id == presets.FP16_FIX_VAE
    assert resolve_model(ModelRequest(model=str(path), vae=presets.FP16_FIX_VAE), "float32").vae is not None


def test_the_hash_is_cached_by_path_size_and_mtime(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"x" * 3_000_000)
    seen = []

    def progress(name, total):
        from contextlib import contextmanager

        @contextmanager
        def ctx():
            seen.append([name, total, 0])
            yield lambda n: seen[-1].__setitem__(2, seen[-1][2] + n)
        return ctx()

    first = single.sha256(path, progress)
    assert first == hashlib.sha256(b"x" * 3_000_000).hexdigest()
    assert seen == [["model.safetensors", 3_000_000, 3_000_000]]  # progress over every byte
    # Same size and mtime: the cache answers, and the file is not read (its new bytes are not seen).
    stat = path.stat()
    path.write_bytes(b"y" * 3_000_000)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert single.sha256(path, progress) == first and len(seen) == 1
    # Touched: hashed again.
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert single.sha256(path, progress) == hashlib.sha256(b"y" * 3_000_000).hexdigest() and len(seen) == 2
    # Another size with the same mtime: hashed again too.
    path.write_bytes(b"z" * 10)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert single.sha256(path) == hashlib.sha256(b"z" * 10).hexdigest()


def test_a_file_written_to_while_hashed_is_not_cached(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"a" * 3_000_000)

    def progress(name, total):
        from contextlib import contextmanager

        @contextmanager
        def ctx():
            def advance(n):  # a download still writing the file
                with open(path, "ab") as f:
                    f.write(b"b")
                os.utime(path, ns=(0, path.stat().st_mtime_ns + 1_000_000_000))
            yield advance
        return ctx()

    # What was there when hashing began, and not cached: the file is hashed again next time.
    assert single.sha256(path, progress) == hashlib.sha256(b"a" * 3_000_000).hexdigest()
    assert single.sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b'{"/x": {"sha256": "nothex"}}', b"\xff\xfe", b" " * (17 << 20)])
def test_a_damaged_hash_cache_is_ignored_and_rewritten(tmp_path, content):
    cache = single.cache_folder() / single.HASH_CACHE
    cache.parent.mkdir(parents=True, exist_ok=True)
    saved = cache.read_bytes() if cache.exists() else None
    try:
        cache.write_bytes(content)
        path = tmp_path / "model.safetensors"
        path.write_bytes(b"abc")
        assert single.sha256(path) == hashlib.sha256(b"abc").hexdigest()
        assert json.loads(cache.read_text())[str(path.resolve())]["sha256"] == hashlib.sha256(b"abc").hexdigest()
    finally:
        if saved is not None:
            cache.write_bytes(saved)


def test_a_forged_cache_entry_of_the_wrong_shape_is_not_believed(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"abc")
    st = path.stat()
    cache = single.cache_folder() / single.HASH_CACHE
    cache.parent.mkdir(parents=True, exist_ok=True)
    entries = json.loads(cache.read_text()) if cache.exists() else {}
    entries[str(path.resolve())] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": "../../etc/passwd"}
    cache.write_text(json.dumps(entries))
    assert single.sha256(path) == hashlib.sha256(b"abc").hexdigest()


# ---------------------------------------------------------------------------------------------
# Metadata: A1111's Model hash and Model, and replay


def _meta(model: dict) -> dict:
    return {"prompt": "a fox", "negative_prompt": None, "steps": 3, "guidance": 5.0, "seed": 1, "width": 64,
            "height": 64, "scheduler": {"name": "default", "class": "EulerDiscreteScheduler", "a1111": "Euler",
                                        "config": {}},
            "model": model, "lora": None, "vae": {"id": None, "source": "model"}, "versions": {"spo-cli": "0.1"}}


def test_infotext_has_a1111_model_hash_and_name_for_a_single_file():
    sha = hashlib.sha256(b"weights").hexdigest()
    text = metadata.a1111_parameters(_meta({"id": "/models/My Merge v2.safetensors", "source": "local",
                                            "file": "My Merge v2.safetensors", "sha256": sha}))
    # A1111's order (processing.create_infotext): Size, Model hash, Model; its short hash is sha256[0:10].
    assert f"Size: 64x64, Model hash: {sha[:10]}, Model: My Merge v2, Version" in text


def test_infotext_of_a_diffusers_model_has_no_model_hash():
    text = metadata.a1111_parameters(_meta({"id": BASE, "source": "hub", "commit": "0" * 40}))
    assert "Model hash" not in text and "Model: stable-diffusion-xl-base-1.0" in text


def test_a1111_api_info_carries_the_model_hash():
    from spo_cli.request import ImageRequest
    from spo_cli.serve import api

    sha = hashlib.sha256(b"weights").hexdigest()
    job = api.Job((ImageRequest("a fox", 1),), "merge")
    single_file = _meta({"id": "/m/merge.safetensors", "source": "local", "file": "merge.safetensors", "sha256": sha})
    assert api.a1111_info(job, [single_file], [""], "merge")["sd_model_hash"] == sha[:10]
    folder = _meta({"id": BASE, "source": "hub"})
    assert api.a1111_info(job, [folder], [""], "base")["sd_model_hash"] is None


def test_replay_reads_the_file_from_where_it_was(tmp_path):
    sha = hashlib.sha256(b"w").hexdigest()
    meta = {**_meta({"id": str(tmp_path / "m.safetensors"), "source": "local", "file": "m.safetensors",
                     "sha256": sha}), "model_request": {"model": "m.safetensors"}, "dtype": "float32",
            "generator_device": "cpu", "prompt_syntax": "plain"}
    _, request = metadata.recorded_requests(meta, tmp_path / "x.json")
    assert request.model == str(tmp_path / "m.safetensors")  # not the relative path it was given as


def test_replay_says_when_the_file_changed_or_is_gone(tmp_path):
    from spo_cli.cli import loading
    from spo_cli.cli.ui import UI

    path = tmp_path / "m.safetensors"
    path.write_bytes(b"new weights")
    meta = _meta({"id": str(path), "source": "local", "file": path.name,
                  "sha256": hashlib.sha256(b"old weights").hexdigest()})
    [warning] = loading.recorded_file(UI(quiet=True), meta)
    assert "has changed" in warning and hashlib.sha256(b"new weights").hexdigest()[:10] in warning
    meta["model"]["sha256"] = hashlib.sha256(b"new weights").hexdigest()
    assert loading.recorded_file(UI(quiet=True), meta) == []
    path.unlink()
    with pytest.raises(UsageError) as e:
        loading.recorded_file(UI(quiet=True), meta)
    assert "no longer there" in e.value.message and "--model" in e.value.paragraph()


# ---------------------------------------------------------------------------------------------
# The real command line: refusals before torch


PROBE = """
import json, sys
from spo_cli.cli import app
for args in json.loads(sys.argv[1]):
    try:
        app(args)
    except SystemExit as e:
        print("EXIT:" + str(e.code), file=sys.stderr)
    heavy = sorted(m for m in ("torch", "diffusers", "transformers") if m in sys.modules)
    print("HEAVY:" + ",".join(heavy), file=sys.stderr)
"""


@pytest.mark.slow
def test_refusals_come_before_torch_with_their_exit_codes(tmp_path, out):
    sd15 = write_safetensors(tmp_path / "v1-5-pruned-emaonly.safetensors", SD15)
    (tmp_path / "model.ckpt").write_bytes(b"\x80\x04pickle")
    lines = [["generate", "a fox", "--model", str(sd15), "--out", str(out)],
             ["generate", "a fox", "--model", str(tmp_path / "model.ckpt"), "--out", str(out)]]
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(lines)], capture_output=True, text=True,
                          timeout=HANG)
    text = " ".join(proc.stderr.split())
    assert "v1-5-pruned-emaonly.safetensors is a Stable Diffusion 1.x checkpoint, not an SDXL checkpoint" in text
    assert "pickled checkpoint" in text and "Traceback" not in text
    assert [ln for ln in proc.stderr.splitlines() if ln.startswith(("EXIT:", "HEAVY:"))] == \
        ["EXIT:1", "HEAVY:", "EXIT:2", "HEAVY:"]
    assert not out.exists()  # refused before the output folder was made


# ---------------------------------------------------------------------------------------------
# The slow tier: a tiny SDXL in the original layout, loaded and run


# The tests of the tiny file below share it and bare diffusers' image (xdist_group "single-file"):
# one worker builds them once.


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    """A tiny SDXL saved as a diffusers folder (the config repo) and as one original-layout file."""
    from safetensors.torch import save_file

    import original_layout
    from spo_cli import tiny

    root = tmp_path_factory.mktemp("single-file")
    pipe = tiny.build_pipeline(root / "_tok", seed=5, text_2_width=48)
    base = root / "base"
    pipe.save_pretrained(base, safe_serialization=True)
    tiny._replace_tokenizers(base)
    file = root / "tiny-sdxl.safetensors"
    original_layout.save(pipe, file)
    lora = root / "lora.safetensors"
    save_file(tiny.lora_state_dict(pipe.unet, seed=11), lora)
    vae = root / "vae"
    tiny.build_vae(21, force_upcast=False).save_pretrained(vae, safe_serialization=True)
    return SimpleNamespace(root=root, base=base, file=file, lora=lora, vae=vae,
                           sha256=hashlib.sha256(file.read_bytes()).hexdigest())


def _bare(tiny_file, **kwargs):
    """Plain diffusers: from_single_file with the tiny base's configs, as the diffusers docs show."""
    import warnings

    import torch
    from diffusers import StableDiffusionXLPipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = StableDiffusionXLPipeline.from_single_file(str(tiny_file.file), config=str(tiny_file.base),
                                                          torch_dtype=torch.float32, local_files_only=True, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _image(pipe, seed: int = 3):
    import numpy as np
    import torch

    return np.asarray(pipe("a red fox in fresh snow", num_inference_steps=3, width=64, height=64, guidance_scale=5.0,
                           generator=torch.Generator("cpu").manual_seed(seed)).images[0])


def _pixels(path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@pytest.fixture(scope="module")
def bare_image(tiny_file):
    return _image(_bare(tiny_file))


@pytest.mark.slow
@pytest.mark.xdist_group("single-file")
def test_the_conversion_is_exact(tiny_file, bare_image):
    """The test file is faithful: bare diffusers loads from it what the diffusers folder holds."""
    import warnings

    import numpy as np
    import torch
    from diffusers import StableDiffusionXLPipeline

    bare = _bare(tiny_file)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folder = StableDiffusionXLPipeline.from_pretrained(tiny_file.base, torch_dtype=torch.float32)
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        a, b = getattr(folder, part).state_dict(), getattr(bare, part).state_dict()
        assert a.keys() == b.keys(), part
        assert all(torch.equal(a[k], b[k]) for k in a), part
    folder.set_progress_bar_config(disable=True)
    assert np.array_equal(_image(folder), bare_image)


def _resolved(tiny_file, **parts):
    """What resolve gives for the tiny file, with the tiny base's configs (the session's cache holds
    the 32-wide tiny base under SDXL base's id; the end-to-end test below resolves for real)."""
    from spo_cli.resolve.model import ResolvedModel
    from spo_cli.resolve.parts import Resolved

    pipeline = Resolved(str(tiny_file.file), "local", tiny_file.file, file=tiny_file.file.name, sha256=tiny_file.sha256)
    files = sorted(f.relative_to(tiny_file.base).as_posix() for f in tiny_file.base.rglob("*")
                   if f.suffix in (".json", ".txt"))
    config = Resolved(BASE, "hub", tiny_file.base, files=tuple(files))
    request = ModelRequest(model=str(tiny_file.file), lora=str(tiny_file.lora) if "lora" in parts else None,
                           lora_scale=parts.get("scale"))
    index = json.loads((tiny_file.base / "model_index.json").read_text())
    return ResolvedModel(request, None, pipeline, "float32", parts.get("lora"), parts.get("vae"), index, config=config)


@pytest.mark.slow
@pytest.mark.xdist_group("single-file")
def test_engine_with_lora_and_vae_matches_bare_diffusers(tiny_file):
    import numpy as np
    import torch
    from diffusers import AutoencoderKL

    from spo_cli.engine import Engine
    from spo_cli.request import ImageRequest
    from spo_cli.resolve.parts import Resolved

    lora = Resolved(str(tiny_file.lora), "local", tiny_file.lora, file=tiny_file.lora.name)
    vae = Resolved(str(tiny_file.vae), "local", tiny_file.vae, files=("config.json", "diffusion_pytorch_model.safetensors"))
    engine = Engine.load(_resolved(tiny_file, lora=lora, vae=vae, scale=0.7), "cpu")
    assert engine.pipe.watermark is None  # from_single_file's default marks once invisible-watermark is installed
    [made] = engine.run([ImageRequest("a red fox in fresh snow", 3, steps=3, guidance=5.0, width=64, height=64)])

    bare = _bare(tiny_file, vae=AutoencoderKL.from_pretrained(tiny_file.vae, torch_dtype=torch.float32))
    bare.load_lora_weights(str(tiny_file.root), weight_name=tiny_file.lora.name, adapter_name="x")
    bare.set_adapters(["x"], adapter_weights=[0.7])
    assert np.array_equal(np.asarray(made.image), _image(bare))


@pytest.mark.slow
@pytest.mark.xdist_group("single-file")
def test_download_then_generate_and_replay_offline(tiny_file, bare_image, tmp_path, monkeypatch):
    """`spo download FILE` fetches SDXL base's configs and tokenizers and nothing else; then, offline,
    `spo generate --model FILE` makes bare diffusers' image, records the file's hash as A1111 does,
    and `spo replay` makes it again."""
    from huggingface_hub import constants
    from typer.testing import CliRunner

    from hubserver import HubServer
    from spo_cli.cli import app

    env = {"HF_HUB_OFFLINE": "0", "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HOME": str(tmp_path / "hf-home")}
    with HubServer({BASE: tiny_file.base}) as hub:
        r = run_spo("download", str(tiny_file.file), "--dtype", "fp32", "--json", env={**env, "HF_ENDPOINT": hub.url})
    assert r.returncode == 0, r.stderr
    requested = hub.files_requested(BASE)
    assert requested >= {"model_index.json", "unet/config.json", "text_encoder_2/config.json", "tokenizer_2/vocab.json",
                         "scheduler/scheduler_config.json"}
    assert not [f for f in requested if not f.endswith((".json", ".txt"))], requested  # not one weight
    assert hub.fetched_repos() == {BASE}
    # Hashed once, with a line saying so where stderr is not a terminal; cached for the runs below.
    assert f"Computing the SHA-256 of {tiny_file.file.name}" in " ".join(r.stderr.split())
    listed = {row["id"]: row for row in json.loads(r.stdout)["repos"]}
    assert listed[str(tiny_file.file)]["path"] == str(tiny_file.file) and listed[BASE]["commit"] == hub.commits[BASE]

    # Offline now, in this process, from the cache the download filled.
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    out = tmp_path / "out"
    runner = CliRunner()
    result = runner.invoke(app, ["generate", "a red fox in fresh snow", "--model", str(tiny_file.file), "--seed", "3",
                                 *TINY, "--device", "cpu", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert "SHA-256" not in result.stderr  # the hash came from the cache the download filled
    [written] = json.loads(result.stdout)
    import numpy as np

    assert np.array_equal(_pixels(written["image"]), bare_image)
    sidecar = json.loads(Path(written["sidecar"]).read_text())
    assert sidecar["model"]["sha256"] == tiny_file.sha256 and sidecar["model"]["id"] == str(tiny_file.file)
    from PIL import Image

    with Image.open(written["image"]) as im:
        params = im.text["parameters"]
    assert f"Model hash: {tiny_file.sha256[:10]}, Model: tiny-sdxl," in params

    again = tmp_path / "again"
    result = runner.invoke(app, ["replay", written["image"], "--device", "cpu", "--out", str(again), "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    [replayed] = json.loads(result.stdout)
    assert np.array_equal(_pixels(replayed["image"]), bare_image)


@pytest.mark.slow
@pytest.mark.xdist_group("single-file")
def test_compare_bank_builds_a_single_file_column_as_the_engine_does(tiny_file, bare_image):
    """spo compare / eval build each column from shared parts (bank.py): a single file's column makes
    bare diffusers' image too, and a second column of the same file reuses its models."""
    import numpy as np

    from spo_cli.bank import Bank
    from spo_cli.request import ImageRequest

    log = []
    bank = Bank("cpu", "float32", log=log.append)
    request = ImageRequest("a red fox in fresh snow", 3, steps=3, guidance=5.0, width=64, height=64)
    [made] = bank.engine(_resolved(tiny_file)).run([request])
    assert np.array_equal(np.asarray(made.image), bare_image)
    bank.engine(_resolved(tiny_file))
    assert log[-1] == "reuse text_encoder, text_encoder_2, tokenizer, tokenizer_2, vae, unet", log


@pytest.mark.slow
@pytest.mark.xdist_group("single-file")
def test_compare_bank_keys_single_file_models_by_content(tiny_file, tmp_path):
    from dataclasses import replace

    from spo_cli.bank import Bank

    one = _resolved(tiny_file)
    other = replace(one, pipeline=replace(one.pipeline, sha256="f" * 64))
    a, b = Bank("cpu", "float32").parts(one), Bank("cpu", "float32").parts(other)
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        assert a[part][0] is None and a[part][2] != b[part][2], part
    assert a["tokenizer"][2] == b["tokenizer"][2]  # from the same configs


def test_a_hash_cache_that_is_a_fifo_is_ignored_not_waited_on(tmp_path, monkeypatch):
    # Before: open() on the FIFO waited for a writer forever (spo hung before loading anything).
    import threading

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cache = single.cache_folder() / single.HASH_CACHE
    cache.parent.mkdir(parents=True)
    os.mkfifo(cache)
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"abc")
    got = []
    worker = threading.Thread(target=lambda: got.append(single.sha256(path)), daemon=True)
    worker.start()
    worker.join(60)  # a hang guard only: hashing 3 bytes takes no time
    if worker.is_alive():  # release the stuck open() so the thread ends, then fail
        with open(cache, "wb"):
            pass
        pytest.fail("sha256 waited on a FIFO in place of the hash cache")
    assert got == [hashlib.sha256(b"abc").hexdigest()]
