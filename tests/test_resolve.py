"""Unit tests for spo_cli.resolve (file selection, integrity, each part, whole requests), against tiny
repos under the real ids in an offline HF cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from spo_cli import presets, resolve
from spo_cli.errors import ModelError, UsageError
from spo_cli.request import ModelRequest
from spo_cli.resolve import files

BASE, MERGED, LORA, VAE = presets.SDXL_BASE, presets.SPO_MERGED, presets.SPO_LORA, presets.FP16_FIX_VAE
COMPONENTS = ("text_encoder", "text_encoder_2", "unet", "vae")
NEVER = (".bin", ".onnx", ".msgpack", ".ckpt", ".pt", ".pth", ".pb")


def check_files(r: resolve.Resolved) -> None:
    """Every selected file exists, is something diffusers reads, and is never pickles/ONNX/Flax/…"""
    assert r.files
    for f in r.files:
        assert (r.path / f).is_file(), f
        assert not f.endswith(NEVER), f
        assert "openvino" not in f and "flax" not in f, f
        assert f == "model_index.json" or f.count("/") == 1, f  # no root single-file checkpoint


def weights(r: resolve.Resolved) -> list[str]:
    return sorted(f for f in r.files if f.endswith(".safetensors"))


# ---------------------------------------------------------------------------------------------
# Presets from the Hub cache


def test_spo_float16(hub_cache):
    m = resolve.resolve_model(ModelRequest(), "float16")
    assert m.preset == "spo" and m.dtype == "float16"
    p = m.pipeline
    assert (p.id, p.source, p.revision, p.commit, p.variant) == (MERGED, "hub", "main", hub_cache[MERGED], None)
    assert p.path.name == hub_cache[MERGED]
    check_files(p)
    assert weights(p) == [
        "text_encoder/model.safetensors", "text_encoder_2/model.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
    ]
    for folder in ("scheduler", "tokenizer", "tokenizer_2", *COMPONENTS):
        if folder != "vae":
            assert any(f.startswith(folder + "/") for f in p.files), folder
    # the fp16-fix VAE replaces the checkpoint's: its vae/ is neither fetched nor loaded
    assert not any(f.startswith("vae/") for f in p.files)
    assert "model_index.json" in p.files
    assert {"tokenizer/vocab.json", "tokenizer/merges.txt", "tokenizer_2/vocab.json"} <= set(p.files)
    assert m.lora is None
    # The fp16-fix VAE, as the authors' script uses in float16.
    v = m.vae
    assert (v.id, v.source, v.commit, v.variant, v.subfolder) == (VAE, "hub", hub_cache[VAE], None, None)
    assert v.files == ("config.json", "diffusion_pytorch_model.safetensors")  # not .bin, not sdxl_vae.safetensors
    check_files_vae(v)
    assert m.parts() == [p, v]
    assert m.nbytes() == p.nbytes() + v.nbytes() > 0


def check_files_vae(v: resolve.Resolved) -> None:
    for f in v.files:
        assert (v.path / f).is_file()


def test_spo_float16_describe(hub_cache):
    m = resolve.resolve_model(ModelRequest(dtype="fp16", device="cuda"), "float16")
    d = m.describe()
    assert d["model"] == {"id": MERGED, "source": "hub", "revision": "main", "commit": hub_cache[MERGED],
                          "preset": "spo"}
    assert d["lora"] is None
    assert d["vae"] == {"id": VAE, "source": "hub", "revision": "main", "commit": hub_cache[VAE]}
    assert d["model_request"]["model"] == "spo" and d["model_request"]["dtype"] == "fp16"
    assert "device" not in d["model_request"]


def test_spo_lora_float16(hub_cache, repos):
    m = resolve.resolve_model(ModelRequest(model="spo-lora", lora_scale=0.7), "float16")
    assert m.preset == "spo-lora"
    p = m.pipeline
    assert (p.id, p.source, p.commit, p.variant) == (BASE, "hub", hub_cache[BASE], "fp16")
    check_files(p)
    assert weights(p) == [
        "text_encoder/model.fp16.safetensors", "text_encoder_2/model.fp16.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
    ]
    assert all(resolve.variant_of(Path(f).name) == "fp16" for f in weights(p))
    others = [f for f in p.files if not f.endswith(".safetensors")]
    assert all(f.endswith((".json", ".txt")) for f in others), others
    assert "sd_xl_base_1.0.safetensors" not in p.files
    assert not any(f.startswith("vae_decoder/") for f in p.files)
    # The SPO LoRA file, from its own repo and commit.
    lo = m.lora
    assert (lo.id, lo.source, lo.file, lo.commit, lo.revision) == (LORA, "hub", presets.SPO_LORA_FILE,
                                                                   hub_cache[LORA], "main")
    assert lo.path.name == presets.SPO_LORA_FILE and lo.path.is_file()
    assert lo.path.read_bytes() == (repos[LORA] / presets.SPO_LORA_FILE).read_bytes()
    assert m.vae.id == VAE
    d = m.describe()
    assert d["lora"] == {"id": LORA, "source": "hub", "revision": "main", "commit": hub_cache[LORA],
                         "file": presets.SPO_LORA_FILE, "scale": 0.7}
    assert d["model"]["variant"] == "fp16" and d["model"]["preset"] == "spo-lora"


@pytest.mark.parametrize("preset", ["spo", "spo-lora", "base"])
def test_float32_takes_plain_weights_and_the_models_own_vae(hub_cache, preset):
    m = resolve.resolve_model(ModelRequest(model=preset), "float32")
    p = m.pipeline
    assert p.variant is None
    check_files(p)
    ws = weights(p)
    assert len(ws) == 4
    assert all(resolve.variant_of(Path(f).name) is None for f in ws), ws
    assert m.vae is None
    assert m.describe()["vae"] == {"id": None, "source": "model"}
    assert (m.lora is not None) == (preset == "spo-lora")


def test_bfloat16_takes_plain_weights_and_the_models_own_vae(hub_cache):
    m = resolve.resolve_model(ModelRequest(model="base"), "bfloat16")
    assert m.pipeline.variant is None and m.vae is None
    assert all(".fp16." not in f for f in m.pipeline.files)


def test_base_preset_has_no_lora(hub_cache):
    m = resolve.resolve_model(ModelRequest(model="base"), "float16")
    assert m.preset == "base"
    assert m.lora is None and m.describe()["lora"] is None
    assert (m.pipeline.id, m.pipeline.variant) == (BASE, "fp16")
    assert m.vae.id == VAE


def test_vae_model_keeps_the_checkpoints_vae_in_float16(hub_cache):
    m = resolve.resolve_model(ModelRequest(model="base", vae="model"), "float16")
    assert m.vae is None
    assert m.describe()["vae"] == {"id": None, "source": "model"}
    assert m.pipeline.variant == "fp16"
    assert "vae/diffusion_pytorch_model.fp16.safetensors" in m.pipeline.files
    assert "vae/config.json" in m.pipeline.files
    assert m.parts() == [m.pipeline]


def test_hub_id_not_a_preset(hub_cache):
    m = resolve.resolve_model(ModelRequest(model=BASE), "float16")
    assert m.preset is None
    assert (m.pipeline.id, m.pipeline.source, m.pipeline.variant) == (BASE, "hub", "fp16")
    assert m.describe()["model"]["preset"] is None
    assert m.lora is None


def test_revision_pinned_to_a_commit(hub_cache):
    commit = hub_cache[MERGED]
    m = resolve.resolve_model(ModelRequest(revision=commit), "float16")
    assert (m.pipeline.revision, m.pipeline.commit) == (commit, commit)


def test_unknown_revision_offline(hub_cache):
    with pytest.raises(ModelError) as e:
        resolve.resolve_model(ModelRequest(revision="no-such-branch"), "float16")
    assert MERGED in e.value.message
    assert "spo download spo --revision no-such-branch" in e.value.paragraph()


def test_explicit_hub_lora_file(hub_cache):
    m = resolve.resolve_model(ModelRequest(model="spo", lora=LORA, lora_file=presets.SPO_LORA_FILE), "float16")
    assert (m.lora.id, m.lora.file, m.lora.commit) == (LORA, presets.SPO_LORA_FILE, hub_cache[LORA])


def test_hub_lora_without_file_offline_asks_for_it(hub_cache):
    with pytest.raises(UsageError) as e:
        resolve.resolve_model(ModelRequest(model="spo", lora="someorg/other-lora"), "float16")
    assert "--lora-file" in e.value.message
    # The SPO LoRA's file is known (a preset names it): under any model it needs no --lora-file.
    assert resolve.resolve_model(ModelRequest(model="spo", lora=LORA), "float16").lora.file == presets.SPO_LORA_FILE


def test_hub_lora_bin_file_is_refused(hub_cache):
    with pytest.raises(UsageError) as e:
        resolve.resolve_model(ModelRequest(model="spo", lora=LORA, lora_file="pytorch_lora_weights.bin"), "float16")
    assert "safetensors" in e.value.message


# ---------------------------------------------------------------------------------------------
# Local folders and files


def test_local_folder(hub_cache, repos):
    m = resolve.resolve_model(ModelRequest(model=str(repos[BASE]), vae="model"), "float16")
    p = m.pipeline
    assert m.preset is None
    assert (p.source, p.id, p.path, p.commit, p.revision) == ("local", str(repos[BASE].resolve()),
                                                             repos[BASE].resolve(), None, None)
    assert p.variant == "fp16"
    check_files(p)
    assert len(weights(p)) == 4 and all(".fp16." in f for f in weights(p))
    assert m.describe()["model"] == {"id": str(repos[BASE].resolve()), "source": "local", "revision": None,
                                     "commit": None, "variant": "fp16", "preset": None}


def test_local_folder_float32(repos):
    m = resolve.resolve_model(ModelRequest(model=str(repos[MERGED])), "float32")
    assert m.pipeline.source == "local" and m.pipeline.variant is None and m.vae is None
    check_files(m.pipeline)


def test_local_folder_relative_path(repos, monkeypatch):
    monkeypatch.chdir(repos[BASE].parent)
    m = resolve.resolve_model(ModelRequest(model="./" + repos[MERGED].name), "float32")
    assert m.pipeline.source == "local" and m.pipeline.path == repos[MERGED].resolve()


def test_local_lora(hub_cache, repos):
    lora_path = repos[LORA] / presets.SPO_LORA_FILE
    m = resolve.resolve_model(ModelRequest(model="spo", lora=str(lora_path), lora_scale=0.5), "float16")
    lo = m.lora
    assert (lo.source, lo.id, lo.path, lo.file, lo.commit) == ("local", str(lora_path.resolve()),
                                                              lora_path.resolve(), presets.SPO_LORA_FILE, None)
    d = m.describe()["lora"]
    assert d["source"] == "local" and d["file"] == presets.SPO_LORA_FILE and d["scale"] == 0.5
    assert m.nbytes() == m.pipeline.nbytes() + lora_path.stat().st_size + m.vae.nbytes()


def test_local_lora_replaces_the_presets(hub_cache, repos):
    lora_path = repos[LORA] / presets.SPO_LORA_FILE
    m = resolve.resolve_model(ModelRequest(model="spo-lora", lora=str(lora_path)), "float16")
    assert m.lora.source == "local" and m.pipeline.id == BASE


def test_local_vae_folder(hub_cache, repos):
    m = resolve.resolve_model(ModelRequest(model="spo", vae=str(repos[VAE])), "float16")
    v = m.vae
    assert (v.source, v.path, v.subfolder) == ("local", repos[VAE].resolve(), None)
    assert v.files == ("config.json", "diffusion_pytorch_model.safetensors")


def test_local_vae_from_a_pipeline_folder(hub_cache, repos):
    m = resolve.resolve_model(ModelRequest(model="spo", vae=str(repos[BASE])), "float16")
    v = m.vae
    assert (v.source, v.subfolder, v.variant) == ("local", "vae", "fp16")
    assert v.files == ("vae/config.json", "vae/diffusion_pytorch_model.fp16.safetensors")
    assert m.describe()["vae"]["subfolder"] == "vae"


def test_hub_vae_from_a_pipeline_repos_subfolder_offline(hub_cache):
    m = resolve.resolve_model(ModelRequest(model="spo", vae=BASE), "float16")
    assert (m.vae.id, m.vae.subfolder, m.vae.commit) == (BASE, "vae", hub_cache[BASE])


# ---------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("name", ["nonsense", "spo_lora", "SPO", "bad name!"])
def test_unknown_name_lists_presets(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # so that no folder of that name exists
    with pytest.raises(UsageError) as e:
        resolve.resolve_model(ModelRequest(model=name), "float16")
    assert e.value.exit_code == 2
    assert f"'{name}'" in e.value.message
    for preset in presets.PRESETS:
        assert preset in e.value.hint


def test_missing_local_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError) as e:
        resolve.resolve_model(ModelRequest(model="./does-not-exist"), "float16")
    assert "does not exist" in e.value.message
    assert str(tmp_path / "does-not-exist") in e.value.message


def test_repo_not_in_cache(hub_cache):
    with pytest.raises(ModelError) as e:
        resolve.resolve_model(ModelRequest(model="someone/not-cached-xl"), "float16", local_only=True)
    para = e.value.paragraph()
    assert e.value.exit_code == 1
    assert e.value.message == "'someone/not-cached-xl' is not available offline."
    assert "HF_HUB_OFFLINE is set, so the Hub is not asked" in para
    assert "`spo download someone/not-cached-xl`" in para


def test_vae_repo_not_in_cache(hub_cache):
    with pytest.raises(ModelError) as e:
        resolve.resolve_model(ModelRequest(model="spo", vae="someone/missing-vae"), "float16", local_only=True)
    assert "someone/missing-vae" in e.value.paragraph()


@pytest.fixture
def bin_only_unet(repos, tmp_path) -> Path:
    folder = tmp_path / "pickled-sdxl"
    shutil.copytree(repos[MERGED], folder)
    for f in (folder / "unet").glob("*.safetensors"):
        f.unlink()
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
    return folder


def test_local_folder_with_only_pickled_unet(bin_only_unet):
    with pytest.raises(ModelError) as e:
        resolve.resolve_model(ModelRequest(model=str(bin_only_unet)), "float32")
    para = e.value.paragraph()
    assert "safetensors" in para and "unet/" in para
    assert "diffusion_pytorch_model.bin" in para


def test_local_lora_bin_is_refused(hub_cache, tmp_path):
    lora = tmp_path / "pytorch_lora_weights.bin"
    lora.write_bytes(b"pickle")
    with pytest.raises(UsageError) as e:
        resolve.resolve_model(ModelRequest(model="spo", lora=str(lora)), "float16")
    assert "safetensors" in e.value.message and e.value.exit_code == 2


def test_missing_local_lora(hub_cache, tmp_path):
    with pytest.raises(UsageError) as e:
        resolve.resolve_model(ModelRequest(model="spo", lora=str(tmp_path / "nope.safetensors")), "float16")
    assert "does not exist" in e.value.message


def test_folder_without_model_index(repos):
    with pytest.raises(UsageError) as e:
        resolve.resolve_model(ModelRequest(model=str(repos[VAE])), "float32")
    assert "model_index.json" in e.value.message


def test_single_file_checkpoint_as_model(repos):
    # Read as a single-file checkpoint (tests/test_single_file.py), and this one is not a safetensors file.
    with pytest.raises(ModelError) as e:
        resolve.resolve_model(ModelRequest(model=str(repos[BASE] / "sd_xl_base_1.0.safetensors")), "float32")
    assert "not a usable single-file checkpoint" in e.value.message


def test_a_folder_file_as_model(repos):
    with pytest.raises(UsageError) as e:
        resolve.resolve_model(ModelRequest(model=str(repos[BASE] / "model_index.json")), "float32")
    assert "takes the folder" in e.value.message
    with pytest.raises(UsageError) as e:
        resolve.resolve_model(ModelRequest(model=str(repos[BASE] / "unet" / "openvino_model.xml")), "float32")
    assert "not a .safetensors checkpoint" in e.value.message


def test_local_vae_folder_without_a_vae(hub_cache, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError):
        resolve.resolve_model(ModelRequest(model="spo", vae=str(tmp_path / "empty")), "float16")


# ---------------------------------------------------------------------------------------------
# variant_of / select_pipeline_files / select_vae_files, on synthetic listings


@pytest.mark.parametrize(
    "name,variant",
    [
        ("diffusion_pytorch_model.safetensors", None),
        ("model.safetensors", None),
        ("diffusion_pytorch_model.fp16.safetensors", "fp16"),
        ("model.fp16.safetensors", "fp16"),
        ("model.bf16.safetensors", "bf16"),
        ("diffusion_pytorch_model-00001-of-00002.safetensors", None),
        ("diffusion_pytorch_model.fp16-00001-of-00002.safetensors", "fp16"),
        ("model.fp16-00002-of-00002.safetensors", "fp16"),
        ("diffusion_pytorch_model.safetensors.index.json", None),
        ("diffusion_pytorch_model.safetensors.index.fp16.json", "fp16"),
        ("model.safetensors.index.json", None),
        ("model.safetensors.index.fp16.json", "fp16"),
        ("config.json", None),
        ("diffusion_pytorch_model.bin", None),
        ("diffusion_pytorch_model.fp16.bin", None),
    ],
)
def test_variant_of(name, variant):
    assert resolve.variant_of(name) == variant


SDXL_INDEX = {
    "_class_name": "StableDiffusionXLPipeline",
    "_diffusers_version": "0.35.0",
    "feature_extractor": [None, None],
    "image_encoder": [None, None],
    "force_zeros_for_empty_prompt": True,
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}

CONFIGS = [
    "model_index.json", "scheduler/scheduler_config.json",
    "text_encoder/config.json", "text_encoder_2/config.json", "unet/config.json", "vae/config.json",
    "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json", "tokenizer_2/merges.txt", "tokenizer_2/special_tokens_map.json",
    "tokenizer_2/tokenizer_config.json", "tokenizer_2/vocab.json",
]
PLAIN = ["text_encoder/model.safetensors", "text_encoder_2/model.safetensors",
         "unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors"]
FP16 = ["text_encoder/model.fp16.safetensors", "text_encoder_2/model.fp16.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors"]
JUNK = ["README.md", ".gitattributes", "sd_xl_base_1.0.safetensors", "sd_xl_offset_example-lora_1.0.safetensors",
        "unet/diffusion_pytorch_model.bin", "unet/diffusion_pytorch_model.fp16.bin", "unet/diffusion_flax_model.msgpack",
        "unet/openvino_model.xml", "unet/openvino_model.bin", "text_encoder/pytorch_model.bin",
        "text_encoder/flax_model.msgpack", "text_encoder/model.onnx", "text_encoder/model.fp16.onnx",
        "vae/diffusion_pytorch_model.bin", "vae_decoder/model.onnx", "vae_decoder/config.json",
        "vae_encoder/model.onnx", "unet/extra/nested.safetensors", "01.png"]


def test_select_fp16_from_the_full_sdxl_listing():
    files, variant = resolve.select_pipeline_files(CONFIGS + PLAIN + FP16 + JUNK, SDXL_INDEX, "fp16", "repo")
    assert variant == "fp16"
    assert files == sorted(CONFIGS + FP16)


def test_select_plain_from_the_full_sdxl_listing():
    files, variant = resolve.select_pipeline_files(CONFIGS + PLAIN + FP16 + JUNK, SDXL_INDEX, None, "repo")
    assert variant is None
    assert files == sorted(CONFIGS + PLAIN)


def test_select_variant_fallback_when_one_component_lacks_it():
    listing = CONFIGS + PLAIN + [f for f in FP16 if not f.startswith("vae/")]
    files, variant = resolve.select_pipeline_files(listing, SDXL_INDEX, "fp16", "repo")
    assert variant is None
    assert files == sorted(CONFIGS + PLAIN)


def test_select_variant_missing_everywhere():
    files, variant = resolve.select_pipeline_files(CONFIGS + PLAIN, SDXL_INDEX, "fp16", "repo")
    assert (files, variant) == (sorted(CONFIGS + PLAIN), None)


def test_select_other_variant():
    bf16 = [f.replace(".fp16.", ".bf16.") for f in FP16]
    files, variant = resolve.select_pipeline_files(CONFIGS + PLAIN + FP16 + bf16, SDXL_INDEX, "bf16", "repo")
    assert (files, variant) == (sorted(CONFIGS + bf16), "bf16")


def test_select_sharded_weights_with_index_files():
    sharded_plain = ["unet/diffusion_pytorch_model-00001-of-00002.safetensors",
                     "unet/diffusion_pytorch_model-00002-of-00002.safetensors",
                     "unet/diffusion_pytorch_model.safetensors.index.json",
                     "text_encoder_2/model-00001-of-00002.safetensors",
                     "text_encoder_2/model-00002-of-00002.safetensors",
                     "text_encoder_2/model.safetensors.index.json"]
    sharded_fp16 = ["unet/diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
                    "unet/diffusion_pytorch_model.fp16-00002-of-00002.safetensors",
                    "unet/diffusion_pytorch_model.safetensors.index.fp16.json",
                    "text_encoder_2/model.fp16-00001-of-00002.safetensors",
                    "text_encoder_2/model.fp16-00002-of-00002.safetensors",
                    "text_encoder_2/model.safetensors.index.fp16.json"]
    rest_plain = [f for f in PLAIN if f.startswith(("text_encoder/", "vae/"))]
    rest_fp16 = [f for f in FP16 if f.startswith(("text_encoder/", "vae/"))]
    pickled = ["unet/diffusion_pytorch_model.bin.index.json", "unet/diffusion_pytorch_model-00001-of-00002.bin",
               "text_encoder_2/pytorch_model.bin.index.fp16.json"]
    listing = CONFIGS + sharded_plain + sharded_fp16 + rest_plain + rest_fp16 + pickled
    files, variant = resolve.select_pipeline_files(listing, SDXL_INDEX, "fp16", "repo")
    assert variant == "fp16"
    assert files == sorted(CONFIGS + sharded_fp16 + rest_fp16)
    files, variant = resolve.select_pipeline_files(listing, SDXL_INDEX, None, "repo")
    assert variant is None
    assert files == sorted(CONFIGS + sharded_plain + rest_plain)


def test_select_sharded_fp16_counts_as_having_the_variant():
    # The unet's fp16 weights exist only as shards + a variant index: still "has fp16".
    fp16 = [f for f in FP16 if not f.startswith("unet/")] + [
        "unet/diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
        "unet/diffusion_pytorch_model.fp16-00002-of-00002.safetensors",
        "unet/diffusion_pytorch_model.safetensors.index.fp16.json"]
    files, variant = resolve.select_pipeline_files(CONFIGS + PLAIN + fp16, SDXL_INDEX, "fp16", "repo")
    assert variant == "fp16" and files == sorted(CONFIGS + fp16)


def test_select_ignores_components_not_in_the_index_and_null_ones():
    index = dict(SDXL_INDEX, image_encoder=[None, None], safety_checker=[None, None])
    extra = ["image_encoder/model.bin", "safety_checker/pytorch_model.bin", "feature_extractor/preprocessor_config.json"]
    files, _ = resolve.select_pipeline_files(CONFIGS + PLAIN + extra, index, None, "repo")
    assert files == sorted(CONFIGS + PLAIN)


def test_select_refuses_a_component_with_only_pickles():
    listing = CONFIGS + [f for f in PLAIN if not f.startswith("text_encoder_2/")] + ["text_encoder_2/pytorch_model.bin"]
    with pytest.raises(ModelError) as e:
        resolve.select_pipeline_files(listing, SDXL_INDEX, None, "org/pickled")
    para = e.value.paragraph()
    assert "'org/pickled'" in para and "text_encoder_2/" in para and "pytorch_model.bin" in para
    assert "safetensors" in para


def test_select_refuses_pickled_shards_with_index():
    listing = CONFIGS + [f for f in PLAIN if not f.startswith("unet/")] + [
        "unet/diffusion_pytorch_model.bin.index.json", "unet/diffusion_pytorch_model-00001-of-00002.bin"]
    with pytest.raises(ModelError):
        resolve.select_pipeline_files(listing, SDXL_INDEX, None, "repo")


def test_select_always_includes_model_index():
    files, _ = resolve.select_pipeline_files(["model_index.json"], {"_class_name": "X"}, None, "repo")
    assert files == ["model_index.json"]


@pytest.mark.parametrize(
    "files,variant,expected",
    [
        (["config.json", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin", "sdxl_vae.safetensors"],
         "fp16", (["config.json", "diffusion_pytorch_model.safetensors"], None, None)),
        (["config.json", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"],
         "fp16", (["config.json", "diffusion_pytorch_model.fp16.safetensors"], "fp16", None)),
        (["config.json", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"],
         None, (["config.json", "diffusion_pytorch_model.safetensors"], None, None)),
        (["model_index.json", "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "unet/config.json"],
         None, (["vae/config.json", "vae/diffusion_pytorch_model.safetensors"], None, "vae")),
        (["config.json", "diffusion_pytorch_model.bin"], None, ([], None, None)),
        (["diffusion_pytorch_model.safetensors"], None, ([], None, None)),
        # A VAE repo at its root that also has a vae/ folder: the root, as diffusers' from_pretrained reads it.
        (["config.json", "diffusion_pytorch_model.safetensors", "vae/config.json", "vae/diffusion_pytorch_model.safetensors"],
         None, (["config.json", "diffusion_pytorch_model.safetensors"], None, None)),
    ],
)
def test_select_vae_files(files, variant, expected):
    assert resolve.select_vae_files(files, variant) == expected


# ---------------------------------------------------------------------------------------------
# Integrity: model_index.json and safetensors headers, read as hostile input


def safetensors_bytes(header: bytes, data: int, length: int | None = None) -> bytes:
    """A safetensors file: the header's length (or `length`), the header, `data` bytes of tensor data."""
    return (len(header) if length is None else length).to_bytes(8, "little") + header + bytes(data)


