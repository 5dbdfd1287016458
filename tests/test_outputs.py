"""Unit tests for spo_cli.outputs: file names, atomic writes, sidecars and embedded metadata."""

from __future__ import annotations

import errno
import io
import json
import os
import random
import re
import string
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from spo_cli import __version__, errors, presets
from spo_cli.outputs import files, metadata, naming
from spo_cli.errors import OutputError, UsageError
from spo_cli.request import ImageRequest, ModelRequest
from spo_cli.resolve import Resolved, ResolvedModel
from tests.conftest import HANG

MERGED_COMMIT = "0123456789abcdef0123456789abcdef01234567"
LORA_COMMIT = "89abcdef0123456789abcdef0123456789abcdef"
VAE_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"
WHEN = datetime(2026, 11, 26, 10, 15, 0, tzinfo=timezone.utc)


# ---------------------------------------------------------------------------------------------
# Helpers: metadata shaped like a real sidecar


def model_facts(kind: str = "spo") -> dict:
    """What `ResolvedModel.describe()` returns, built from real Resolved objects (no Hub needed)."""
    vae = Resolved(presets.FP16_FIX_VAE, "hub", Path("/cache/vae"), "main", VAE_COMMIT,
                   files=("config.json", "diffusion_pytorch_model.safetensors"))
    if kind == "spo":
        request = ModelRequest(dtype="fp16")
        pipeline = Resolved(presets.SPO_MERGED, "hub", Path("/cache/merged"), "main", MERGED_COMMIT)
        return ResolvedModel(request, "spo", pipeline, "float16", None, vae).describe()
    if kind == "spo-lora":
        request = ModelRequest(model="spo-lora", lora_scale=0.8, dtype="fp16")
        pipeline = Resolved(presets.SDXL_BASE, "hub", Path("/cache/base"), "main", MERGED_COMMIT, "fp16")
        lora = Resolved(presets.SPO_LORA, "hub", Path("/cache/lora") / presets.SPO_LORA_FILE, "main", LORA_COMMIT,
                        file=presets.SPO_LORA_FILE)
        return ResolvedModel(request, "spo-lora", pipeline, "float16", lora, vae).describe()
    if kind == "local":
        request = ModelRequest(model="/models/my:model", dtype="fp32")
        pipeline = Resolved("/models/my:model", "local", Path("/models/my:model"))
        return ResolvedModel(request, None, pipeline, "float32", None, None).describe()
    raise AssertionError(kind)


RUN = {
    "device": "cuda",
    "dtype": "float16",
    "gpu": "NVIDIA H100 80GB HBM3",
    "versions": {"spo-cli": __version__, "diffusers": "0.35.1", "torch": "2.8.0", "transformers": "4.56.0",
                 "huggingface_hub": "0.35.0", "python": "3.11.9"},
}
SCHEDULER = {
    "name": "default",
    "class": "EulerDiscreteScheduler",
    "a1111": "Euler",
    "config": {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
               "num_train_timesteps": 1000, "timestep_spacing": "leading"},
}


def make_meta(kind: str = "spo", scheduler: dict | None = None, **request) -> dict:
    r = ImageRequest(**{"prompt": "a red fox in fresh snow, golden hour", "seed": 42, **request})
    return metadata.build(
        r, model_facts(kind), RUN, scheduler or SCHEDULER, width=r.width or 1024, height=r.height or 1024,
        batch_size=2, elapsed_s=12.345678, created=WHEN, spec_hash=r.spec_hash(),
    )


def make_image(w: int = 16, h: int = 12, seed: int = 0) -> Image.Image:
    rnd = random.Random(seed)
    return Image.frombytes("RGB", (w, h), bytes(rnd.randrange(256) for _ in range(w * h * 3)))


def listing(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


_A1111_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def parse_a1111(text: str) -> tuple[str, str, dict]:
    """AUTOMATIC1111's parse_generation_parameters(), reduced to what these tests need."""
    *lines, last = text.split("\n")
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    fields = {}
    for k, v in _A1111_PARAM.findall(last):
        fields[k] = json.loads(v) if v[:1] == '"' and v[-1:] == '"' else v
    return "\n".join(prompt), "\n".join(negative), fields


# ---------------------------------------------------------------------------------------------
# slugify / default_stem


@pytest.mark.parametrize(
    "text,slug",
    [
        ("A red fox in fresh snow, golden hour", "a-red-fox-in-fresh-snow-golden-hour"),
        ("Café Ünïcode — naïve façade!", "cafe-unicode-naive-facade"),
        ("  ...Hello,   World!!!  ", "hello-world"),
        ("ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ", "fullwidth-text"),
        ("a_b.c/d\\e:f", "a-b-c-d-e-f"),
        ("../../etc/passwd", "etc-passwd"),
        ("Ⅻ ﬁsh", "xii-fish"),
        ("東京の夜", "image"),
        ("🦊🦊", "image"),
        ("", "image"),
        ("   ", "image"),
        ("!!!,,,---", "image"),
        ("x" * 40, "x" * 40),
    ],
)
def test_slugify(text, slug):
    assert naming.slugify(text) == slug


def test_slugify_cuts_at_a_word_boundary():
    text = "the quick brown fox jumps over the lazy dog again and again"
    slug = naming.slugify(text)
    assert slug == "the-quick-brown-fox-jumps-over-the-lazy"
    assert len(slug) <= 40


def test_slugify_word_ending_exactly_at_the_limit_is_kept():
    assert naming.slugify("a" * 40 + " b") == "a" * 40
    assert naming.slugify("a" * 39 + " bb") == "a" * 39


def test_slugify_one_long_word_is_truncated():
    assert naming.slugify("z" * 100) == "z" * 40
    assert naming.slugify("z" * 100 + " tail") == "z" * 40


def test_slugify_max_len():
    assert naming.slugify("alpha beta gamma", max_len=11) == "alpha-beta"
    assert naming.slugify("alpha beta gamma", max_len=10) == "alpha-beta"
    assert naming.slugify("alpha beta gamma", max_len=9) == "alpha"


def test_slugify_properties_on_random_text():
    rnd = random.Random(1234)
    alphabet = string.ascii_letters + string.digits + " ,.;:!?/\\'\"-_()[]{}éüßñ東京🦊\t\n"
    for _ in range(500):
        text = "".join(rnd.choice(alphabet) for _ in range(rnd.randrange(0, 120)))
        slug = naming.slugify(text)
        assert 1 <= len(slug) <= naming.SLUG_MAX
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", slug), (text, slug)
        full = naming.slugify(text, max_len=10_000)
        if slug != "image" or full == "image":
            # A prefix of the full slug, ending at a word end (or cut inside one over-long first word).
            assert full.startswith(slug)
            rest = full[len(slug):]
            assert rest == "" or rest.startswith("-") or "-" not in slug


def test_default_stem_format():
    when = datetime(2026, 11, 26, 10, 15, 0, tzinfo=timezone(timedelta(hours=1)))
    assert naming.default_stem("A red fox in fresh snow!", 42, when) == "20261126-101500-a-red-fox-in-fresh-snow-s42"
    assert naming.default_stem("", 0, datetime(2001, 2, 3, 4, 5, 6)) == "20010203-040506-image-s0"
    stem = naming.default_stem("x" * 300, 4294967295, WHEN)
    assert re.fullmatch(r"\d{8}-\d{6}-[a-z0-9]+(-[a-z0-9]+)*-s\d+", stem)
    assert stem.endswith("-s4294967295")


@pytest.mark.parametrize("prompt", ["../../etc/passwd", ".hidden", "a\0b", "C:\\Windows", " spaced ", "東京"])
def test_default_stem_is_always_a_usable_file_name(prompt):
    stem = naming.default_stem(prompt, 7, WHEN)
    assert naming.check_stem(stem) == stem


def test_now_is_timezone_aware():
    assert naming.now().tzinfo is not None


# ---------------------------------------------------------------------------------------------
# check_stem / inside / claim_stem

HOSTILE = ["../x", "/etc/passwd", "a/b", ".hidden", "..", ".", "", "x\0y", "a\\b", "..\\x", "../x.png",
           "/etc/passwd.png", "a/b.png", ".hidden.png", "..png", "x\0.png", "a\\b.png", "../../etc/cron.d/x",
           "C:evil", " x", "x ", "x\n", "é" * 101, "sub/../../x.png", "x.png/.."]


@pytest.mark.parametrize("name", HOSTILE)
def test_check_stem_rejects_hostile_names(name):
    with pytest.raises(UsageError) as e:
        naming.check_stem(name)
    assert e.value.exit_code == 2


@pytest.mark.parametrize("name", HOSTILE)
def test_inside_rejects_hostile_names(tmp_path, name):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UsageError):
        naming.inside(out, name)


