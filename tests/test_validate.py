"""The one validation: every limit, and the same limit and message whatever the value's source.

Pure: no model, no subprocess. The command line's own path into it (typer → options → validate)
is covered by the CLI tests; here the three sources that parse raw values (argv values as typer
types them, a jsonl line, a replayed sidecar) are held to the same answers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from spo_cli import presets, prompts, validate
from spo_cli.cli import options
from spo_cli.errors import EXIT_USAGE, UsageError
from spo_cli.outputs import metadata
from spo_cli.validate import ARGV, SEED_MAX, Where

GOOD_ARGV = dict(seed=1, negative=None, steps=30, guidance=5.0, width=None, height=None, scheduler="default",
                 generator_device="cpu")
ARGV_NAME = {"negative_prompt": "negative"}


def from_argv(key: str, value) -> UsageError:
    with pytest.raises(UsageError) as e:
        values = {**GOOD_ARGV, ARGV_NAME.get(key, key): value}
        prompt = values.pop("prompt", "a red fox")
        options.image_request(prompt=prompt, **values)
    return e.value


def from_jsonl(key: str, value) -> str:
    parsed = prompts.parse(json.dumps({"prompt": "a red fox", key: value}) + "\n", "p.jsonl")
    assert not parsed.lines and len(parsed.problems) == 1, parsed
    return parsed.problems[0]


def sidecar(**changes) -> dict:
    meta = {"schema": metadata.SCHEMA, "prompt": "a red fox", "negative_prompt": None, "seed": 1, "steps": 30,
            "guidance": 5.0, "width": 1024, "height": 1024, "generator_device": "cpu",
            "scheduler": {"name": "default", "class": "EulerDiscreteScheduler", "a1111": "Euler"},
            "model_request": {"model": "spo", "revision": None, "lora": None, "lora_file": None,
                              "lora_scale": None, "vae": None, "dtype": "auto"},
            "model": {"id": presets.SPO_MERGED, "source": "hub", "commit": "a" * 40}, "lora": None,
            "dtype": "float16"}
    meta.update(changes)
    return meta


def from_sidecar(key: str, value) -> UsageError:
    with pytest.raises(UsageError) as e:
        metadata.recorded_requests(sidecar(**{key: value}), Path("x.json"))
    return e.value


BAD = [
    ("seed", -2, "must be from 0 to 4,294,967,295, not -2"),
    ("seed", SEED_MAX + 1, "must be from 0 to 4,294,967,295, not 4,294,967,296"),
    ("steps", 0, "must be from 1 to 1,000, not 0"),
    ("steps", 1001, "must be from 1 to 1,000, not 1,001"),
    ("guidance", math.nan, "must be a finite number, not nan"),
    ("guidance", math.inf, "must be a finite number, not inf"),
    ("guidance", -1.0, "must be from 0 to 100, not -1"),
    ("width", 1020, "must be a positive multiple of 8, not 1020"),
    ("height", 0, "must be a positive multiple of 8, not 0"),
    ("scheduler", "eulerr", "cannot be 'eulerr'"),
    ("generator_device", "gpu", "cannot be 'gpu'"),
    ("prompt", "a \udcff fox", "is not valid text"),
    ("prompt", "x" * (validate.PROMPT_MAX_CHARS + 1), "is 10,001 characters long; the limit is 10,000"),
    ("prompt", "   ", "is empty"),
    ("negative_prompt", "bad\0", "contains a NUL character"),
    ("prompt_syntax", "a1112", "cannot be 'a1112'"),
    ("emphasis", "strong", "cannot be 'strong'"),
]


@pytest.mark.parametrize("key, value, words", BAD, ids=[f"{k}={str(v)[:12]}" for k, v, _ in BAD])
def test_every_source_gets_the_same_limit_and_message(key, value, words):
    argv = from_argv(key, value)
    assert argv.exit_code == EXIT_USAGE
    option = validate.PROMPT_ARGUMENT.name(key)  # "PROMPT" is an argument; the rest are options
    assert argv.message.startswith(f"{option} {words}"), argv.message
    if key == "scheduler":
        side = from_sidecar("scheduler", {"name": value})
    else:
        side = from_sidecar(key, value)
    assert side.message.startswith(f"x.json: '{key}' {words}"), side.message
    if isinstance(value, float) and not math.isfinite(value):
        line = prompts.parse('{"prompt": "a", "%s": %s}\n' % (key, "NaN" if math.isnan(value) else "Infinity"),
                             "p.jsonl").problems[0]
    else:
        line = from_jsonl(key, value)
    assert line.startswith(f"p.jsonl:1: '{key}' {words}"), line
    # The hint, where there is one, is the same too; but a sidecar records the seed used, never -1.
    if key == "seed":
        assert "-1 draws a random seed" in argv.hint and side.hint is None
        return
    assert (argv.hint or "").split(";")[0] == (side.hint or "").split(";")[0]


@pytest.mark.parametrize("value", ["20", 20.0, True, None, [20]])
def test_files_must_give_whole_numbers_where_argv_types_them(value):
    line = from_jsonl("steps", value)
    assert "'steps' must be a whole number" in line
    side = from_sidecar("steps", value)
    assert "'steps' must be a whole number" in side.message


@pytest.mark.parametrize("value", [5, ["a"], {"x": 1}, None])
def test_a_prompt_that_is_not_a_string(value):
    assert "'prompt' must be a string" in from_jsonl("prompt", value)
    assert "'prompt' must be a string" in from_sidecar("prompt", value).message


def test_limits_are_defined_once():
    # Each limit's number appears in the code of validate.py and nowhere else in the package (tiny.py
    # builds the test model; its numbers are that model's, not limits; stats.py's 10000 is a count of
    # bootstrap resamples).
    import tokenize

    limits = {validate.SIDE_MAX, validate.NUM_IMAGES_MAX, validate.STEPS_MAX, validate.PROMPT_MAX_CHARS,
              validate.ROWS_PER_PAGE_MAX}  # (64 and 100, the batch and guidance limits, are too common)
    package = Path(validate.__file__).parent
    for path in package.rglob("*.py"):
        if path.name in ("validate.py", "tiny.py", "stats.py"):
            continue
        with open(path, "rb") as f:
            numbers = {eval(t.string) for t in tokenize.tokenize(f.readline) if t.type == tokenize.NUMBER}
        assert not numbers & limits, (path.name, numbers & limits)


# ---------------------------------------------------------------------------------------------
# Sizes


@pytest.mark.parametrize("w,h", [(None, None), (1024, 1024), (1152, 896), (896, 1152), (1216, 832),
                                 (832, 1216), (1344, 768), (768, 1344)])
def test_sdxl_sizes_pass_quietly(w, h):
    assert validate.size(w, h) == []


@pytest.mark.parametrize("w,h,shown", [(512, 512, "512×512"), (64, None, "64×1024"), (None, 256, "1024×256"),
                                       (2048, 2048, "2048×2048"), (4096, 1024, "4096×1024")])
def test_far_from_one_megapixel_warns_with_the_size_used(w, h, shown):
    [warning] = validate.size(w, h)
    assert warning.startswith(shown) and "1024×1024" in warning


@pytest.mark.parametrize("quiet, warns", [((728, 728), (720, 728)), ((1448, 1448), (1456, 1448))])
def test_the_warning_bounds_are_half_and_two_megapixels(quiet, warns):
    # 728² is just over 0.5 MP and 1448² just under 2 MP: quiet; one multiple of 8 further out warns.
    assert validate.size(*quiet) == []
    assert validate.size(*warns) != []


@pytest.mark.parametrize("w,h,words", [
    (4104, None, "--width is 4104 pixels; the limit is 4096"),
    (None, 8192, "--height is 8192 pixels; the limit is 4096"),
    (2056, 2048, "2056×2048 is 4.2 megapixels; the limit is 4.2"),
])
def test_size_limits_and_the_opt_out(w, h, words):
    with pytest.raises(UsageError) as e:
        validate.size(w, h)
    assert e.value.message.startswith(words) and "--no-size-limit" in e.value.hint
    assert validate.size(w, h, size_limit=False)  # allowed, with the far-from-1MP warning


def test_size_hint_suggests_the_nearest_multiple():
    with pytest.raises(UsageError) as e:
        validate.size(1020, None)
    assert "try 1024" in e.value.hint
    with pytest.raises(UsageError) as e:
        validate.size(None, 1001)
    assert "try 1000" in e.value.hint


# ---------------------------------------------------------------------------------------------
# Other values


@pytest.mark.parametrize("name", list(presets.SCHEDULERS))
def test_every_known_scheduler_is_accepted(name):
    assert validate.scheduler(name) == name


def test_unknown_scheduler_lists_the_valid_names():
    with pytest.raises(UsageError) as e:
        validate.scheduler("k_euler")
    assert all(n in e.value.hint for n in presets.SCHEDULERS)
    assert all(c.a1111 in e.value.hint for c in presets.SCHEDULERS.values())


@pytest.mark.parametrize("name", [n for n, c in presets.SCHEDULERS.items() if c.a1111])
def test_every_scheduler_is_accepted_by_its_a1111_name_in_any_case(name):
    a1111 = presets.SCHEDULERS[name].a1111
    assert validate.scheduler(a1111) == validate.scheduler(a1111.upper()) == validate.scheduler(a1111.lower()) == name


@pytest.mark.parametrize(("value", "name"), [
    ("DPM++ 2M", "dpm++2m"),  # a sampler's name alone is its plain schedule, as spo writes it
    ("DPM++ 2M Automatic", "dpm++2m-karras"),  # A1111's Automatic, spelled out
    ("DPM++ 2M SDE Uniform", "dpm++2m-sde"),
    ("Euler sgm_uniform", "euler-sgm-uniform"), ("Euler SGMUniform", "euler-sgm-uniform"),  # A1111's other names
])
def test_a1111_schedule_type_names_after_the_sampler(value, name):
    assert validate.scheduler(value) == name


@pytest.mark.parametrize("value", ["DPM++ 2S a Karras", "Euler a Karras", "EulerDiscreteScheduler", "DPM++2M Karras",
                                   "DPM++ 2M  Karras", "Karras", "", "DPM++ 2M " * 50, 3, None, ["euler"]])
def test_names_spo_lacks_are_refused_with_both_lists(value):
    with pytest.raises(UsageError) as e:
        validate.scheduler(value)
    assert "dpm++2m-karras" in e.value.hint and "DPM++ 2M Karras" in e.value.hint


@pytest.mark.parametrize("value", ["cpu", "cuda", "cuda:0", "cuda:7", "mps"])
def test_generator_devices(value):
    assert validate.generator_device(value) == value


@pytest.mark.parametrize("value", ["auto", "gpu", "cuda:", "cuda:x", "CUDA", "", "cuda:0 "])
def test_bad_generator_devices(value):
    with pytest.raises(UsageError) as e:
        validate.generator_device(value)
    assert e.value.message.startswith("--generator-device cannot be")


@pytest.mark.parametrize("value, expected", [("fp16", "float16"), ("float16", "float16"), ("bf16", "bfloat16"),
                                             ("fp32", "float32"), ("auto", "auto")])
def test_dtypes(value, expected):
    assert validate.dtype(value) == expected


def test_dtype_without_auto():
    with pytest.raises(UsageError):
        validate.dtype("auto", auto=False)


@pytest.mark.parametrize("n, ok", [(1, True), (10_000, True), (0, False), (-3, False), (10_001, False),
                                   (1_000_000_000, False)])
def test_num_images_limits(n, ok):
    if ok:
        assert validate.num_images(n) == n
    else:
        with pytest.raises(UsageError) as e:
            validate.num_images(n)
        assert e.value.message.startswith("--num-images must be from 1 to 10,000")


@pytest.mark.parametrize("n, ok", [(1, True), (64, True), (0, False), (65, False)])
def test_batch_size_limits(n, ok):
    if ok:
        assert validate.batch_size(n) == n
    else:
        with pytest.raises(UsageError, match="--batch-size must be from 1 to 64"):
            validate.batch_size(n)


def test_seed_range_past_the_top():
    validate.seed_range(SEED_MAX - 3, 4)
    with pytest.raises(UsageError) as e:
        validate.seed_range(SEED_MAX - 3, 5)
    assert "runs to seed 4,294,967,296" in e.value.message


@pytest.mark.parametrize("scale, warns", [(0.0, False), (1.0, False), (-2.0, False), (2.5, True), (-3, True)])
def test_lora_scale_warns_outside_two(scale, warns):
    value, warnings = validate.lora_scale(scale)
    assert value == scale and bool(warnings) == warns


@pytest.mark.parametrize("scale", [math.nan, math.inf])
def test_lora_scale_must_be_finite(scale):
    with pytest.raises(UsageError, match="--lora-scale must be a finite number"):
        validate.lora_scale(scale)


@pytest.mark.parametrize("model, lora, ok", [("spo", None, False), ("base", None, False),
                                             ("spo-lora", None, True), ("spo", "x.safetensors", True),
                                             ("./folder", None, False)])
def test_lora_scale_needs_a_lora(model, lora, ok):
    if ok:
        validate.lora_applies(model, lora, 0.5)
    else:
        with pytest.raises(UsageError) as e:
            validate.lora_applies(model, lora, 0.5)
        assert "has nothing to act on" in e.value.message and "--model spo-lora" in e.value.hint
    validate.lora_applies(model, lora, None)  # not given: nothing to check


@pytest.mark.parametrize("value, expected", [("png", "png"), ("PNG", "png"), ("jpeg", "jpg"), (".webp", "webp")])
def test_image_formats(value, expected):
    assert validate.image_format(value) == expected


def test_where_names_options_and_keys():
    assert ARGV.name("negative_prompt") == "--negative"
    assert ARGV.name("generator_device") == "--generator-device"
    assert Where("f.jsonl:3").name("steps") == "'steps'"


# ---------------------------------------------------------------------------------------------
# The output folder


def test_output_folder_is_created_and_probed(tmp_path):
    out = validate.output_folder(tmp_path / "a" / "b")
    assert out.is_dir() and list(out.iterdir()) == []


def test_output_folder_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    for path in (tmp_path / "f", tmp_path / "f" / "sub"):
        with pytest.raises(UsageError) as e:
            validate.output_folder(path)
        assert "is a file, not a folder" in e.value.message


def test_output_folder_not_writable(tmp_path):
    import os

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        target = ro / "out"
        if os.access(ro, os.W_OK):  # root writes anywhere: a kernel file system refuses it instead
            target = Path("/sys/spo-test-out")
            if not Path("/sys").is_dir():
                pytest.skip("no unwritable folder to try as this user")
        with pytest.raises(UsageError, match="cannot be written to"):
            validate.output_folder(target)
    finally:
        ro.chmod(0o700)


@pytest.mark.parametrize("key", ["prompt", "negative_prompt"])
def test_a_weight_that_is_no_number_is_refused_unless_the_text_is_plain(key):
    words = "cannot be read as A1111 prompt syntax: the weight in ':1.2.3)' is not a number"
    bad = "a (fox:1.2.3)"
    argv = from_argv(key, bad)
    assert argv.message.startswith(f"{validate.PROMPT_ARGUMENT.name(key)} {words}") and "plain" in argv.hint
    assert from_jsonl(key, bad).startswith(f"p.jsonl:1: '{key}' {words}")
    side = from_sidecar_with(**{key: bad, "prompt_syntax": "a1111"})
    assert side.message.startswith(f"x.json: '{key}' {words}")
    # Read as plain text, the same prompt is fine, from every source.
    values = {**GOOD_ARGV, ARGV_NAME.get(key, key): bad, "prompt_syntax": "plain"}
    options.image_request(prompt=values.pop("prompt", "a red fox"), **values)
    assert not prompts.parse(json.dumps({"prompt": "a", key: bad, "prompt_syntax": "plain"}), "p.jsonl").problems
    assert not prompts.parse(json.dumps({"prompt": "a", key: bad}), "p.jsonl", prompt_syntax="plain").problems
    metadata.recorded_requests(sidecar(**{key: bad}), Path("x.json"))  # files before 0.2: plain


def test_a_txt_line_is_read_with_the_command_lines_syntax():
    assert "p.txt:2: 'prompt' cannot be read as A1111" in prompts.parse("a fox\n(b:1.2.3)\n", "p.txt").problems[0]
    assert not prompts.parse("a fox\n(b:1.2.3)\n", "p.txt", prompt_syntax="plain").problems


def from_sidecar_with(**changes) -> UsageError:
    with pytest.raises(UsageError) as e:
        metadata.recorded_requests(sidecar(**changes), Path("x.json"))
    return e.value


@pytest.mark.parametrize("text, warns", [
    ("a [cat:dog:0.5] in snow", True), ("a [cat:10] in snow", True), ("a [cat|dog]", True),
    ("a [cat] (dog:1.2)", False), ("a \\[cat:dog:0.5\\]", False), ("a red fox", False),
])
def test_prompt_editing_and_alternation_warn_that_they_are_read_as_text(text, warns):
    _, warnings = options.image_request(prompt=text, **GOOD_ARGV)
    assert bool(warnings) == warns
    if warns:
        assert warnings[0].startswith("PROMPT has [") and "not support" in warnings[0]
    _, plain = options.image_request(prompt=text, prompt_syntax="plain", **GOOD_ARGV)
    assert plain == []
    parsed = prompts.parse(json.dumps({"prompt": text}) + "\n", "p.jsonl")
    from spo_cli.request import ImageRequest
    _, line = prompts.tasks(parsed, ImageRequest(prompt="", seed=1, width=1024, height=1024), 1)
    assert bool(line) == warns and (not warns or line[0].startswith("p.jsonl:1: 'prompt' has ["))


# ---------------------------------------------------------------------------------------------
# Seeds: -1, and one grammar for lists and ranges


def test_seed_minus_one_on_the_command_line_is_a_random_seed_recorded():
    drawn = {options.image_request(prompt="a fox", **{**GOOD_ARGV, "seed": -1})[0].seed for _ in range(5)}
    assert all(0 <= s <= SEED_MAX for s in drawn) and len(drawn) > 1
    # A sidecar's seed is what made its image: -1 there stays an error, never a new random seed.
    assert from_sidecar("seed", -1).message.startswith("x.json: 'seed' must be from 0")
    # A prompt file's line asks, as the command line does: -1 is a random seed there, -2 an error.
    assert from_jsonl("seed", -2).startswith("p.jsonl:1: 'seed' must be from 0")
    assert from_jsonl("seed", -1.0).startswith("p.jsonl:1: 'seed' must be a whole number")


def test_seed_minus_one_in_a_prompt_file_line_is_drawn_once_per_line():
    text = "".join(json.dumps({"prompt": p, "seed": -1}) + "\n" for p in ("a", "b", "c"))
    drawn = [line.settings["seed"] for line in prompts.parse(text, "p.jsonl").lines]
    assert all(0 <= s <= SEED_MAX for s in drawn) and len(set(drawn)) > 1


def test_seeds_minus_one_is_a_random_seed_in_seed_lists():
    drawn = validate.seeds("-1,-1,-1,5")
    assert len(drawn) == 4 and drawn[-1] == 5 and all(0 <= s <= SEED_MAX for s in drawn)
    assert len(validate.seeds("0-9998,-1")) == 10_000
    with pytest.raises(UsageError, match="lists more than 10,000"):
        validate.seeds("0-9999,-1")


@pytest.mark.parametrize("text, seeds", [
    ("0-3", [0, 1, 2, 3]), ("1,2,5", [1, 2, 5]), ("0-3,10", [0, 1, 2, 3, 10]), (" 1 , 2-3 ", [1, 2, 3]),
    ("5", [5]), ("3-3", [3]), ("2,1,2,0-2", [2, 1, 0]), (f"{SEED_MAX}", [SEED_MAX]),
    (f"{SEED_MAX - 1}-{SEED_MAX}", [SEED_MAX - 1, SEED_MAX]), ("0-9999", list(range(10_000))),
])
def test_seeds_grammar(text, seeds):
    assert validate.seeds(text) == seeds


@pytest.mark.parametrize("text, words", [
    ("", "is empty"), ("a", "has 'a', which is not a seed or a range"), ("1,,2", "has '', which"),
    ("-2", "has '-2', which"), ("-1-3", "has '-1-3', which"), ("1-", "has '1-', which"), ("3-1", "has the range 3-1, which runs backwards"),
    ("1.5", "has '1.5', which"), ("٣", "has '٣', which"), ("1-٣", "has '1-٣'"), ("１", "has '１'"),
    (f"{SEED_MAX + 1}", "must be from 0 to 4,294,967,295, not 4,294,967,296"),
    (f"0-{SEED_MAX + 1}", "must be from 0 to 4,294,967,295"),
    ("0-10000", "lists more than 10,000 seeds"), ("0-4999,0-4999,1", "lists more than 10,000 seeds"),
    ("0-4294967295", "lists more than 10,000 seeds"), ("1" * 50, "which is not a seed"),
])
def test_seeds_grammar_refuses_with_the_part_named(text, words):
    with pytest.raises(UsageError) as e:
        validate.seeds(text)
    assert e.value.message.startswith("--seeds ") and words in e.value.message, e.value.message


def test_compare_and_eval_read_seeds_with_the_one_grammar():
    from spo_cli.cli import compare, eval as eval_cmd

    assert compare.parse_seeds("0-3", 0, 1) == eval_cmd.parse_seeds("0-3") == [0, 1, 2, 3]
    assert compare.parse_seeds("1,2,5-6", 0, 1) == eval_cmd.parse_seeds("1,2,5-6") == [1, 2, 5, 6]
    assert compare.parse_seeds(None, 7, 2) == [7, 8]


# ---------------------------------------------------------------------------------------------
# WIDTHxHEIGHT


@pytest.mark.parametrize("text, size", [("1024x768", (1024, 768)), ("8x8", (8, 8)), ("999999x1", (999999, 1)),
                                        ("0x7", (0, 7))])
def test_dimensions(text, size):
    assert validate.parse_dimensions(text) == validate.dimensions(text) == size


@pytest.mark.parametrize("text", ["١٠٢٤x١٠٢٤", "1024x１０２４", "²x8", "1024X768", "1024x768 ", " 1024x768",
                                  "1024", "x768", "1024x", "1024x768x2", "1000000x8", "64x64junk", "", None, 1024])
def test_dimensions_take_ascii_digits_and_nothing_else(text):
    assert validate.parse_dimensions(text) is None
    with pytest.raises(UsageError) as e:
        validate.dimensions(text, "size", Where("request"))
    assert e.value.message.startswith("request: 'size' must be WIDTHxHEIGHT such as 1024x1024, not ")


# ---------------------------------------------------------------------------------------------
# Costs, weights and A1111 syntax spo does not follow


def test_breaks_past_the_window_limit_are_refused_before_torch_with_the_count():
    prompt = "a " + "BREAK " * 1666 + "b"
    with pytest.raises(UsageError) as e:
        options.image_request(prompt=prompt, **GOOD_ARGV)
    assert e.value.message.startswith("PROMPT has BREAKs that make at least 1,667 text-encoder windows")
    assert f"the limit is {validate.WINDOWS_MAX}" in e.value.message
    with pytest.raises(UsageError) as e:
        options.image_request(prompt="a fox", **{**GOOD_ARGV, "negative": "BREAK " * 40})
    assert e.value.message.startswith("--negative has BREAKs that make at least 40 text-encoder windows")
    assert from_sidecar_with(prompt=prompt, prompt_syntax="a1111").message.startswith(
        "x.json: 'prompt' has BREAKs that make at least 1,667")
    assert from_jsonl("prompt", prompt).startswith("p.jsonl:1: 'prompt' has BREAKs that make at least 1,667")
    # At the limit it passes; read as plain text BREAK is a word and costs nothing.
    limit = "a" + " BREAK a" * (validate.WINDOWS_MAX - 1)
    options.image_request(prompt=limit, **GOOD_ARGV)
    options.image_request(prompt=limit + " BREAK", **GOOD_ARGV)  # a trailing BREAK adds no window
    with pytest.raises(UsageError):
        options.image_request(prompt=limit + " BREAK a", **GOOD_ARGV)
    options.image_request(prompt=prompt, **{**GOOD_ARGV, "prompt_syntax": "plain"})


@pytest.mark.parametrize("prompt", ["(fox:-100000)", "(fox:100000)", "(fox:-65505)", "(" * 120 + "fox"])
def test_weights_past_half_precision_are_refused_whatever_their_sign(prompt):
    with pytest.raises(UsageError, match="has an A1111 weight over 65504"):
        options.image_request(prompt=prompt, **GOOD_ARGV)


@pytest.mark.parametrize("prompt", ["(fox:-65504)", "(fox:65504)", "(fox:-1.5)", "[fox]"])
def test_weights_within_half_precision_pass(prompt):
    options.image_request(prompt=prompt, **GOOD_ARGV)


def test_extra_network_tags_and_and_are_warned_about_naming_the_tag_and_the_way_to_a_lora():
    _, warnings = options.image_request(prompt="a fox <lora:detail_tweaker:0.6>, <hypernet:x:1> AND a cat",
                                        **GOOD_ARGV)
    tags = [w for w in warnings if "tags" in w]
    assert len(tags) == 2 and tags[0].startswith("PROMPT has <lora:detail_tweaker:0.6>: A1111 LoRA tags, taken out")
    assert "--lora-dir" in tags[0] and "SPO_LORA_DIR" in tags[0] and "--lora FILE" in tags[0]
    assert tags[1].startswith("PROMPT has <hypernet:x:1>: A1111 extra-network tags")
    # With a LoRA folder, the LoRA tags are loaded: only the hypernetwork is warned about.
    _, loaded = options.image_request(prompt="a fox <lora:detail_tweaker:0.6>, <hypernet:x:1>", **GOOD_ARGV,
                                      lora_tags="loaded")
    assert len(loaded) == 1 and loaded[0].startswith("PROMPT has <hypernet:x:1>:")
    assert any(w.startswith("PROMPT has AND, A1111's composable diffusion") for w in warnings)
    # A1111 reads neither in the negative prompt: no warning there; plain syntax reads all as text.
    _, warnings = options.image_request(prompt="a fox", **{**GOOD_ARGV, "negative": "<lora:x:1> AND y"})
    assert warnings == []
    _, warnings = options.image_request(prompt="a <lora:x:1> AND b", **{**GOOD_ARGV, "prompt_syntax": "plain"})
    assert warnings == []
    for text in ("ANDROID", "and", "a <lora>", "a <:x:1>", "a <lo ra:x:1>"):
        assert options.image_request(prompt=text, **GOOD_ARGV)[1] == [], text
    parsed = prompts.parse(json.dumps({"prompt": "<lora:x:1> fox"}) + "\n", "p.jsonl")
    from spo_cli.request import ImageRequest
    _, line = prompts.tasks(parsed, ImageRequest(prompt="", seed=1, width=1024, height=1024), 1)
    assert line[0].startswith("p.jsonl:1: 'prompt' has <lora:x:1>: A1111 LoRA tags, taken out of the prompt and not "
                              "loaded: here spo loads no LoRA")


# ---------------------------------------------------------------------------------------------
# Values from files are named as the file names them, and never printed whole


@pytest.mark.parametrize("key, value, words", [
    ("seed", 10**4000, "x.json: 'seed' must be from 0 to 4,294,967,295, not a 4,001-digit number"),
    ("seed", -(10**4000), "x.json: 'seed' must be from 0 to 4,294,967,295, not -a 4,001-digit number"),
    ("steps", 10**30, "x.json: 'steps' must be from 1 to 1,000, not a 31-digit number"),
    ("width", 10**4000 + 1, "x.json: 'width' must be a positive multiple of 8, not a 4,001-digit number"),
    ("guidance", 10**4000, "x.json: 'guidance' must be from 0 to 100, not a 4,001-digit number"),
    ("seed", 10**5000, "x.json: 'seed' must be from 0 to 4,294,967,295, not a number of about 5,000 digits"),
], ids=["seed", "negative seed", "steps", "width", "guidance", "beyond str"])
def test_huge_values_are_named_by_size_not_printed_whole(key, value, words):
    message = from_sidecar(key, value).message
    assert message.startswith(words) and len(message) < 200, message[:300]


def test_a_long_text_value_is_quoted_by_its_start_and_length():
    message = from_sidecar("scheduler", {"name": "x" * 5000}).message
    assert "(5,000 characters)" in message and len(message) < 300


def test_replay_names_the_sidecars_key_not_an_option(tmp_path):
    from typer.testing import CliRunner

    from spo_cli.cli import app

    path = tmp_path / "x.json"
    path.write_text(json.dumps(sidecar(width=1_000_000_000)))
    result = CliRunner().invoke(app, ["replay", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == EXIT_USAGE
    message = " ".join(result.output.split())
    assert f"{path}: 'width' is 1000000000 pixels; the limit is 4096" in message, message
    assert "--width" not in message.split("limit is 4096")[0]
    result = CliRunner().invoke(app, ["replay", str(path), "--width", "8192", "--height", "1024",
                                      "--out", str(tmp_path / "out")])
    assert "--width is 8192 pixels" in " ".join(result.output.split())
    result = CliRunner().invoke(app, ["replay", "--infotext", "a fox\nSteps: 20, Seed: 1, Size: 9000x1024",
                                      "--out", str(tmp_path / "out")])
    assert "--infotext: 'width' is 9000 pixels" in " ".join(result.output.split())


def test_a_huge_size_without_the_size_limit_is_a_warning_not_a_crash():
    assert validate.size(8 * 10**400, 1024, size_limit=False)[0].endswith("expect weaker images.")


@pytest.mark.parametrize("key, limit", [("lora", validate.PATH_MAX_CHARS), ("model", validate.PATH_MAX_CHARS),
                                        ("seeds", validate.PROMPT_MAX_CHARS)])
def test_a_too_long_value_that_is_no_prompt_gets_no_prompt_file_hint(key, limit):
    # Before: every text over its limit was told "a prompt file (spo batch) takes one prompt per line".
    with pytest.raises(UsageError) as e:
        validate.text("a" * (limit + 1), key, limit=limit)
    assert "characters long" in e.value.message and "prompt" not in (e.value.hint or "")
    with pytest.raises(UsageError) as e:
        validate.text("a" * (validate.PROMPT_MAX_CHARS + 1), "prompt")
    assert "one prompt per line" in e.value.hint


@pytest.mark.parametrize("args", [["generate", "a fox", "--seed", "-2"], ["generate", "a fox", "--seed", "4294967296"],
                                  ["compare", "a fox", "--seed", "-2"]])
def test_a_seed_out_of_range_says_that_minus_one_is_a_random_one(args, tmp_path):
    # Before: "--seed must be from 0 to 4,294,967,295, not -2." with no word of -1, which is accepted.
    from typer.testing import CliRunner

    from spo_cli.cli import app

    r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "o")])
    text = " ".join(r.output.split())
    assert r.exit_code == EXIT_USAGE and "--seed must be from 0 to 4,294,967,295" in text, text
    assert "-1 draws a random seed" in text and not (tmp_path / "o").exists()


def test_a_seeds_item_out_of_range_says_that_minus_one_is_a_random_one():
    # Before: '-2' was "not a seed or a range" with examples that left out -1, which --seeds takes.
    with pytest.raises(UsageError) as e:
        validate.seeds("0,-2")
    assert "-1 draws a random seed" in e.value.hint


def test_a_drawn_seed_leaves_room_for_the_most_images(monkeypatch):
    import secrets

    monkeypatch.setattr(secrets, "randbelow", lambda n: n - 1)  # the highest seed it can draw
    top = validate.random_seed()
    validate.seed_range(top, validate.NUM_IMAGES_MAX)  # seeds top … top + NUM_IMAGES_MAX - 1, all valid
    assert top + validate.NUM_IMAGES_MAX - 1 == validate.SEED_MAX


def test_a_side_off_the_grid_is_never_rounded_past_the_limit():
    with pytest.raises(UsageError) as e:
        validate.side(99999, "width")
    assert "try 1024" in e.value.paragraph() and "100000" not in e.value.paragraph()
    with pytest.raises(UsageError) as e:
        validate.side(99999, "width", size_limit=False)  # no limit: the nearest multiple of 8 it is
    assert "try 100000" in e.value.paragraph()
    with pytest.raises(UsageError) as e:
        validate.side(1020, "width")
    assert "try 1024" in e.value.paragraph()
