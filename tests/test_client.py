"""`--server`: the client believes nothing a server says until it has checked it.

Every test runs the real CLI in process against `LyingServer` (tests/lying_server.py), which answers
as `spo serve` does except for the one lie a test sets. No pipeline and no torch: the fast tier.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lying_server import (LyingServer, drip_answer, honest_models, json_answer, models_lie, png, raw_answer,
                          redirect, run_lie, stream_answer, wire)
from spo_cli.cli import app
from spo_cli.outputs import metadata
from spo_cli.serve import client

NOT_SPO = "answered, but not as `spo serve` does"
ARGS = ["a fox", "-n", "2", "--batch-size", "2", "--seed", "42", "--width", "64", "--height", "64", "--steps", "2"]


@pytest.fixture(autouse=True)
def no_token(monkeypatch):
    monkeypatch.delenv("SPO_TOKEN", raising=False)


@pytest.fixture
def lying():
    with LyingServer() as server:
        yield server


def generate(url: str, out: Path, *extra: str):
    return CliRunner().invoke(app, ["generate", *ARGS, "--server", url, "--out", str(out), *extra])


def error_of(r) -> str:
    """The error paragraph, on one line; asserts that it is one paragraph and nothing worse."""
    assert "Traceback" not in r.output and "Unexpected" not in r.output, r.output
    assert r.output.count("error: ") == 1, r.output
    text = r.output[r.output.index("error: "):].strip()
    assert "\n\n" not in text, text
    return " ".join(text.split())


def nothing_written(out: Path) -> bool:
    return not out.exists() or not any(out.iterdir())


def test_an_honest_server_writes_the_files_and_replay_reads_them(lying, tmp_path):
    r = generate(lying.url, tmp_path / "out", "--json", "--quiet")
    assert r.exit_code == 0, r.output
    written = json.loads(r.stdout)
    assert [w["seed"] for w in written] == [42, 43]
    for w in written:
        meta = metadata.read(Path(w["sidecar"]))
        assert (meta["width"], meta["height"]) == (64, 64)
        image, model = metadata.recorded_requests(meta, Path(w["sidecar"]))
        assert (image.seed, model.model) == (w["seed"], "spo")


def test_a_server_that_answers_a_byte_at_a_time_is_cut_off_at_the_deadline(lying, tmp_path, monkeypatch):
    # Each byte comes well inside the per-read timeout; only a deadline on the whole answer ends it. The
    # server gives up after 1,000 bytes (50 s), so a client without a deadline fails here, not hangs.
    monkeypatch.setattr(client, "HELLO_TIMEOUT_S", 0.5)
    lying.answers["/spo/v1/models"] = drip = drip_answer(0.05, 1000)
    r = generate(lying.url, tmp_path / "out")
    assert r.exit_code != 0
    assert "cannot be reached: no answer within 0.5 s" in error_of(r)
    assert drip.dripped < 1000  # the client hung up, the server did not
    assert nothing_written(tmp_path / "out")


def deep(n: int) -> bytes:
    return b"[" * n + b"]" * n


def models(change):
    return "/spo/v1/models", models_lie(change)


def run(change):
    return "/spo/v1/run", run_lie(change)


def model(**changes):
    return models(lambda a: a["models"]["spo"].update(changes))


def describe(**changes):
    return models(lambda a: a["models"]["spo"]["describe"].update(changes))


def image(n: int = 0, **changes):
    return run(lambda a: a["images"][n].update(changes))


def meta(**changes):
    return run(lambda a: a["images"][0]["meta"].update(changes))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def bomb() -> bytes:
    """A PNG whose header claims 30000×30000 pixels, in a few hundred bytes."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress(b"\0" * (30000 * 3 + 1) * 4)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