def test_inside_never_resolves_outside(tmp_path):
    # Names drawn from an alphabet rich in path syntax: every name inside() accepts resolves to a
    # file directly in the folder, and enough of them are accepted for that to mean something.
    out = tmp_path / "out"
    (out / "x").mkdir(parents=True)
    rnd = random.Random(7)
    accepted = 0
    for _ in range(3000):
        name = "".join(rnd.choice("ab./\\:\0 -é~x") for _ in range(rnd.randint(1, 8)))
        try:
            path = naming.inside(out, name)
        except UsageError:
            continue
        accepted += 1
        assert path.parent == out.resolve() and path.name == name, name
    assert accepted > 300


@pytest.mark.parametrize("name", ["20261126-101500-a-red-fox-s42", "image_01.v2", "über-fuchs", "a" * 200, "x-1"])
def test_check_stem_accepts_ordinary_names(name):
    assert naming.check_stem(name) == name


def test_check_stem_length_is_counted_in_bytes():
    assert naming.check_stem("a" * 200)
    with pytest.raises(UsageError):
        naming.check_stem("a" * 201)
    with pytest.raises(UsageError):
        naming.check_stem("é" * 101)  # 202 bytes in UTF-8


def test_inside_ordinary_names(tmp_path):
    out = tmp_path / "out"
    for name in ("a.png", "a.json", "stem-s42.webp", "noext"):
        p = naming.inside(out, name)
        assert p == out.resolve() / name