TENSOR = b'{"__metadata__": {"format": "pt"}, "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}'


@pytest.mark.parametrize("content, problem", [
    (safetensors_bytes(TENSOR, 8), None),
    (safetensors_bytes(b'{"__metadata__": {}}', 0), None),
    (safetensors_bytes(TENSOR, 7), f"cut short: {8 + len(TENSOR) + 7:,} bytes of {8 + len(TENSOR) + 8:,}"),
    (b"\x05\x00\x00", "3 bytes, too short for a safetensors header"),
    # A header length beyond the file, but under the 100 MB cap: cut short, not a JSON error.
    (safetensors_bytes(TENSOR, 8, length=len(TENSOR) + 9),
     "its header length is impossible: not a safetensors file, or cut short"),
    (safetensors_bytes(b'{"w": ', 8), "its header is not JSON: not a safetensors file"),
    (safetensors_bytes(b"[]", 0), "its header is not a JSON object: not a safetensors file"),
    (safetensors_bytes(b'{"w": [0, 8]}', 8), "its header has a tensor without valid data_offsets: not a safetensors file"),
    (safetensors_bytes(b'{"w": {"data_offsets": []}}', 8),
     "its header has a tensor without valid data_offsets: not a safetensors file"),
    (safetensors_bytes(b'{"w": {"data_offsets": [0, "8"]}}', 8),
     "its header has a tensor without valid data_offsets: not a safetensors file"),
    (safetensors_bytes(b'{"w": {"data_offsets": [0, true]}}', 8),
     "its header has a tensor without valid data_offsets: not a safetensors file"),
    (safetensors_bytes(b'{"w": {"data_offsets": [8, 0]}}', 8),
     "its header has a tensor without valid data_offsets: not a safetensors file"),
], ids=["whole", "metadata-only", "cut-short", "too-short", "length-beyond-file", "not-json", "not-an-object",
        "entry-not-an-object", "offsets-empty", "offsets-text", "offsets-bool", "offsets-reversed"])