MODELS = "/spo/v1/models"
LIES = [
    # Not JSON, or JSON that would hurt to parse.
    pytest.param(MODELS, raw_answer(b"\x00\xffgarbage"), "not JSON", id="garbage"),
    pytest.param(MODELS, raw_answer(b"<html>hello</html>"), "not JSON", id="html"),
    pytest.param(MODELS, raw_answer(b'{"ready": "\xff"}'), "not UTF-8", id="not-utf8"),
    pytest.param(MODELS, raw_answer(b'{"ready": NaN}'), "NaN is not JSON", id="nan"),
    pytest.param(MODELS, raw_answer(b'{"ready": 1' + b"1" * 5000 + b"}"), "not JSON", id="huge-int"),
    pytest.param(MODELS, raw_answer(deep(200_000)), "nested more than 32 deep", id="deep-200000"),
    pytest.param(MODELS, raw_answer(b'{"a": ' + deep(40) + b"}"), "nested more than 32 deep", id="deep-41"),
    pytest.param(MODELS, raw_answer(b"[]"), "answered an array, not a JSON object", id="array"),
    pytest.param(MODELS, raw_answer(b"{}", length=3_000_000_000),
                 "announced 3,000,000,000 bytes for /spo/v1/models, more than the 4,194,304", id="3GB-declared"),
    pytest.param(MODELS, stream_answer(256 << 20), "sent more than 4,194,304 bytes", id="3GB-streamed"),
    pytest.param(MODELS, raw_answer(b"{}", length=1000), "announced 1,000 bytes for /spo/v1/models but sent 2",
                 id="cut-short"),
    pytest.param(MODELS, wire(b"HELLO THERE\r\n\r\n"), "not HTTP", id="no-status-line"),
    # The models answer, one field wrong.
    pytest.param(*models(lambda a: a.pop("models")), "models is missing", id="no-models"),
    pytest.param(*models(lambda a: a.update(models=[])), "models is an array, not an object", id="models-list"),
    pytest.param(*models(lambda a: a.update(ready="yes")), "ready is a string, not true or false", id="ready-str"),
    pytest.param(*models(lambda a: a["models"].update(spo="x")), '["spo"] is a string', id="model-str"),
    pytest.param(*models(lambda a: a["models"]["spo"].pop("describe")), "describe is missing", id="no-describe"),
    pytest.param(*model(default_size=["a", "b"]), 'default_size is ["a", "b"]', id="size-strings"),
    pytest.param(*model(default_size=[64]), "default_size is [64]", id="size-one"),
    pytest.param(*model(default_size=[60, 64]), "multiples of 8", id="size-60"),
    pytest.param(*model(dtype=5), "dtype is a number, not a string", id="dtype-int"),
    pytest.param(*model(dtype="float64"), "not one of float16", id="dtype-float64"),
    pytest.param(*model(facts={"device": "cpu", "dtype": "float16"}), "versions is missing", id="no-versions"),
    pytest.param(*models(lambda a: a["models"]["spo"]["facts"].update(dtype="float32")),
                 "facts.dtype is 'float32', but /spo/v1/models: models[\"spo\"].dtype is 'float16'", id="two-dtypes"),
    pytest.param(*describe(model={"id": 5, "source": "hub"}), "model.id is a number", id="id-int"),
    pytest.param(*describe(seed=7), "'seed', which spo serve never sends", id="describe-seed"),
    pytest.param(*describe(model_request=None), "'model_request' is missing or damaged", id="no-model-request"),
    pytest.param(*describe(model_request={"model": 5}), "'model' must be a string, not int 5", id="model-request-int"),
    pytest.param(*describe(lora={"id": "x", "scale": "big"}), "lora.scale is a string", id="lora-scale"),
    # The run answer.
    pytest.param(*run(lambda a: a["images"].pop()), "it sent 1 image(s) for the 2 asked", id="fewer-images"),
    pytest.param(*run(lambda a: a["images"].append(a["images"][0])), "sent 3 image(s) for the 2", id="more-images"),
    pytest.param(*run(lambda a: a.update(images=None)), "images is null, not an array", id="images-null"),
    pytest.param(*run(lambda a: a["images"].__setitem__(1, "x")), "images[1] is a string", id="item-str"),
    pytest.param(*image(png="!!not base64!!"), "images[0].png is not base64", id="not-base64"),
    pytest.param(*image(png=b64(b"hello")), "images[0].png is not a PNG", id="not-png"),
    pytest.param(*image(png=5), "images[0].png is a number, not a string", id="png-int"),
    pytest.param(*image(1, png=b64(png(64, 64)[:60])), "images[1].png does not decode", id="png-cut"),
    pytest.param(*image(png=b64(png(16, 24))), "images[0] is a 16×24 image, but 64×64 was asked", id="16x24"),
    pytest.param(*image(png=b64(bomb())), "is a 30000×30000 image, but 64×64", id="bomb"),
    pytest.param(*image(png=b64(png(64, 64, "L"))), "images[0] is a L image, not RGB", id="grey"),
    pytest.param(*image(meta=None), "images[0].meta is null, not an object", id="no-meta"),
    pytest.param(*meta(seed=7), "images[0].meta.seed is 7, but 42 was asked", id="other-seed"),
    pytest.param(*meta(width="64"), 'images[0].meta.width is "64", but 64', id="width-str"),
    pytest.param(*meta(scheduler="euler"), "images[0].meta.scheduler is a string", id="scheduler-str"),
    pytest.param(*meta(scheduler={"name": "ddim", "class": None, "a1111": "", "config": {}}),
                 "scheduler.name is 'ddim', but 'default' was asked", id="other-scheduler"),
    pytest.param(*meta(prompt_syntax="fancy"), "prompt_syntax is 'fancy'", id="syntax"),
    pytest.param(*meta(watermark=True), "images[0].meta.watermark is true, but false was asked", id="marked"),
    pytest.param(*image(1, error=5), "images[1].error is a number, not a string", id="error-int"),
    pytest.param("/spo/v1/run", raw_answer(b"{}", length=3_000_000_000), "announced 3,000,000,000 bytes for /spo/v1/run, more than",
                 id="run-3GB"),
    pytest.param("/spo/v1/run", raw_answer(deep(200_000)), "nested more than 32 deep", id="run-deep"),
]