def test_inside_refuses_a_symlink_leading_out(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    target = tmp_path / "victim.png"
    target.write_bytes(b"precious")
    (out / "link.png").symlink_to(target)
    with pytest.raises(UsageError):
        naming.inside(out, "link.png")
    # Through write_result too: the file outside is never touched.
    with pytest.raises(UsageError):
        files.write_pair(out, "link", "png", make_image(), make_meta(), overwrite=True)
    assert target.read_bytes() == b"precious"


def test_claim_stem_free_name_is_kept(tmp_path):
    assert naming.free_stem(tmp_path, "pic", "png") == "pic"
    assert naming.free_stem(tmp_path / "missing-folder", "pic", "png") == "pic"


@pytest.mark.parametrize("taken", [["pic.png"], ["pic.json"], ["pic.png", "pic.json"]])
def test_claim_stem_skips_a_taken_image_or_sidecar(tmp_path, taken):
    for name in taken:
        (tmp_path / name).write_text("x")
    assert naming.free_stem(tmp_path, "pic", "png") == "pic-1"


def test_claim_stem_counts_past_every_taken_name(tmp_path):
    for name in ("pic.png", "pic-1.json", "pic-2.png", "pic-2.json", "pic-3.webp", "pic-4.png"):
        (tmp_path / name).write_text("x")
    # pic-3.webp does not block a PNG named pic-3, but a sidecar pic-3.json would.
    assert naming.free_stem(tmp_path, "pic", "png") == "pic-3"
    (tmp_path / "pic-3.json").write_text("x")
    assert naming.free_stem(tmp_path, "pic", "png") == "pic-5"
    # For WebP, pic.png is no obstacle; pic.json, pic-1.json, pic-2.json, pic-3.webp are.
    assert naming.free_stem(tmp_path, "pic", "webp") == "pic"
    (tmp_path / "pic.json").write_text("x")
    assert naming.free_stem(tmp_path, "pic", "webp") == "pic-4"


def test_claim_stem_then_write_never_overwrites(tmp_path):
    stems = []
    for i in range(4):
        stem = naming.free_stem(tmp_path, "same", "png")
        files.write_pair(tmp_path, stem, "png", make_image(seed=i), make_meta(seed=i))
        stems.append(stem)
    assert stems == ["same", "same-1", "same-2", "same-3"]
    assert listing(tmp_path) == {f"{s}.{e}" for s in stems for e in ("png", "json")}
    for i, s in enumerate(stems):
        assert json.loads((tmp_path / f"{s}.json").read_text())["seed"] == i


# ---------------------------------------------------------------------------------------------
# atomic_write


def test_atomic_write_writes_and_creates_folders(tmp_path):
    path = tmp_path / "a" / "b" / "file.bin"
    files.atomic_write(path, b"hello")
    assert path.read_bytes() == b"hello"
    assert listing(path.parent) == {"file.bin"}


def test_atomic_write_refuses_to_overwrite(tmp_path):
    path = tmp_path / "file.bin"
    path.write_bytes(b"old")
    with pytest.raises(OutputError) as e:
        files.atomic_write(path, b"new")
    assert "already exists" in e.value.message
    assert e.value.exit_code == 1
    assert path.read_bytes() == b"old"
    assert listing(tmp_path) == {"file.bin"}


def test_atomic_write_overwrites_when_asked(tmp_path):
    path = tmp_path / "file.bin"
    path.write_bytes(b"old")
    files.atomic_write(path, b"new", overwrite=True)
    assert path.read_bytes() == b"new"
    assert listing(tmp_path) == {"file.bin"}


def test_atomic_write_without_hard_links(tmp_path, monkeypatch):
    def no_link(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(files.os, "link", no_link)
    path = tmp_path / "file.bin"
    files.atomic_write(path, b"data")
    assert path.read_bytes() == b"data"
    assert listing(tmp_path) == {"file.bin"}
    with pytest.raises(OutputError):
        files.atomic_write(path, b"other")
    assert path.read_bytes() == b"data"
    assert listing(tmp_path) == {"file.bin"}


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class _HalfWriter:
    """A file whose write lands half the bytes on disk, then fails as a full disk does."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        self._f.write(data[: len(data) // 2])
        self._f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


@pytest.fixture(params=["write", "link"])
def full_disk(request, monkeypatch):
    if request.param == "link":  # a full inode table or quota fails the link into place
        monkeypatch.setattr(files.os, "link", _enospc)
        monkeypatch.setattr(files.os, "replace", _enospc)
    else:
        real_fdopen = os.fdopen
        monkeypatch.setattr(files.os, "fdopen", lambda *a, **k: _HalfWriter(real_fdopen(*a, **k)))
    return request.param


def test_atomic_write_full_disk_leaves_nothing(tmp_path, full_disk):
    path = tmp_path / "image.png"
    with pytest.raises(OSError) as e:
        files.atomic_write(path, b"x" * 10_000)
    assert e.value.errno == errno.ENOSPC
    assert not path.exists()
    assert listing(tmp_path) == set()  # no partial file, no temp file


def test_atomic_write_full_disk_keeps_the_old_file(tmp_path, full_disk):
    path = tmp_path / "image.png"
    path.write_bytes(b"old complete image")
    with pytest.raises(OSError):
        files.atomic_write(path, b"x" * 10_000, overwrite=True)
    assert path.read_bytes() == b"old complete image"
    assert listing(tmp_path) == {"image.png"}


def test_full_disk_translates_to_an_output_error(tmp_path, full_disk):
    with pytest.raises(OSError) as e:
        files.atomic_write(tmp_path / "image.png", b"x" * 10_000)
    err = errors.translate(e.value)
    assert isinstance(err, OutputError)
    assert err.exit_code == 1
    assert "disk is full" in err.message
    assert "Free some space" in err.paragraph()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_translate_disk_full_with_filename_and_through_a_chain(code):
    e = OSError(code, os.strerror(code), "/out/x.png")
    err = errors.translate(e)
    assert isinstance(err, OutputError) and "disk is full" in err.message and "/out/x.png" in err.message
    try:
        try:
            raise e
        except OSError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert isinstance(errors.translate(outer), OutputError)


def test_translate_leaves_other_os_errors_alone():
    assert errors.translate(OSError(errno.EACCES, "Permission denied")) is None
    assert errors.translate(ValueError("bug")) is None


def test_atomic_write_respects_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        files.atomic_write(tmp_path / "f.png", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "f.png").stat().st_mode & 0o777 == 0o644


# ---------------------------------------------------------------------------------------------
# build_metadata / A1111 parameters


def test_build_metadata_shape():
    meta = make_meta(negative_prompt="blurry", steps=30, width=1152, height=896)
    assert meta["schema"] == "spo-cli/1"  # the documented schema id: changing it breaks readers
    assert meta["prompt"] == "a red fox in fresh snow, golden hour"
    assert meta["negative_prompt"] == "blurry"
    assert (meta["seed"], meta["steps"], meta["guidance"]) == (42, 30, 5.0)
    assert (meta["width"], meta["height"]) == (1152, 896)
    assert meta["generator_device"] == "cpu"
    assert meta["scheduler"] == SCHEDULER
    assert meta["model"] == {"id": presets.SPO_MERGED, "source": "hub", "revision": "main",
                             "commit": MERGED_COMMIT, "preset": "spo"}
    assert meta["lora"] is None
    assert meta["vae"] == {"id": presets.FP16_FIX_VAE, "source": "hub", "revision": "main", "commit": VAE_COMMIT}
    assert meta["model_request"]["model"] == "spo" and "device" not in meta["model_request"]
    assert (meta["dtype"], meta["device"], meta["gpu"]) == ("float16", "cuda", RUN["gpu"])
    assert meta["batch_size"] == 2
    assert meta["versions"]["spo-cli"] == __version__
    assert meta["elapsed_s"] == 12.346
    assert meta["created"] == "2026-11-26T10:15:00+00:00"
    assert re.fullmatch(r"[0-9a-f]{16}", meta["spec_hash"])
    json.dumps(meta)  # serialisable as is


def test_build_metadata_without_spec_hash_or_gpu():
    r = ImageRequest(prompt="p", seed=1)
    run = {k: v for k, v in RUN.items() if k != "gpu"}
    meta = metadata.build(r, model_facts(), run, SCHEDULER, width=64, height=64, batch_size=1,
                                  elapsed_s=0.1, created=WHEN)
    assert "spec_hash" not in meta
    assert meta["gpu"] is None


def test_a1111_parameters_layout():
    meta = make_meta(negative_prompt="blurry, low quality")
    assert metadata.a1111_parameters(meta) == (
        "a red fox in fresh snow, golden hour\n"
        "Negative prompt: blurry, low quality\n"
        "Steps: 50, Sampler: Euler, CFG scale: 5.0, Seed: 42, Size: 1024x1024, Model: SPO-SDXL_4k-p_10ep, "
        f"VAE: sdxl-vae-fp16-fix, Version: spo-cli {__version__}"
    )


@pytest.mark.parametrize("negative", [None, ""])
def test_a1111_parameters_omit_the_negative_line_without_a_negative(negative):
    text = metadata.a1111_parameters(make_meta(negative_prompt=negative))
    lines = text.split("\n")
    assert len(lines) == 2
    assert "Negative prompt" not in text
    assert lines[0] == "a red fox in fresh snow, golden hour"
    assert lines[1].startswith("Steps: 50, Sampler: Euler, CFG scale: 5.0, Seed: 42, Size: 1024x1024, ")


def test_a1111_parameters_lora_and_quoting():
    meta = make_meta("spo-lora", steps=20, seed=7, width=1216, height=832)
    text = metadata.a1111_parameters(meta)
    last = text.split("\n")[-1]
    assert last == (
        "Steps: 20, Sampler: Euler, CFG scale: 5.0, Seed: 7, Size: 1216x832, Model: stable-diffusion-xl-base-1.0, "
        'Lora: "spo_sdxl_10ep_4k-data_lora_diffusers:0.8", '
        f"VAE: sdxl-vae-fp16-fix, Version: spo-cli {__version__}"
    )


def test_a1111_parameters_never_pass_a_commit_off_as_a_model_hash():
    # A1111's "Model hash" is a checkpoint file's SHA-256; a commit id there would mislead readers.
    for kind in ("spo", "spo-lora", "local"):
        assert "hash" not in metadata.a1111_parameters(make_meta(kind)).lower()


def test_a1111_parameters_local_model_without_commit_or_vae():
    meta = make_meta("local")
    last = metadata.a1111_parameters(meta).split("\n")[-1]
    assert 'Model: "my:model"' in last  # ':' forces JSON quoting
    assert "Model hash" not in last and "VAE:" not in last and "Lora" not in last


def test_a1111_parameters_sampler_falls_back_to_the_class_and_quotes():
    sched = dict(SCHEDULER, a1111="", **{"class": "MyScheduler"})
    assert "Sampler: MyScheduler," in metadata.a1111_parameters(make_meta(scheduler=sched))
    sched = dict(SCHEDULER, a1111="Odd, sampler")
    assert 'Sampler: "Odd, sampler",' in metadata.a1111_parameters(make_meta(scheduler=sched))


@pytest.mark.parametrize(
    "value,quoted",
    [("plain value", "plain value"), ("a,b", '"a,b"'), ("a:b", '"a:b"'), ("a\nb", '"a\\nb"'),
     ('say "hi", ok', '"say \\"hi\\", ok"'), ("é, ü", '"é, ü"'), ("", "")],
)
def test_a1111_quote(value, quoted):
    assert metadata._a1111_quote(value) == quoted


def test_a1111_parameters_parse_back_like_automatic1111():
    meta = make_meta("spo-lora", negative_prompt="ugly, blurry: bad", steps=33, guidance=6.5, seed=123456,
                     width=1152, height=896)
    prompt, negative, fields = parse_a1111(metadata.a1111_parameters(meta))
    assert prompt == meta["prompt"]
    assert negative == "ugly, blurry: bad"
    assert fields == {
        "Steps": "33", "Sampler": "Euler", "CFG scale": "6.5", "Seed": "123456", "Size": "1152x896",
        "Model": "stable-diffusion-xl-base-1.0",
        "Lora": "spo_sdxl_10ep_4k-data_lora_diffusers:0.8", "VAE": "sdxl-vae-fp16-fix",
        "Version": f"spo-cli {__version__}",
    }


# ---------------------------------------------------------------------------------------------
# write_result and the formats


def test_write_result_png_image_and_sidecar(tmp_path):
    out = tmp_path / "out"
    img = make_image()
    meta = make_meta(negative_prompt="blurry, low quality", prompt="紅い狐, café ☕ 🦊")
    res = files.write_pair(out, "pic", "png", img, meta)
    assert res == {"image": str((out / "pic.png").resolve()), "sidecar": str((out / "pic.json").resolve()),
                   "seed": 42, "prompt": "紅い狐, café ☕ 🦊"}
    assert listing(out) == {"pic.png", "pic.json"}

    raw_sidecar = (out / "pic.json").read_text(encoding="utf-8")
    assert raw_sidecar.endswith("}\n")
    assert "紅い狐" in raw_sidecar  # stored as UTF-8, not \u escapes
    sidecar = json.loads(raw_sidecar)
    assert sidecar == dict(meta, file="pic.png")
    assert "file" not in meta  # the caller's dict is not modified

    with Image.open(out / "pic.png") as im:
        assert im.format == "PNG"
        assert im.mode == img.mode and im.size == img.size
        assert im.tobytes() == img.tobytes()  # lossless, pixel for pixel
        text = dict(im.text)
    assert isinstance(text[metadata.PNG_JSON_KEY], PngImagePlugin.iTXt)
    assert json.loads(text[metadata.PNG_JSON_KEY]) == sidecar
    assert text["parameters"] == metadata.a1111_parameters(sidecar)
    assert text["parameters"].startswith("紅い狐, café ☕ 🦊\nNegative prompt: blurry, low quality\nSteps: 50, ")


def test_png_parameters_without_negative(tmp_path):
    files.write_pair(tmp_path, "pic", "png", make_image(), make_meta())
    with Image.open(tmp_path / "pic.png") as im:
        params = im.text["parameters"]
    assert params.split("\n")[0] == "a red fox in fresh snow, golden hour"
    assert "Negative prompt" not in params
    assert len(params.split("\n")) == 2


def test_encode_png_round_trip_in_memory():
    img = make_image(8, 8, seed=5).convert("RGBA")
    meta = make_meta()
    data = metadata.encode_image(img, "png", meta)
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "RGBA" and im.tobytes() == img.tobytes()
        assert json.loads(im.text["spo-cli"]) == meta


@pytest.mark.parametrize("fmt,pil_format", [("jpg", "JPEG"), ("webp", "WEBP")])
def test_jpeg_and_webp_carry_parameters_in_exif_user_comment(tmp_path, fmt, pil_format):
    prompt = "紅い狐 im Schnee, café ☕ 🦊 — naïve"
    meta = make_meta(prompt=prompt, negative_prompt="ぼやけた, blurry")
    files.write_pair(tmp_path, "pic", fmt, make_image(32, 24), meta)
    assert listing(tmp_path) == {f"pic.{fmt}", "pic.json"}
    path = tmp_path / f"pic.{fmt}"
    with Image.open(path) as im:
        assert im.format == pil_format and im.size == (32, 24)
        raw = im.getexif().get_ifd(metadata.EXIF_IFD)[metadata.EXIF_USER_COMMENT]
    assert raw[:8] == b"UNICODE\0"
    comment = metadata.read_user_comment(path)
    assert comment == metadata.a1111_parameters(meta)
    assert comment.startswith(prompt + "\nNegative prompt: ぼやけた, blurry\nSteps: 50, Sampler: Euler, ")
    # The sidecar is the full record.
    assert metadata.read(path) == dict(meta, file=f"pic.{fmt}")


def test_read_user_comment_absent(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.jpg")
    assert metadata.read_user_comment(tmp_path / "plain.jpg") is None
    files.write_pair(tmp_path, "pic", "png", make_image(), make_meta())
    assert metadata.read_user_comment(tmp_path / "pic.png") is None


def test_write_result_refuses_to_overwrite(tmp_path):
    files.write_pair(tmp_path, "pic", "png", make_image(seed=1), make_meta(seed=1))
    before = {n: (tmp_path / n).read_bytes() for n in listing(tmp_path)}
    with pytest.raises(OutputError):
        files.write_pair(tmp_path, "pic", "png", make_image(seed=2), make_meta(seed=2))
    assert {n: (tmp_path / n).read_bytes() for n in listing(tmp_path)} == before


def test_write_result_overwrites_when_asked(tmp_path):
    files.write_pair(tmp_path, "pic", "png", make_image(seed=1), make_meta(seed=1))
    files.write_pair(tmp_path, "pic", "png", make_image(seed=2), make_meta(seed=2), overwrite=True)
    assert listing(tmp_path) == {"pic.png", "pic.json"}
    assert json.loads((tmp_path / "pic.json").read_text())["seed"] == 2
    with Image.open(tmp_path / "pic.png") as im:
        assert im.tobytes() == make_image(seed=2).tobytes()


def test_write_result_removes_the_image_when_the_sidecar_exists(tmp_path):
    (tmp_path / "pic.json").write_text("someone else's sidecar")
    with pytest.raises(OutputError):
        files.write_pair(tmp_path, "pic", "png", make_image(), make_meta())
    assert listing(tmp_path) == {"pic.json"}
    assert (tmp_path / "pic.json").read_text() == "someone else's sidecar"


def test_write_result_removes_the_image_when_the_sidecar_write_fails(tmp_path, monkeypatch):
    calls = []
    real_fdopen = os.fdopen

    def fdopen(*a, **k):
        calls.append(a)
        f = real_fdopen(*a, **k)
        return _HalfWriter(f) if len(calls) == 2 else f  # the first is the image, the second the sidecar

    monkeypatch.setattr(files.os, "fdopen", fdopen)
    with pytest.raises(OSError) as e:
        files.write_pair(tmp_path / "out", "pic", "webp", make_image(), make_meta())
    assert len(calls) == 2
    assert isinstance(errors.translate(e.value), OutputError)
    assert listing(tmp_path / "out") == set()  # no image, no sidecar, no temp file


def test_write_result_image_write_failure_writes_no_sidecar(tmp_path, full_disk):
    with pytest.raises(OSError):
        files.write_pair(tmp_path, "pic", "png", make_image(), make_meta())
    assert listing(tmp_path) == set()


@pytest.mark.parametrize("stem", ["../evil", "/tmp/evil", "sub/evil", ".evil", "", "..", "e\\vil", "e\0vil"])
def test_write_result_rejects_hostile_stems(tmp_path, stem):
    out = tmp_path / "a" / "out"
    with pytest.raises(UsageError):
        files.write_pair(out, stem, "png", make_image(), make_meta())
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written == []


# ---------------------------------------------------------------------------------------------
# read_metadata


@pytest.fixture
def written(tmp_path):
    meta = make_meta(negative_prompt="blurry")
    for fmt in ("png", "jpg", "webp"):
        files.write_pair(tmp_path, f"pic-{fmt}", fmt, make_image(), meta)
    return tmp_path, dict(meta)


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp"])
def test_read_metadata_from_the_sidecar(written, fmt):
    folder, meta = written
    assert metadata.read(folder / f"pic-{fmt}.json") == dict(meta, file=f"pic-{fmt}.{fmt}")


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp"])
def test_read_metadata_from_the_image_beside_its_sidecar(written, fmt):
    folder, meta = written
    assert metadata.read(folder / f"pic-{fmt}.{fmt}") == dict(meta, file=f"pic-{fmt}.{fmt}")


def test_read_metadata_from_a_png_alone(written, tmp_path):
    folder, meta = written
    lone = tmp_path / "moved"
    lone.mkdir()
    (folder / "pic-png.png").rename(lone / "renamed.png")
    assert metadata.read(lone / "renamed.png") == dict(meta, file="pic-png.png")


def test_read_metadata_suffix_is_case_insensitive(written):
    folder, meta = written
    (folder / "pic-png.png").rename(folder / "UPPER.PNG")
    assert metadata.read(folder / "UPPER.PNG")["seed"] == meta["seed"]


@pytest.mark.parametrize("fmt", ["jpg", "webp"])
def test_read_metadata_jpeg_webp_without_sidecar(written, fmt):
    folder, _ = written
    (folder / f"pic-{fmt}.json").unlink()
    with pytest.raises(UsageError) as e:
        metadata.read(folder / f"pic-{fmt}.{fmt}")
    assert e.value.exit_code == 2
    assert "no sidecar" in e.value.message


def test_read_metadata_missing_file(tmp_path):
    with pytest.raises(UsageError) as e:
        metadata.read(tmp_path / "nope.json")
    assert "does not exist" in e.value.message and e.value.exit_code == 2
    with pytest.raises(UsageError):
        metadata.read(tmp_path / "nope.png")


def test_read_metadata_plain_png_is_not_spo(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "foreign.png")
    with pytest.raises(UsageError) as e:
        metadata.read(tmp_path / "foreign.png")
    assert "no spo-cli metadata" in e.value.message


def test_read_metadata_a1111_png_is_not_spo(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 512x512")
    Image.new("RGB", (8, 8)).save(tmp_path / "a1111.png", pnginfo=info)
    with pytest.raises(UsageError):
        metadata.read(tmp_path / "a1111.png")


def test_an_a1111_image_is_scored_with_the_prompt_of_its_parameters(tmp_path):
    from spo_cli.scores import store

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a (red:1.3) cat BREAK on a mat\nNegative prompt: blurry\nSteps: 20, Seed: 1")
    Image.new("RGB", (8, 8)).save(tmp_path / "a1111.png", pnginfo=info)
    assert store.prompt_of(tmp_path / "a1111.png") == (store.scorer_text("a (red:1.3) cat BREAK on a mat", "a1111"),
                                                       "parameters")
    Image.new("RGB", (8, 8)).save(tmp_path / "bare.png")
    assert store.prompt_of(tmp_path / "bare.png") is None


@pytest.mark.parametrize(
    "content,expect",
    [
        ('{"schema": "spo-cli/1", "prompt": ', "damaged or not from spo: its metadata is not valid JSON"),
        ("", "damaged or not from spo: its metadata is not valid JSON"),
        (b"\xff\xfe\x00garbage", "is not a spo-cli sidecar (not UTF-8 text)"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"schema": "spo-cli/9", "prompt": "x"}', "which this spo-cli (reading 'spo-cli/1') does not know"),
        ('{"prompt": "no schema"}', "not spo-cli metadata"),
        ('{"schema": "other-tool/3"}', "not spo-cli metadata"),
        ('[{"schema": "spo-cli/1"}]', "not spo-cli metadata"),
        ('"spo-cli/1"', "not spo-cli metadata"),
        ("null", "not spo-cli metadata"),
    ],
)
def test_read_metadata_damaged_or_foreign_json(tmp_path, content, expect):
    path = tmp_path / "bad.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(UsageError) as e:
        metadata.read(path)
    assert expect in e.value.message
    assert e.value.exit_code == 2


def test_read_metadata_damaged_image_file(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(UsageError) as e:
        metadata.read(tmp_path / "broken.png")
    assert "could not be read" in e.value.message


def test_read_metadata_non_image_file(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UsageError):
        metadata.read(tmp_path / "notes.txt")


def test_read_metadata_damaged_png_chunk(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_itxt(metadata.PNG_JSON_KEY, '{"schema": "spo-cli/1", broken')
    Image.new("RGB", (8, 8)).save(tmp_path / "damaged.png", pnginfo=info)
    with pytest.raises(UsageError):
        metadata.read(tmp_path / "damaged.png")


# ---------------------------------------------------------------------------------------------
# files: resume checks, temporary files, the folder lock


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp"])
def test_image_is_whole_catches_a_cut_file(tmp_path, fmt):
    files.write_pair(tmp_path, "pic", fmt, make_image(64, 48), make_meta())
    path = tmp_path / f"pic.{fmt}"
    assert files.image_is_whole(path)
    data = path.read_bytes()
    for cut in (len(data) - 1, len(data) // 2, 10, 0):
        path.write_bytes(data[:cut])
        assert not files.image_is_whole(path), cut
    path.write_bytes(b"\0" * len(data))
    assert not files.image_is_whole(path)


def test_finished_hash_needs_a_whole_image_and_its_sidecar(tmp_path):
    meta = make_meta()
    files.write_pair(tmp_path, "pic", "png", make_image(), meta)
    assert files.finished_hash(tmp_path, "pic", "png") == meta["spec_hash"]
    png = tmp_path / "pic.png"
    data = png.read_bytes()
    png.write_bytes(data[:-20])  # a truncated PNG with a matching sidecar is not done
    assert files.finished_hash(tmp_path, "pic", "png") is None
    png.write_bytes(data)
    (tmp_path / "pic.json").write_text("{broken")
    assert files.finished_hash(tmp_path, "pic", "png") is None
    (tmp_path / "pic.json").unlink()
    assert files.finished_hash(tmp_path, "pic", "png") is None


def test_temporary_files_are_named_as_spo_s_own(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace

    def replace(src, dst):
        seen.append(Path(src).name)
        return real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", replace)
    files.atomic_write(tmp_path / "a.png", b"x", overwrite=True)
    assert seen and seen[0].startswith(".spo-tmp.") and seen[0].endswith(".a.png")


def test_leftovers_only_spo_s_own_of_dead_processes(tmp_path):
    import socket
    import subprocess
    import sys

    host = socket.gethostname().replace(".", "_")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    mine = f".spo-tmp.{host}.{os.getpid()}.abcd1234.x.png"  # a live writer (this process)
    stale = f".spo-tmp.{host}.{dead}.abcd1234.y.png"
    other_host = f".spo-tmp.elsewhere.{dead}.abcd1234.z.png"
    user_files = [".my-notes.part", ".x.png.abc.part", "notes.spo-tmp", ".spo-tmp-lookalike"]
    for name in [mine, stale, other_host, *user_files]:
        (tmp_path / name).write_text("x")
    assert files.remove_leftovers(tmp_path) == 1
    assert listing(tmp_path) == {mine, other_host, *user_files}


def test_folder_lock_keeps_a_second_run_out_and_says_who_holds_it(tmp_path):
    import subprocess
    import sys

    code = (f"from pathlib import Path; from spo_cli.outputs.files import FolderLock\n"
            f"with FolderLock(Path({str(tmp_path)!r}), 'spo batch'): pass")
    with files.FolderLock(tmp_path, "spo batch"):
        other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert other.returncode != 0
        assert "is in use by another spo run (spo batch, process" in other.stderr
        assert str(os.getpid()) in other.stderr
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0  # released on exit
    assert not (tmp_path / files.LOCK_INFO).exists()


def test_folder_lock_is_released_when_its_process_is_killed(tmp_path):
    import signal
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys, time; from pathlib import Path; from spo_cli.outputs.files import FolderLock\n"
                               f"with FolderLock(Path({str(tmp_path)!r}), 'spo batch'):\n"
                               "    print('held', flush=True); time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(UsageError):
        with files.FolderLock(tmp_path, "spo batch"):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with files.FolderLock(tmp_path, "spo batch"):  # no stale lock after a crash
        pass


@pytest.mark.parametrize("make, words", [
    (lambda p: p.symlink_to(p.name), "is a symbolic link loop, where spo keeps the lock"),
    (lambda p: p.mkdir(), "is a folder, where spo keeps the lock"),
])
def test_folder_lock_that_cannot_be_a_file_is_one_paragraph(tmp_path, make, words):
    make(tmp_path / files.LOCK)
    with pytest.raises(OutputError) as e:
        with files.FolderLock(tmp_path, "spo batch"):
            pass
    assert str(tmp_path / files.LOCK) in e.value.message and words in e.value.message
    assert "Remove it" in e.value.hint


@pytest.mark.parametrize("code, words", [
    (errno.EFBIG, "larger than this process may write (ulimit -f)"),
    (errno.EROFS, "/out/x.png is on a read-only file system"),
    (errno.ELOOP, "/out/x.png is a symbolic link loop"),
    (errno.EISDIR, "/out/x.png is a folder"),
])
def test_translate_what_the_file_system_refuses(code, words):
    err = errors.translate(OSError(code, os.strerror(code), "/out/x.png"))
    assert isinstance(err, OutputError) and err.exit_code == 1 and words in err.message, err
    assert err.hint


def test_atomic_write_names_the_file_a_write_error_stopped(tmp_path, monkeypatch):
    real_fdopen = os.fdopen
    monkeypatch.setattr(files.os, "fdopen", lambda *a, **k: _HalfWriter(real_fdopen(*a, **k)))
    with pytest.raises(OSError) as e:
        files.atomic_write(tmp_path / "image.png", b"x" * 10_000)
    assert e.value.filename == str(tmp_path / "image.png")  # not the temporary name, not None
    assert "image.png" in errors.translate(e.value).message


# ---------------------------------------------------------------------------------------------
# metadata: reading back what is damaged, foreign or a grid


def test_replaying_a_grid_names_its_cells(tmp_path):
    page = tmp_path / "fox-grid.png"
    page.write_bytes(metadata.encode_grid(make_image(), "fox-grid.json", ["cells/a/fox-s1.png", "cells/b/fox-s1.png"]))
    with pytest.raises(UsageError) as e:
        metadata.read(page)
    assert "is a comparison grid from `spo compare`" in e.value.message
    assert str(tmp_path / "cells/a/fox-s1.png") in e.value.hint


def good_meta(**changes) -> dict:
    meta = make_meta()
    meta.update(changes)
    return meta


@pytest.mark.parametrize("changes, words", [
    ({"prompt": ["a", "list"]}, "'prompt' must be a string, not list"),
    ({"prompt": 7}, "'prompt' must be a string, not int 7"),
    ({"seed": 4.5}, "'seed' must be a whole number, not 4.5"),
    ({"seed": "42"}, "'seed' must be a whole number"),
    ({"scheduler": "euler"}, "'scheduler' should be an object, not a string"),
    ({"scheduler": {"name": 5}}, "'scheduler.name' should be a string, not a number"),
    ({"model_request": None}, "'model_request' is missing or damaged"),
    ({"model_request": {"revision": None}}, "'model_request.model' is missing"),
    ({"dtype": "float8"}, "'dtype' cannot be 'float8'"),
    ({"steps": None}, "'steps' must be a whole number"),
    ({"guidance": float("nan")}, "'guidance' must be a finite number"),
    ({"generator_device": "tpu"}, "'generator_device' cannot be 'tpu'"),
])
def test_damaged_sidecar_values_are_named(changes, words):
    with pytest.raises(UsageError) as e:
        metadata.recorded_requests(good_meta(**changes), Path("shot.json"))
    assert e.value.message.startswith(f"shot.json: {words}"), e.value.message
    assert e.value.exit_code == 2


def test_recorded_requests_pin_the_commit_and_the_dtype():
    image, model = metadata.recorded_requests(make_meta("spo-lora"), Path("x.json"))
    assert (image.prompt, image.seed, image.steps) == ("a red fox in fresh snow, golden hour", 42, 50)
    assert (model.model, model.revision, model.lora_scale, model.dtype) == ("spo-lora", MERGED_COMMIT, 0.8, "float16")


def test_a_sidecar_from_before_0_2_records_a_lora_scale_without_a_lora():
    meta = make_meta()
    meta["model_request"]["lora_scale"] = 1.0  # what 0.1 wrote for every model
    _, model = metadata.recorded_requests(meta, Path("x.json"))
    assert model.lora_scale is None


def test_an_overwrite_that_fails_leaves_no_sidecar_claiming_the_old_image(tmp_path, monkeypatch):
    # The sidecar marks a pair finished: when a resumed run overwrites a pair and the new image cannot
    # be written, the old sidecar must already be gone, or a later resume would count the pair as done
    # with the new settings' hash... and the old settings' pixels.
    files.write_pair(tmp_path, "pic", "png", make_image(seed=1), make_meta(seed=1), overwrite=True)
    monkeypatch.setattr(files.os, "replace", _enospc)
    with pytest.raises(OSError):
        files.write_pair(tmp_path, "pic", "png", make_image(seed=2), make_meta(seed=2), overwrite=True)
    assert not (tmp_path / "pic.json").exists()
    assert files.finished_hash(tmp_path, "pic", "png") is None


# ---------------------------------------------------------------------------------------------
# metadata: reading what replay is pointed at, whatever it is


def _sidecar(tmp_path) -> tuple[Path, dict]:
    meta = make_meta()
    files.write_pair(tmp_path, "pic", "png", make_image(), meta)
    return tmp_path / "pic.json", dict(meta, file="pic.png")


def _png_by_hand(width: int, height: int, before: dict, after: dict) -> bytes:
    """A PNG of any claimed size, in a few hundred bytes: IHDR, text chunks, an IDAT that is never
    decoded, more text chunks, IEND."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    def itxt(key: str, text: str) -> bytes:
        return chunk(b"iTXt", key.encode() + b"\0\0\0\0\0" + text.encode())

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + b"".join(itxt(k, v) for k, v in before.items()) + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
            + b"".join(itxt(k, v) for k, v in after.items()) + chunk(b"IEND", b""))


@pytest.mark.parametrize("where", ["before", "after"])
@pytest.mark.parametrize("side", [10_000, 30_000])  # 100 Mpx: PIL's warning; 900 Mpx: PIL's error
def test_read_metadata_of_a_huge_png_reads_no_pixels_and_warns_nothing(tmp_path, side, where):
    import warnings

    meta = make_meta()
    chunks = {metadata.PNG_JSON_KEY: metadata.dumps(meta, indent=None)}
    path = tmp_path / "huge.png"
    path.write_bytes(_png_by_hand(side, side, chunks if where == "before" else {}, chunks if where == "after" else {}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert metadata.read(path) == meta


@pytest.mark.timeout(60)
def test_read_metadata_of_a_fifo_with_no_writer_does_not_hang(tmp_path):
    fifo = tmp_path / "x.json"
    os.mkfifo(fifo)
    with pytest.raises(UsageError) as e:
        metadata.read(fifo)
    assert "is a pipe that holds nothing" in e.value.message


@pytest.mark.timeout(60)
def test_read_metadata_of_a_pipe_whose_writer_never_writes_has_a_deadline(tmp_path, monkeypatch):
    from spo_cli.outputs import reader

    monkeypatch.setattr(reader, "PIPE_WAIT_S", 0.2)
    r, w = os.pipe()
    try:
        with pytest.raises(UsageError) as e:
            metadata.read(Path(f"/dev/fd/{r}"))
        assert "is a pipe that sent nothing more for 0.2 s" in e.value.message
    finally:
        os.close(r)
        os.close(w)


def _through_a_pipe(data: bytes):
    """/dev/fd/N of a pipe that a thread fills with `data`, as `<(cat file)` gives a command."""
    import threading

    r, w = os.pipe()

    def write():
        try:
            with os.fdopen(w, "wb") as f:
                f.write(data)
        except (BrokenPipeError, OSError):
            pass  # the reader stopped early: what it should do with too much

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return Path(f"/dev/fd/{r}"), r, thread


@pytest.mark.timeout(60)
@pytest.mark.parametrize("what", ["sidecar", "png"])
def test_read_metadata_through_a_pipe_like_process_substitution(tmp_path, what):
    sidecar, meta = _sidecar(tmp_path)
    source = sidecar if what == "sidecar" else tmp_path / "pic.png"
    path, r, thread = _through_a_pipe(source.read_bytes())
    try:
        found, params = metadata.load(path)
    finally:
        os.close(r)
        thread.join()
    assert (found, params) == (meta, None)


@pytest.mark.timeout(60)
def test_read_metadata_of_a_pipe_that_sends_too_much_stops(tmp_path):
    path, r, thread = _through_a_pipe(b" " * (3 << 20))
    try:
        with pytest.raises(UsageError) as e:
            metadata.read(path)
    finally:
        os.close(r)
        thread.join()
    assert "is larger than 1,048,576 bytes, more than any sidecar spo writes" in e.value.message


def test_read_metadata_of_a_real_process_substitution(tmp_path):
    import subprocess
    import sys

    sidecar, meta = _sidecar(tmp_path)
    code = "import sys, json; from spo_cli.outputs import metadata; print(metadata.read(sys.argv[1])['seed'])"
    r = subprocess.run(["bash", "-c", '"$0" -c "$1" <(cat "$2")', sys.executable, code, str(sidecar)],
                       capture_output=True, text=True, timeout=HANG)
    assert r.returncode == 0 and r.stdout.strip() == str(meta["seed"]), r.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize("make, words", [
    (lambda p: p.symlink_to("/dev/zero"), "is a device, not a file"),
    (lambda p: p.symlink_to(p.name), "is a symbolic link loop"),
    (lambda p: p.symlink_to("gone.json"), "is a symbolic link to gone.json, which does not exist"),
    (lambda p: p.mkdir(), "is a folder"),
])
def test_read_metadata_of_what_is_not_a_file(tmp_path, make, words):
    """In a process of its own with 1 GB of address space: reading /dev/zero whole must fail, not
    take the machine's memory, if the check that refuses devices ever goes."""
    import resource
    import subprocess
    import sys

    path = tmp_path / "x.json"
    make(path)
    code = ("import sys\nfrom spo_cli.errors import UsageError\nfrom spo_cli.outputs import metadata\n"
            "try:\n    metadata.read(sys.argv[1])\nexcept UsageError as e:\n    print(e.exit_code, e.message)")
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=50,
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30)))
    assert r.stdout.startswith("2 ") and words in r.stdout, r.stdout + r.stderr