def test_safetensors_problem(tmp_path, content, problem):
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    assert files.safetensors_problem(path) == problem
    if problem:  # and check_files names the file, the problem and the repair, as one ModelError
        with pytest.raises(ModelError) as e:
            files.check_files(tmp_path, ["model.safetensors"], "org/repo", "spo download x --force")
        assert e.value.message == f"The copy of 'org/repo' on this machine is damaged: model.safetensors ({problem})."
        assert e.value.hint == "Repair it with `spo download x --force`."
    else:
        files.check_files(tmp_path, ["model.safetensors"], "org/repo", None)


def test_check_files_missing_file_takes_the_callers_hint(tmp_path):
    with pytest.raises(ModelError) as e:
        files.check_files(tmp_path, ["unet/config.json"], "org/repo", None, lambda: "Fetch it.")
    assert e.value.message == "The copy of 'org/repo' on this machine is incomplete: unet/config.json is missing."
    assert e.value.hint == "Fetch it."


@pytest.mark.parametrize("text, words", [
    ("[]", "model_index.json (not a JSON object)"),
    ('"StableDiffusionXLPipeline"', "model_index.json (not a JSON object)"),
    ("{", "model_index.json (JSONDecodeError"),
])
def test_read_index_refuses_what_is_not_an_index(tmp_path, text, words):
    (tmp_path / "model_index.json").write_text(text)
    with pytest.raises(ModelError) as e:
        files.read_index(tmp_path / "model_index.json", "org/repo", "spo download x --force")
    assert f"The copy of 'org/repo' on this machine is damaged: {words}" in e.value.message