@pytest.mark.parametrize("path, answer, words", LIES)
def test_a_lying_server_is_one_paragraph_and_nothing_is_written(lying, tmp_path, path, answer, words):
    lying.answers[path] = answer
    out = tmp_path / "out"
    r = generate(lying.url, out)
    assert r.exit_code == 1, r.output
    said = error_of(r)
    assert NOT_SPO in said and words in said, said
    assert nothing_written(out), sorted(p.name for p in out.iterdir())
    if hasattr(answer, "sent"):  # the client hung up once past its bound (socket buffers hold a few MB)
        assert answer.sent < 40 << 20, answer.sent


def test_batch_records_a_lie_as_the_failure_of_its_lines(lying, tmp_path):
    lying.answers["/spo/v1/run"] = image(png=b64(png(16, 24)))[1]
    prompts = tmp_path / "p.txt"
    prompts.write_text("a fox\na cat\n")
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["batch", str(prompts), "--width", "64", "--height", "64", "--steps", "2",
                                 "--server", lying.url, "--out", str(out)])
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output and "Unexpected" not in r.output
    assert "is a 16×24 image, but 64×64 was asked" in " ".join(r.output.split())
    assert [p.name for p in out.iterdir() if p.suffix in (".png", ".json")] == []  # the manifest alone


def test_server_text_is_shown_inert(lying, tmp_path):
    """A model id and an error message from the server: no markup, no emoji codes, no escapes."""
    evil = "[bold red]x[/] :dog: \x1b]0;pwned\x07\x1b[2J\u202eevil"
    lying.answers["/spo/v1/models"] = models_lie(lambda a: a["models"]["spo"]["describe"]["model"].update(id=evil))
    r = generate(lying.url, tmp_path / "out")
    assert r.exit_code == 0, r.output
    assert "[bold red]x[/] :dog: \\x1b]0;pwned\\x07\\x1b[2J\\u202eevil" in r.output
    assert "\x1b" not in r.output and "\u202e" not in r.output and "🐶" not in r.output

    lying.answers["/spo/v1/run"] = image(1, error="[/]boom :dog:\n\nline \x1b[31mred")[1]
    r = generate(lying.url, tmp_path / "out2")
    assert r.exit_code == 1
    said = error_of(r)
    assert "could not make image 2 (seed 43): [/]boom :dog:\\x0a\\x0aline \\x1b[31mred" in said, said
    assert nothing_written(tmp_path / "out2")

    lying.answers["/spo/v1/run"] = json_answer({"error": {"message": "[/] \x1b[2J\n\n" + "x" * 5000}}, 500)
    r = generate(lying.url, tmp_path / "out3")
    said = error_of(r)  # one paragraph, although the server's message has a blank line
    assert r.exit_code == 1 and "answered 500: [/] \\x1b[2J\\x0a\\x0axxx" in said, said
    assert "xxx…" in said and said.count("x") < 2100  # cut

    lying.answers["/spo/v1/run"] = raw_answer(deep(200_000), 500)  # the error body is not trusted either
    said = error_of(generate(lying.url, tmp_path / "out4"))
    assert "answered 500: Internal Server Error" in said

    lying.answers["/spo/v1/models"] = json_answer(dict(honest_models(), models={"[/]\x1b": {}}))
    r = generate(lying.url, tmp_path / "out5")
    assert r.exit_code == 2 and "has no model 'spo' loaded (it has [/]\\x1b)" in error_of(r)