def test_a_jpeg_named_png_is_read_as_the_jpeg_it_is(written, tmp_path):
    folder, meta = written
    lone = tmp_path / "lone"
    lone.mkdir()
    (folder / "pic-jpg.jpg").rename(lone / "photo.png")  # no sidecar beside it any more
    found, params = metadata.load(lone / "photo.png")
    assert found is None and params == metadata.a1111_parameters(meta)  # its EXIF, as for a .jpg
    Image.new("RGB", (8, 8)).save(lone / "plain.png", format="JPEG")
    with pytest.raises(UsageError) as e:
        metadata.read(lone / "plain.png")
    assert "carries no spo-cli metadata and has no sidecar next to it (it is a JPEG, named .png)" in e.value.message
    (lone / "notes.png").write_text('{"schema": "spo-cli/1"}')
    with pytest.raises(UsageError) as e:
        metadata.read(lone / "notes.png")
    assert "could not be read as an image (it is neither a PNG, a JPEG nor a WebP, named .png)" in e.value.message


@pytest.mark.parametrize("make, words", [
    (lambda p: os.mkfifo(p), "is a pipe that holds nothing"),
    (lambda p: p.symlink_to("/dev/zero"), "is a device, not a file"),
    (lambda p: p.symlink_to(p.name), "is a symbolic link loop"),
])
def test_replay_of_what_is_not_a_file_is_one_paragraph(tmp_path, make, words):
    """The real command, in a process of its own with bounded memory and time (a regression would
    hang on the FIFO or read /dev/zero for ever)."""
    import resource
    import subprocess
    import sys

    path = tmp_path / "x.json"
    make(path)
    r = subprocess.run([sys.executable, "-m", "spo_cli", "replay", str(path), "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=100,
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30)))
    assert r.returncode == 2 and words in " ".join(r.stderr.split()), r.stderr
    assert "Traceback" not in r.stderr and r.stderr.count("error: ") == 1