@pytest.mark.parametrize("index, words", [
    (dict(SDXL_INDEX, _custom_pipeline="pipeline.py"), "needs custom Python code from the repository"),
    (dict(SDXL_INDEX, unet=["my_unets", "FancyUNet"]), "needs custom Python code from the repository"),
    ({k: v for k, v in SDXL_INDEX.items() if k != "_class_name"}, "is a pipeline of unknown type, not an SDXL"),
])
def test_check_index_refusals(index, words):
    with pytest.raises(ModelError) as e:
        files.check_index(index, "org/repo")
    assert words in e.value.message and "'org/repo'" in e.value.message


def test_check_index_accepts_sdxl_with_unused_components():
    files.check_index(SDXL_INDEX, "org/repo")  # feature_extractor / image_encoder are [null, null]


# ---------------------------------------------------------------------------------------------
# A scorer's repo files and a dataset's files, from the cache


def test_resolve_files_takes_the_required_and_the_optional_files_present(hub_cache):
    r = resolve.resolve_files(VAE, ("config.json",), ("diffusion_pytorch_model.safetensors", "no-such.json",
                                                      "config.json"), resolve.Fetch(local_only=True))
    assert (r.id, r.source, r.revision, r.commit) == (VAE, "hub", "main", hub_cache[VAE])
    assert r.files == ("config.json", "diffusion_pytorch_model.safetensors")
    assert all((r.path / f).is_file() for f in r.files)