@pytest.mark.parametrize("status", [307, 302, 308])
def test_a_redirect_to_another_host_is_not_followed_and_gets_no_token(lying, tmp_path, monkeypatch, status):
    monkeypatch.setenv("SPO_TOKEN", "secret-token-0123456789")
    with LyingServer() as elsewhere:
        target = elsewhere.url.replace("127.0.0.1", "localhost") + "/spo/v1/models"
        lying.answers["/spo/v1/models"] = redirect(target, status)
        r = generate(lying.url, tmp_path / "out")
        assert elsewhere.seen == []  # never asked at all, so never given the token
    said = error_of(r)
    assert r.exit_code == 1 and f"redirected the request ({status}) to {target}" in said
    assert "does not follow redirects, so the token was not sent to that other address" in said
    assert "secret-token" not in r.output
    [(_, _, headers)] = lying.seen
    assert headers["Authorization"] == "Bearer secret-token-0123456789"  # the token went where the user said


def test_a_redirect_on_the_same_server_is_not_followed_either(lying, tmp_path):
    lying.answers["/spo/v1/run"] = redirect("/spo/v2/run")
    r = generate(lying.url, tmp_path / "out")
    said = error_of(r)
    assert r.exit_code == 1 and f"redirected the request (307) to {lying.url}/spo/v2/run" in said
    assert "does not follow redirects." in said and [p for _, p, _ in lying.seen].count("/spo/v2/run") == 0


@pytest.mark.parametrize("url, words", [
    ("http://user:hunter2@127.0.0.1:9", "holds a user name or password"),
    ("http://:hunter2@127.0.0.1:9", "holds a user name or password"),
    ("http://hunter2@127.0.0.1:9", "holds a user name or password"),
    ("http://127.0.0.1:99999", "its port is not a number from 1 to 65,535"),
    ("http://127.0.0.1:x", "its port is not a number"),
    ("http://127.0.0.1:0", "port 0 is not an address"),
    ("http://127.0.0.1:7860/?a=b", "has a query or fragment"),
    ("http://127.0.0.1:7860#top", "has a query or fragment"),
    ("http://127.0.0.1:7860?", "has a query or fragment"),
    ("http://[::1", "is not a valid URL"),
    ("http://127.0.0.1:7860/\x1b[2J", "holds spaces or control characters"),
    ("http://127.0.0.1 :7860", "holds spaces or control characters"),
    ("ftp://127.0.0.1", "is not an http(s) URL"),
    ("http://", "is not an http(s) URL"),
])
def test_a_bad_server_url_is_refused_up_front_without_its_password(tmp_path, url, words):
    r = generate(url, tmp_path / "out")
    said = error_of(r)
    assert r.exit_code == 2 and words in said, said
    assert "hunter2" not in r.output and "\x1b" not in r.output
    if "password" in words:
        assert "SPO_TOKEN" in said
    assert nothing_written(tmp_path / "out")


def test_the_client_reads_json_depth_and_size_without_recursing():
    assert client.parse_json(b'{"a": "' + b"[" * 40 + b'"}') == {"a": "[" * 40}  # brackets in strings are text
    assert client.parse_json(b'{"a": "\\"' + b"[" * 40 + b'"}') == {"a": '"' + "[" * 40}
    assert client.parse_json(b"[" * 32 + b"]" * 32) is not None
    with pytest.raises(client.Lie, match="nested more than 32"):
        client.parse_json(b"[" * 33 + b"]" * 33)
    with pytest.raises(client.Lie, match="more than 100,000 objects"):
        client.parse_json(b"[" + b"[]," * 100_001 + b"[]]")


def test_inert():
    assert client.inert("a\x1b[2J\nb\u202e\u2028 c") == "a\\x1b[2J\\x0ab\\u202e\\u2028 c"
    assert client.inert("x" * 300, 10) == "x" * 10 + "…"


def _spo_with_file_size_limit(args: list[str], limit: int) -> subprocess.CompletedProcess:
    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    code = ("import sys; from spo_cli.usage import main; sys.argv = ['spo', *sys.argv[1:]]\n"
            "try:\n    main()\nfinally:\n    print('torch imported' if 'torch' in sys.modules else 'no torch')")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300,
                          preexec_fn=limited, env={**os.environ, "SPO_TOKEN": ""})