def test_read_metadata_png_chunks_are_checked_and_end_at_iend(tmp_path):
    meta = make_meta()
    good = _png_by_hand(64, 64, {metadata.PNG_JSON_KEY: metadata.dumps(meta, indent=None)}, {})
    path = tmp_path / "pic.png"
    path.write_bytes(good + b"\0\0\0\x04\x01\x02\x03\x04 trailing bytes, no chunk")  # some tools append: ignored
    assert metadata.read(path) == meta
    at = good.index(b'"prompt"')
    path.write_bytes(good[:at] + b"X" + good[at + 1:])  # one byte of the chunk changed: its CRC fails
    with pytest.raises(UsageError) as e:
        metadata.read(path)
    assert "a damaged PNG: a damaged iTXt chunk (its CRC does not match)" in e.value.message


def test_read_metadata_of_a_huge_jpeg_reads_its_header_only(tmp_path):
    """A JPEG whose header says 10000×10000 (PIL warns of a decompression bomb at open): its EXIF is
    read, and nothing is said about pixels replay never decodes."""
    import warnings

    exif = Image.Exif()
    exif.get_ifd(metadata.EXIF_IFD)[metadata.EXIF_USER_COMMENT] = b"UNICODE\0" + "a cat\nSteps: 3".encode("utf-16-be")
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="JPEG", exif=exif.tobytes())
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = (10000).to_bytes(2, "big") * 2  # height, width
    path = tmp_path / "huge.jpg"
    path.write_bytes(bytes(data))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert metadata.load(path) == (None, "a cat\nSteps: 3")