def test_resolve_files_names_a_missing_required_file(hub_cache):
    with pytest.raises(ModelError) as e:
        resolve.resolve_files(VAE, ("config.json", "model.pt"), (), resolve.Fetch(local_only=True))
    assert e.value.message == f"'{VAE}' has no model.pt at commit {hub_cache[VAE][:10]}."


@pytest.fixture
def dataset_cache(tmp_path, monkeypatch):
    """A private cache holding one dataset commit: two validation shards, a train shard, a README."""
    from huggingface_hub import constants

    from spo_cli.tiny import add_to_cache

    src = tmp_path / "dataset"
    for name in ("data/validation_unique-00000-of-00002.parquet", "data/validation_unique-00001-of-00002.parquet",
                 "data/train-00000-of-00001.parquet", "README.md"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(name.encode())
    cache = tmp_path / "hub"
    commit = add_to_cache(cache, "someorg/prompts", src, repo_type="dataset")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return commit


def test_resolve_dataset_takes_the_files_matching_the_pattern(dataset_cache):
    r = resolve.resolve_dataset("someorg/prompts", "*validation_unique-*.parquet", resolve.Fetch(local_only=True))
    assert (r.id, r.commit, r.revision) == ("someorg/prompts", dataset_cache, "main")
    assert r.files == ("data/validation_unique-00000-of-00002.parquet", "data/validation_unique-00001-of-00002.parquet")


def test_resolve_dataset_without_a_match_says_why_offline(dataset_cache):
    with pytest.raises(ModelError) as e:
        resolve.resolve_dataset("someorg/prompts", "*test-*.parquet", resolve.Fetch(local_only=True, command="spo x"))
    assert e.value.message == (f"The dataset 'someorg/prompts' (commit {dataset_cache[:10]}) has no file matching "
                               "*test-*.parquet.")
    assert "HF_HUB_OFFLINE is set" in e.value.hint and "run `spo x` first" in e.value.hint


# ---------------------------------------------------------------------------------------------
# Which parts come from where, decided before the Hub or torch is asked


def test_another_hub_lora_on_the_lora_preset_does_not_take_the_presets_file_name(hub_cache):
    # spo-lora names its LoRA file for its own LoRA repo only: another --lora repo needs --lora-file.
    with pytest.raises(UsageError) as e:
        resolve.resolve_model(ModelRequest(model="spo-lora", lora="someorg/other-lora"), "float16")
    assert e.value.message == "Name the LoRA file in 'someorg/other-lora' with --lora-file when offline."


def test_precheck_offline_hub_lora_needs_its_file():
    with pytest.raises(UsageError) as e:
        resolve.precheck(ModelRequest(model="spo", lora="someorg/a-lora"))
    assert "--lora-file" in e.value.message
    resolve.precheck(ModelRequest(model="spo", lora="someorg/a-lora", lora_file="a.safetensors"))


def test_precheck_refuses_a_revision_for_a_local_folder(repos):
    with pytest.raises(UsageError) as e:
        resolve.precheck(ModelRequest(model=str(repos[BASE]), revision="v1"))
    assert e.value.message == f"--revision v1 applies to Hub repos; {repos[BASE].resolve()} is a local folder."


@pytest.mark.parametrize("model, vae, dtype, hub", [
    ("spo", None, "float32", True),  # a preset
    ("someorg/model", "model", "float32", True),  # a repo id
    ("LOCAL", "model", "float16", False),  # everything on this machine
    ("LOCAL", None, "float32", False),  # float32: the checkpoint's own VAE
    ("LOCAL", None, "float16", True),  # float16: the fp16-fix VAE, from the Hub
    ("LOCAL", "LOCAL", "float16", False),
])
def test_uses_hub(repos, model, vae, dtype, hub):
    local = str(repos[BASE])
    request = ModelRequest(model=local if model == "LOCAL" else model, vae=local if vae == "LOCAL" else vae)
    assert resolve.uses_hub(request, dtype) is hub


def test_force_is_refused_when_hf_hub_offline_is_set(hub_cache):
    with pytest.raises(ModelError) as e:
        resolve.resolve_model(ModelRequest(model="base"), "float32", force=True)
    assert e.value.message == "--force fetches every file again from the Hub, and HF_HUB_OFFLINE is set."