@pytest.mark.parametrize("command", ["generate", "batch"])
def test_a_file_size_limit_is_one_paragraph(lying, tmp_path, command):
    """ulimit -f: the write fails with EFBIG (SIGXFSZ ignored, as Python does); one paragraph, no torch."""
    out = tmp_path / "out"
    if command == "generate":
        args = ["generate", *ARGS]
    else:
        (tmp_path / "p.txt").write_text("a fox\n")
        args = ["batch", str(tmp_path / "p.txt"), "--width", "64", "--height", "64", "--steps", "2"]
    r = _spo_with_file_size_limit([*args, "--server", lying.url, "--out", str(out)], 600)
    said = " ".join(r.stderr.split())
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in said and "Unexpected" not in said
    assert "larger than this process may write (ulimit -f)" in said, said
    assert r.stdout.strip().endswith("no torch")
    assert not [p for p in out.iterdir() if p.suffix in (".png", ".json")]
    assert errno.EFBIG  # the errno the kernel gives a write past RLIMIT_FSIZE


def test_a_lock_that_is_a_symbolic_link_loop_is_one_paragraph(lying, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".spo-lock").symlink_to(".spo-lock")
    (tmp_path / "p.txt").write_text("a fox\n")
    r = CliRunner().invoke(app, ["batch", str(tmp_path / "p.txt"), "--width", "64", "--height", "64",
                                 "--server", lying.url, "--out", str(out)])
    said = error_of(r)
    assert r.exit_code == 1 and f"{out / '.spo-lock'} is a symbolic link loop, where spo keeps the lock" in said
    assert lying.seen == []  # refused before the server was asked anything


@pytest.mark.parametrize("token", ["tökén-0123456789abcdef", "abc\r\nX-Evil: 1", "two words-0123456789"])
def test_a_token_that_cannot_be_a_header_is_refused_without_showing_it(lying, tmp_path, monkeypatch, token):
    monkeypatch.setenv("SPO_TOKEN", token)
    r = generate(lying.url, tmp_path / "out")
    said = error_of(r)
    assert r.exit_code == 2 and "SPO_TOKEN holds spaces or characters that are not printable ASCII" in said
    assert token.split()[0] not in r.output and lying.seen == []


# Image to image: what the server says it started from, and how, must be what was sent.
EDIT_LIES = [
    pytest.param(lambda m: m["init_image"].update(sha256="0" * 64), "meta.init_image.sha256 is '000", id="other-input"),
    pytest.param(lambda m: m.update(strength=0.9), "images[0].meta.strength is 0.9, but 0.5 was asked", id="strength"),
    pytest.param(lambda m: m.pop("strength"), "images[0].meta.strength is null, but 0.5 was asked", id="no-strength"),
    pytest.param(lambda m: m.update(mask_blur=9), "images[0].meta.mask_blur is 9, but 4 was asked", id="mask-blur"),
    pytest.param(lambda m: m.update(mask_crop=32), "images[0].meta.mask_crop is 32, but null was asked", id="crop"),
]


@pytest.mark.parametrize("change, words", EDIT_LIES)
def test_a_server_lying_about_an_edit_is_caught(lying, tmp_path, change, words):
    from PIL import Image

    Image.new("RGB", (64, 64), "red").save(tmp_path / "in.png")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    mask.save(tmp_path / "mask.png")
    args = ("--image", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png"), "--strength", "0.5")
    assert generate(lying.url, tmp_path / "honest", *args).exit_code == 0  # the honest answer passes
    lying.answers["/spo/v1/run"] = run_lie(lambda a: change(a["images"][0]["meta"]))
    out = tmp_path / "out"
    r = generate(lying.url, out, *args)
    assert r.exit_code == 1, r.output
    said = error_of(r)
    assert NOT_SPO in said and words in said, said
    assert nothing_written(out)


def test_a_server_lying_about_the_hires_pass_is_caught(lying, tmp_path):
    args = ("--hires", "1.5", "--hires-strength", "0.5")
    assert generate(lying.url, tmp_path / "honest", *args).exit_code == 0
    lying.answers["/spo/v1/run"] = run_lie(lambda a: a["images"][0]["meta"]["hires"].update(strength=0.8))
    r = generate(lying.url, tmp_path / "out", *args)
    said = error_of(r)
    assert r.exit_code == 1 and "images[0].meta.hires.strength is 0.8, but 0.5 was asked" in said, said