def test_replay_reads_a_process_substitution_once(tmp_path):
    """`spo replay <(cat x.json)`: the sidecar's settings are read (here, on to a --model folder that
    does not exist, refused before any model loads)."""
    import subprocess
    import sys

    sidecar, _ = _sidecar(tmp_path)
    r = subprocess.run(["bash", "-c", '"$0" -m spo_cli replay <(cat "$1") --model "$2" --out "$3"', sys.executable,
                        str(sidecar), str(tmp_path / "no-such-model"), str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=HANG)
    said = " ".join(r.stderr.split())
    assert r.returncode == 2 and "no-such-model" in said and "Traceback" not in said, r.stderr
    assert "pipe" not in said and "/dev/fd" not in said


def test_read_metadata_png_text_bounds_and_the_header(tmp_path):
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    good = _png_by_hand(8, 8, {}, {})
    # An iTXt 'parameters' of 10 kB that inflates to 10 MB: passed over, not inflated whole.
    bomb = chunk(b"iTXt", b"parameters\0\1\0\0\0" + zlib.compress(b"a" * (10 << 20), 9))
    path = tmp_path / "bomb.png"
    path.write_bytes(good[:33] + bomb + good[33:])
    with pytest.raises(UsageError) as e:
        metadata.load(path)
    assert "carries no spo-cli metadata" in e.value.message
    # A PNG's first chunk is its IHDR: text first is not a PNG.
    path.write_bytes(good[:8] + chunk(b"tEXt", b"parameters\0a cat") + good[8:])
    with pytest.raises(UsageError) as e:
        metadata.load(path)
    assert "a damaged PNG: no IHDR header" in e.value.message
