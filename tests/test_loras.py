"""LoRAs as people name them, without a model: `--lora SPEC[:SCALE]` (repeatable), A1111's
`<lora:name:te[:unet]>` tags in a LoRA folder, the sidecar's LoRA records, A1111's `Lora hashes`."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spo_cli import loras, validate
from spo_cli.cli import app
from spo_cli.cli import options
from spo_cli.errors import EXIT_USAGE, UsageError
from spo_cli.outputs import metadata
from spo_cli.request import ImageRequest, LoraRequest, ModelRequest
from spo_cli.serve import api


def refused(fn, *args, **kw) -> str:
    with pytest.raises(UsageError) as e:
        fn(*args, **kw)
    return e.value.message + " " + (e.value.hint or "")


# ---------------------------------------------------------------------------------------------
# --lora SPEC[:SCALE]


@pytest.mark.parametrize("text, spec, scale", [
    ("style.safetensors", "style.safetensors", None),
    ("style.safetensors:0.7", "style.safetensors", 0.7),
    ("/x/style.safetensors:-0.25", "/x/style.safetensors", -0.25),
    ("style.safetensors:1e-1", "style.safetensors", 0.1),
    ("org/name:.5", "org/name", 0.5),
    ("C:\\loras\\a.safetensors", "C:\\loras\\a.safetensors", None),  # a drive letter is no strength
    ("a:b.safetensors", "a:b.safetensors", None),
    (":0.5", ":0.5", None),
])
def test_lora_spec_and_its_strength(text, spec, scale):
    assert loras.split_spec(text) == (spec, scale)


@pytest.mark.parametrize("text", ["a.safetensors:inf", "a.safetensors:nan", "a.safetensors:-Infinity",
                                  "a.safetensors:", "x:", "name: "])
def test_a_strength_that_is_no_finite_number_is_named_as_one(text, tmp_path, monkeypatch):
    # Before: all of it was taken as the spec, and the message said it was no Hub repo id.
    monkeypatch.chdir(tmp_path)
    message = refused(loras.split_spec, text)
    assert ("no strength after the last ':'." in message if text.endswith((":", ": ")) else
            "after the last ':', " in message and "is not a finite number" in message) and "FILE:0.8" in message
    (tmp_path / text).write_bytes(b"x")  # a file of that very name is what it names
    assert loras.split_spec(text) == (text, None)


def test_one_lora_is_what_it_was_before_stacking():
    assert loras.from_options(["a.safetensors"], None, 0.8) == ("a.safetensors", 0.8, ())
    assert loras.from_options(["a.safetensors:0.8"], None, None) == ("a.safetensors", 0.8, ())
    assert loras.from_options(["org/x"], "w.safetensors", None) == ("org/x", None, ())
    assert loras.from_options(None, None, 0.5) == (None, 0.5, ())  # spo-lora's --lora-scale


def test_several_loras_stack_each_with_its_strength():
    first, scale, extras = loras.from_options(["a.safetensors:0.7", "b.safetensors:-0.4", "c.safetensors"], None, None)
    assert (first, scale) == ("a.safetensors", 0.7)
    assert extras == (LoraRequest("b.safetensors", -0.4), LoraRequest("c.safetensors", 1.0))


@pytest.mark.parametrize("values, lora_file, scale, words", [
    (["a.safetensors:0.5"], None, 0.7, "both set the LoRA's strength"),
    (["a.safetensors", "b.safetensors"], None, 0.7, "not clear which it is for"),
    (["org/a", "b.safetensors"], "w.safetensors", None, "not clear which repo it is in"),
    (["a.safetensors", "a.safetensors:0.5"], None, None, "is given twice"),
    ([f"l{i}.safetensors" for i in range(validate.LORAS_MAX + 1)], None, None, f"at most {validate.LORAS_MAX}"),
    (["x" * (validate.PATH_MAX_CHARS + 1)], None, None, "characters long"),
    (["a.safetensors:1e999"], None, None, "strength after the last ':' is not a finite number"),
])
def test_ambiguous_lora_options_are_refused(values, lora_file, scale, words):
    assert words in refused(loras.from_options, values, lora_file, scale)


def test_model_request_keeps_one_lora_as_before_and_stacks_more(tmp_path):
    one, _ = options.model_request(model="base", lora=["a.safetensors:0.5"])
    assert one == options.model_request(model="base", lora="a.safetensors", lora_scale=0.5)[0]
    assert one.loras == () and one.lora_dir is None
    two, warnings = options.model_request(model="base", lora=["a.safetensors", "b.safetensors:3"],
                                          lora_dir=str(tmp_path))
    assert two.lora == "a.safetensors" and two.loras == (LoraRequest("b.safetensors", 3.0),)
    assert two.lora_dir == str(tmp_path.resolve())
    assert warnings and "--lora b.safetensors: strength 3 is outside ±2" in warnings[0]
    assert "no such folder" in refused(options.model_request, model="base", lora_dir=str(tmp_path / "nope"))
    (tmp_path / "f").write_text("")
    assert "not a folder" in refused(options.model_request, model="base", lora_dir=str(tmp_path / "f"))


# ---------------------------------------------------------------------------------------------
# <lora:name:te[:unet]> as A1111 reads it


@pytest.mark.parametrize("prompt, found", [
    ("a fox <lora:detail>", [("detail", 1.0, 1.0)]),
    ("a fox <lora:detail:0.6>", [("detail", 0.6, 0.6)]),
    ("<lora:detail:0.6:0.2> fox", [("detail", 0.6, 0.2)]),
    ("<lora:d:te=0.3:unet=0.7>", [("d", 0.3, 0.7)]),
    ("<lora:d:0.5:unet=0.1>", [("d", 0.5, 0.1)]),
    ("<lora:d:0.5:0.4:8>", [("d", 0.5, 0.4)]),  # dyn (the 4th) is for LyCORIS' dynamic dims: no effect here
    ("<lora:my style v2:0.5>, <hypernet:h:1> <lora:b:-1>", [("my style v2", 0.5, 0.5), ("b", -1.0, -1.0)]),
    ("<hypernet:h:1> and plain text", []),
])
def test_lora_tags_are_read_as_a1111_reads_them(prompt, found):
    assert loras.tags(prompt) == found


@pytest.mark.parametrize("prompt", ["<lora:d:x>", "<lora:d:0.5:y>", "<lora:d:te=one>", "<lora:d:nan>",
                                    "<lora:d:inf>", "<lora:d:1e999>", "<lora:d:1:unet=-1e400>"])
def test_a_tag_weight_that_is_no_number_is_refused_naming_the_tag(prompt):
    message = refused(loras.tags, prompt, validate.Where("p.txt:3"))
    assert message.startswith(f"p.txt:3: '{prompt}' has the weight") and "<lora:name:0.8>" in message


@pytest.fixture
def lora_dir(tmp_path) -> Path:
    folder = tmp_path / "loras"
    folder.mkdir()
    for name in ("detail", "my style v2"):
        (folder / f"{name}.safetensors").write_bytes(b"x")
    (folder / "old.ckpt").write_bytes(b"pickle")
    (tmp_path / "secret.safetensors").write_bytes(b"x")
    return folder


def test_a_tag_loads_name_safetensors_from_the_folder(lora_dir):
    got = loras.from_tags("a <lora:detail:0.6> b <lora:my style v2:0.5:0.25>", str(lora_dir))
    assert got == (LoraRequest(str(lora_dir / "detail.safetensors"), 0.6, None, "detail"),
                   LoraRequest(str(lora_dir / "my style v2.safetensors"), 0.5, 0.25, "my style v2"))


@pytest.mark.parametrize("name", ["../secret", "..", ".", "/etc/passwd", "sub/x", "a\\b", " ", "\0",
                                  "x" * (validate.LORA_NAME_MAX_CHARS + 1)])
def test_a_tag_name_never_leaves_the_folder(lora_dir, name):
    message = refused(loras.from_tags, f"a <lora:{name}:1>", str(lora_dir))
    assert "does not name a file of the LoRA folder" in message


def test_a_missing_lora_is_refused_with_what_the_folder_holds(lora_dir):
    message = refused(loras.from_tags, "a <lora:old:1>", str(lora_dir))  # only .safetensors: never a pickle
    assert "has no 'old.safetensors'" in message and "LoRAs there: detail, my style v2." in message
    assert "named twice" not in refused(loras.from_tags, "<lora:detail><lora:detail:0.5>", str(lora_dir))
    assert "the LoRA 'detail' twice" in refused(loras.from_tags, "<lora:detail><lora:detail:0.5>", str(lora_dir))


def test_prompt_loras_join_the_request_and_plain_prompts_keep_tags_as_text(lora_dir):
    request = ModelRequest(model="base", lora_dir=str(lora_dir))
    tagged = ImageRequest("a <lora:detail:0.6>", 1)
    got = loras.with_prompt_loras(request, [tagged, tagged])
    assert got.loras == (LoraRequest(str(lora_dir / "detail.safetensors"), 0.6, None, "detail"),)
    assert loras.from_command_line(got) == request  # what a sidecar records as asked: tags are found again
    plain = ImageRequest("a <lora:detail:0.6>", 1, prompt_syntax="plain")
    assert loras.with_prompt_loras(request, [plain]) == request
    assert loras.with_prompt_loras(ModelRequest(model="base"), [tagged]) == ModelRequest(model="base")


def test_prompts_that_name_different_loras_are_refused_in_one_run(lora_dir):
    request = ModelRequest(model="base", lora_dir=str(lora_dir))
    images = [ImageRequest("a <lora:detail:0.6>", 1), ImageRequest("b <lora:detail:0.6>", 2),
              ImageRequest("c <lora:detail:0.7>", 3)]
    lines = {id(images[0]): "p.txt:1", id(images[1]): "p.txt:2", id(images[2]): "p.txt:5"}
    message = refused(loras.with_prompt_loras, request, images, lambda im: validate.Where(lines[id(im)]))
    assert message.startswith("p.txt:5: the prompt asks for <lora:detail:0.7>, but p.txt:1: <lora:detail:0.6>")
    assert "a prompt file of their own" in message
    message = refused(loras.with_prompt_loras, request, [images[0], ImageRequest("untagged", 1)])
    assert "asks for no LoRA tag, but an earlier prompt: <lora:detail:0.6>" in message


def test_batch_refuses_mixed_lora_lines_before_loading_anything(lora_dir, tmp_path):
    prompts_file = tmp_path / "p.txt"
    prompts_file.write_text("a fox <lora:detail:0.5>\na cat\n")
    r = CliRunner().invoke(app, ["batch", str(prompts_file), "--model", "base", "--lora-dir", str(lora_dir),
                                 "--out", str(tmp_path / "o")])
    assert r.exit_code == EXIT_USAGE, r.output
    assert "p.txt:2: the prompt asks for no LoRA tag, but" in " ".join(r.output.split())
    assert not (tmp_path / "o").exists()


def test_generate_refuses_a_missing_tag_lora_from_spo_lora_dir(lora_dir, tmp_path):
    r = CliRunner().invoke(app, ["generate", "a fox <lora:nope:0.5>", "--model", "base", "--out", str(tmp_path / "o")],
                           env={"SPO_LORA_DIR": str(lora_dir)})
    assert r.exit_code == EXIT_USAGE and "has no 'nope.safetensors'" in " ".join(r.output.split()), r.output


# ---------------------------------------------------------------------------------------------
# Records: the sidecar's LoRAs, A1111's Lora hashes, replay's reading back


def _safetensors(path: Path, header: dict, body: bytes) -> None:
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + body)


def test_file_hashes_are_sha256_and_a1111s_hash_without_the_header(tmp_path):
    path = tmp_path / "a.safetensors"
    body = bytes(range(256)) * 5000  # more than one read of 1 MiB
    _safetensors(path, {"__metadata__": {"ss_output_name": "a"}}, body)
    whole, a1111 = loras.file_hashes(path)
    assert whole == hashlib.sha256(path.read_bytes()).hexdigest()
    assert a1111 == hashlib.sha256(body).hexdigest()  # sd-webui-additional-networks' addnet hash
    # Other metadata, same tensors: A1111's hash stays (that is what it is for), the file's changes.
    other = tmp_path / "b.safetensors"
    _safetensors(other, {"__metadata__": {"ss_output_name": "renamed"}}, body)
    assert loras.file_hashes(other)[1] == a1111 and loras.file_hashes(other)[0] != whole
    (tmp_path / "c.safetensors").write_bytes(struct.pack("<Q", 10**12) + b"x")
    assert loras.file_hashes(tmp_path / "c.safetensors")[1] is None


def test_a1111_text_lists_stacked_loras_as_lora_hashes():
    meta = {"prompt": "a fox <lora:detail:0.6>", "steps": 3, "guidance": 5.0, "seed": 1, "width": 64, "height": 64,
            "scheduler": {"a1111": "Euler", "class": "EulerDiscreteScheduler"}, "model": {"id": "org/base"},
            "versions": {"spo-cli": "0"}, "lora": None,
            "loras": [{"name": "a, b:c", "a1111_hash": "0123456789ab"},
                      {"name": "detail", "a1111_hash": "ba9876543210"}]}
    text = metadata.a1111_parameters(meta)
    assert 'Lora hashes: "a bc: 0123456789ab, detail: ba9876543210"' in text
    assert "Lora hashes" not in metadata.a1111_parameters({**meta, "loras": None})


def _sidecar(**request) -> dict:
    return {"schema": metadata.SCHEMA, "prompt": "a fox", "negative_prompt": None, "seed": 1, "steps": 3,
            "guidance": 5.0, "width": 64, "height": 64, "generator_device": "cpu",
            "scheduler": {"name": "default", "class": "EulerDiscreteScheduler", "a1111": "Euler"},
            "model_request": {"model": "base", "revision": None, "lora": "a.safetensors", "lora_file": None,
                              "lora_scale": 0.5, "vae": None, "dtype": "auto", **request},
            "model": {"id": "org/base", "source": "local"}, "lora": {"id": "a"}, "dtype": "float32"}


def test_recorded_stacked_loras_are_read_back_checked():
    _, request = metadata.recorded_requests(_sidecar(loras=[{"spec": "b.safetensors", "scale": -0.5},
                                                            {"spec": "c.safetensors", "scale": 1, "unet_scale": 0.2}],
                                                     lora_dir="/l"), Path("x.json"))
    assert request.loras == (LoraRequest("b.safetensors", -0.5), LoraRequest("c.safetensors", 1.0, 0.2))
    assert request.lora_dir == "/l" and request.lora_scale == 0.5
    for bad, words in [("b", "'loras' must be a list"), ([{"spec": 5, "scale": 1}], "'loras' must be a string"),
                       ([{"spec": "b", "scale": "1"}], "'loras' must be a number"),
                       ([{"spec": "b", "scale": 1, "evil": 1}], "holds an entry"),
                       ([{"spec": "b", "scale": 1}] * (validate.LORAS_MAX + 1), "at most")]:
        message = refused(metadata.recorded_requests, _sidecar(loras=bad), Path("x.json"))
        assert message.startswith("x.json: ") and words in message, message


# ---------------------------------------------------------------------------------------------
# spo serve: tags are taken out, with a warning in the answer


def test_serve_strips_lora_tags_with_a_warning_in_the_answer():
    ctx = api.Context(("spo",), max_images=8)
    job, _ = api.a1111_job({"prompt": "a fox <lora:detail:0.6>"}, ctx)
    assert job.images[0].prompt == "a fox <lora:detail:0.6>"  # taken out when encoded, as A1111 does
    [warning] = [w for w in job.warnings if "<lora:" in w]
    assert "not loaded: here spo loads no LoRA named in a prompt" in warning
    assert api.a1111_info(job, [], ["x"], "spo")["warnings"] == list(job.warnings)
    assert not [w for w in api.openai_job({"prompt": "a fox"}, ctx).warnings if "LoRA" in w]


def test_stacked_loras_enter_the_spec_hash_and_one_lora_keeps_its_old_identity(tmp_path):
    from spo_cli.resolve.model import ResolvedModel
    from spo_cli.resolve.parts import Resolved

    pipeline = Resolved("org/base", "hub", tmp_path, commit="c" * 40)
    a = Resolved(str(tmp_path / "a.safetensors"), "local", tmp_path / "a.safetensors", file="a.safetensors")
    one = ResolvedModel(ModelRequest(model="base", lora=a.id), None, pipeline, "float32", a)
    assert set(one.identity()) == {"model", "lora", "lora_scale", "vae", "dtype"}  # as before stacking
    two = ResolvedModel(ModelRequest(model="base", lora=a.id), None, pipeline, "float32", a,
                        extra_loras=((a, LoraRequest(a.id, 0.5)),))
    other = ResolvedModel(ModelRequest(model="base", lora=a.id), None, pipeline, "float32", a,
                          extra_loras=((a, LoraRequest(a.id, 0.5, 0.2)),))
    image = ImageRequest("a fox", 1)
    hashes = {image.spec_hash(m.identity()) for m in (one, two, other)}
    assert len(hashes) == 3  # a resumed batch never takes an image made with other LoRAs for finished


def test_the_spo_loras_repo_needs_no_lora_file_offline_under_any_model(monkeypatch):
    from huggingface_hub import constants

    from spo_cli import presets
    from spo_cli.resolve import model

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    model.precheck(ModelRequest(model="base", lora=presets.SPO_LORA))  # its file is known: no listing needed
    model.precheck(ModelRequest(model="base", loras=(LoraRequest(presets.SPO_LORA, 0.5),)))
    assert "--lora-file" in refused(model.precheck, ModelRequest(model="base", lora="someorg/other-lora"))
    assert "path of its .safetensors" in refused(model.precheck, ModelRequest(
        model="base", loras=(LoraRequest("someorg/other-lora", 0.5),)))


def test_names_from_a_hostile_prompt_or_folder_are_quoted_in_messages(lora_dir):
    (lora_dir / "evil\x1b[2J.safetensors").write_bytes(b"x")
    message = refused(loras.from_tags, "a <lora:x\x1b[31m:1>", str(lora_dir))
    assert "\x1b" not in message and "evil" not in message  # the escape shown as one, the odd file name left out
    message = refused(loras.from_tags, "<lora:a\x1b:1><lora:a\x1b:1>", str(lora_dir))
    assert "\x1b" not in message


@pytest.mark.parametrize("content, words", [
    (b"notlora", "not a whole safetensors file (7 bytes, too short"),
    (struct.pack("<Q", 2**63) + b"{}", "not a whole safetensors file (its header length is impossible"),
    (struct.pack("<Q", 5) + b"[1,2]", "not a whole safetensors file (its header is not a JSON object"),
    (struct.pack("<Q", 60) + b'{"unet.conv.weight":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'[:60]
     + b"\0" * 4, "not a whole safetensors file"),
])
def test_a_lora_file_that_is_no_safetensors_is_refused_as_a_lora_before_loading(tmp_path, content, words):
    # Before: "The copy of '<its folder>' on this machine is damaged … Save or copy the folder again",
    # exit 1, after PyTorch started.
    from spo_cli.resolve import model

    path = tmp_path / "style.safetensors"
    path.write_bytes(content)
    for request in (ModelRequest(model="base", lora=str(path)),
                    ModelRequest(model="base", loras=(LoraRequest(str(path), 0.5),))):
        message = refused(model.precheck, request)
        assert message.startswith(f"LoRA file {path} is ") and words in message, message


def test_a_safetensors_file_with_no_lora_weights_is_refused_before_loading(tmp_path):
    # Before: the pipeline loaded, then "'…' could not be loaded: ValueError: Invalid LoRA checkpoint …
    # spo loads standard diffusers SDXL folders".
    from spo_cli.resolve import model

    path = tmp_path / "vae.safetensors"
    _safetensors(path, {"decoder.conv_in.weight": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                        "__metadata__": {"format": "pt"}}, b"\0" * 4)
    message = refused(model.precheck, ModelRequest(model="base", lora=str(path)))
    assert f"LoRA file {path} holds no LoRA weights" in message and "--model" in message
    lora = tmp_path / "ok.safetensors"
    _safetensors(lora, {"lora_unet_down_blocks_0.alpha": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]}},
                 b"\0" * 4)
    model.precheck(ModelRequest(model="base", lora=str(lora)))  # kohya's names are a LoRA's too


def test_a_tag_naming_a_fifo_or_a_broken_link_says_what_it_is_and_lists_only_files(lora_dir):
    # Before: "the LoRA folder has no 'pipe.safetensors'. LoRAs there: detail, my style v2, pipe, …",
    # naming as there what it had just said was not.
    import os

    os.mkfifo(lora_dir / "pipe.safetensors")
    (lora_dir / "gone.safetensors").symlink_to(lora_dir / "nowhere.safetensors")
    (lora_dir / "sub.safetensors").mkdir()
    for name in ("pipe", "gone", "sub"):
        message = refused(loras.from_tags, f"a <lora:{name}:1>", str(lora_dir))
        assert f"'{name}.safetensors' is not a file (a folder, a FIFO or a link to nothing)" in message, message
        assert "LoRAs there: detail, my style v2." in message
    assert "LoRAs there: detail, my style v2." in refused(loras.from_tags, "<lora:nope:1>", str(lora_dir))


def test_a_sidecar_that_stacks_one_lora_twice_is_refused_as_the_command_line_is(tmp_path):
    # Before: replay stacked it twice (the same file as two adapters), where --lora refuses it.
    twice = [{"spec": "b.safetensors", "scale": 0.5}, {"spec": "b.safetensors", "scale": 0.3}]
    message = refused(metadata.recorded_requests, _sidecar(loras=twice), Path("x.json"))
    assert message.startswith("x.json: 'loras' names b.safetensors twice") and "Give each LoRA once" in message
    again = [{"spec": "a.safetensors", "scale": 0.3}]  # the first LoRA is the sidecar's "lora"
    assert "names a.safetensors twice" in refused(metadata.recorded_requests, _sidecar(loras=again), Path("x.json"))
    metadata.recorded_requests(_sidecar(loras=[{"spec": "b.safetensors", "scale": 0.5}]), Path("x.json"))


def test_one_file_named_two_ways_is_still_given_twice(lora_dir, monkeypatch):
    # Before: './x' beside 'x', or a tag naming the --lora file, stacked one file as two adapters.
    monkeypatch.chdir(lora_dir.parent)
    message = refused(loras.from_options, ["loras/detail.safetensors", "./loras/detail.safetensors:0.5"], None, None)
    assert "is given twice" in message
    (lora_dir / "link.safetensors").symlink_to(lora_dir / "detail.safetensors")
    assert "is given twice" in refused(loras.from_options, ["loras/detail.safetensors", "loras/link.safetensors"],
                                       None, None)
    request = ModelRequest(model="base", lora="loras/detail.safetensors", lora_dir=str(lora_dir))
    message = refused(loras.with_prompt_loras, request, [ImageRequest("a <lora:detail:0.6>", 1)])
    assert message.startswith("'<lora:detail:0.6>' names the file that --lora loads already") and "once" in message
    stacked = ModelRequest(model="base", loras=(LoraRequest("loras/detail.safetensors", 0.5),), lora_dir=str(lora_dir))
    assert "--lora loads already" in refused(loras.with_prompt_loras, stacked, [ImageRequest("a <lora:detail>", 1)])
    other = ModelRequest(model="base", lora="loras/my style v2.safetensors", lora_dir=str(lora_dir))
    assert loras.with_prompt_loras(other, [ImageRequest("a <lora:detail:0.6>", 1)]).loras[0].name == "detail"


@pytest.mark.parametrize("spec", ["spo-lora", "base"])
def test_a_model_preset_given_as_a_lora_is_named_as_one(spec, tmp_path, monkeypatch):
    # Before: "'spo-lora' is neither a preset, … Presets: spo, spo-lora, base." (a preset, listed as one)
    from spo_cli.resolve import model

    monkeypatch.chdir(tmp_path)
    for request in (ModelRequest(model="base", lora=spec), ModelRequest(model="base", loras=(LoraRequest(spec, 1),))):
        message = refused(model.precheck, request)
        assert message.startswith(f"--lora {spec}: '{spec}' is a model preset, not a LoRA") and "--model" in message
    assert "Presets:" not in refused(model.precheck, ModelRequest(model="base", lora="x:y:z"))


def test_a_missing_relative_lora_says_where_it_was_looked_for(tmp_path, monkeypatch):
    # Before: "LoRA file /elsewhere/loras/a.safetensors does not exist." and nothing more: a sidecar records
    # --lora as given, so replaying from another folder missed it with no word why.
    from spo_cli.resolve import model

    monkeypatch.chdir(tmp_path)
    message = refused(model.precheck, ModelRequest(model="base", lora="loras/a.safetensors"))
    assert f"LoRA file {tmp_path / 'loras/a.safetensors'} does not exist" in message
    assert "'loras/a.safetensors' is relative to the current folder" in message and "replay" in message
    message = refused(model.precheck, ModelRequest(model="base", lora=str(tmp_path / "b.safetensors")))
    assert "is relative to the current folder" not in message
