"""Unit tests for spo_cli.prompts: prompt files → validated lines → image jobs (seeds, stems).

Pure and fast: no model, no network, no subprocess.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from dataclasses import dataclass

from spo_cli import presets, prompts
from spo_cli.outputs import naming
from spo_cli.errors import EXIT_USAGE, UsageError
from spo_cli.request import ImageRequest
from spo_cli.validate import SEED_MAX
from spo_cli.prompts import ParsedFile, PromptLine

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "prompts.txt"

ALL_KEYS = ("prompt", "negative_prompt", "seed", "num_images", "steps", "guidance", "width", "height",
            "scheduler", "generator_device", "prompt_syntax", "emphasis", "watermark", "name", "image", "mask",
            "strength", "mask_blur", "mask_crop", "hires", "hires_upscaler", "hires_steps", "hires_strength")


def jl(*objs) -> str:
    """A jsonl text: dicts are JSON-encoded, strings are taken verbatim (comments, raw bad JSON)."""
    return "".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objs)


def parse_jsonl(*objs) -> ParsedFile:
    return prompts.parse(jl(*objs), "f.jsonl")


def one_problem(*objs) -> str:
    parsed = parse_jsonl(*objs)
    assert parsed.lines == []
    assert len(parsed.problems) == 1, parsed.problems
    return parsed.problems[0]


def defaults(**kw) -> ImageRequest:
    return ImageRequest(**{
        "prompt": "", "seed": 100, "negative_prompt": "blurry", "steps": 30, "guidance": 5.0,
        "width": 1024, "height": 1024, "scheduler": "default", "generator_device": "cpu", **kw,
    })


def write(tmp_path: Path, name: str, content: str | bytes) -> str:
    p = tmp_path / name
    p.write_bytes(content.encode() if isinstance(content, str) else content)
    return str(p)


def usage_error(fn, *args, **kw) -> UsageError:
    with pytest.raises(UsageError) as e:
        fn(*args, **kw)
    assert e.value.exit_code == EXIT_USAGE
    return e.value


# ---------------------------------------------------------------------------------------------
# .txt


def test_txt_one_prompt_per_line():
    parsed = prompts.parse("a red fox\nan old lighthouse\n", "p.txt")
    assert parsed == ParsedFile("p.txt", [PromptLine(1, "a red fox"), PromptLine(2, "an old lighthouse")], [])
    assert all(pl.settings == {} and pl.num_images is None and pl.name is None for pl in parsed.lines)


def test_txt_skips_blank_and_comment_lines_but_counts_them():
    text = (
        "# header comment\n"        # 1
        "\n"                        # 2
        "first prompt\n"            # 3
        "   \t  \n"                 # 4  whitespace only
        "    # indented comment\n"  # 5
        "\t# tab-indented comment\n"  # 6
        "second prompt\n"           # 7
        "#no space comment\n"       # 8
        "third prompt"              # 9  no final newline
    )
    parsed = prompts.parse(text, "p.txt")
    assert [(pl.line, pl.prompt) for pl in parsed.lines] == [
        (3, "first prompt"), (7, "second prompt"), (9, "third prompt")]
    assert parsed.problems == []


def test_txt_strips_whitespace_and_keeps_inner_hash_and_braces():
    parsed = prompts.parse("  \ta cat # not a comment \t \n{curly} prompt\n  [bracket]  \n", "p.txt")
    assert [pl.prompt for pl in parsed.lines] == ["a cat # not a comment", "{curly} prompt", "[bracket]"]
    assert parsed.problems == []


def test_txt_bom_and_crlf_via_read(tmp_path):
    path = write(tmp_path, "p.txt", "\ufeff# comment\r\n\r\nfirst\r\n  second  \r\n# c\r\nthird\r\n".encode())
    parsed = prompts.read(path)
    assert parsed.source == path
    assert [(pl.line, pl.prompt) for pl in parsed.lines] == [(3, "first"), (4, "second"), (6, "third")]
    assert not any("\r" in pl.prompt or "\ufeff" in pl.prompt for pl in parsed.lines)


def test_txt_bom_before_a_prompt_is_not_part_of_it(tmp_path):
    path = write(tmp_path, "p.txt", b"\xef\xbb\xbfa fox\r\nan owl")
    assert [(pl.line, pl.prompt) for pl in prompts.read(path).lines] == [(1, "a fox"), (2, "an owl")]


def test_parse_strips_a_bom_itself():
    parsed = prompts.parse("\ufeff# comment\r\na fox\r\n", "p.txt")
    assert [(pl.line, pl.prompt) for pl in parsed.lines] == [(2, "a fox")]


def test_txt_keeps_unicode_prompts():
    parsed = prompts.parse("un renard roux dans la neige, lumière dorée\n雪の中の狐\n", "p.txt")
    assert [pl.prompt for pl in parsed.lines] == ["un renard roux dans la neige, lumière dorée", "雪の中の狐"]


@pytest.mark.parametrize("sep", ["\x0c", "\x85", "\u2028"])
def test_txt_line_numbers_count_only_real_newlines(sep):
    parsed = prompts.parse(f"a{sep}b\nc\n", "p.txt")
    assert [(pl.line, pl.prompt) for pl in parsed.lines] == [(1, f"a{sep}b"), (2, "c")]


def test_jsonl_raw_line_separator_inside_a_string():
    text = json.dumps({"prompt": "a\u2028b"}, ensure_ascii=False) + "\n"
    parsed = prompts.parse(text, "f.jsonl")
    assert parsed.problems == []
    assert [(pl.line, pl.prompt) for pl in parsed.lines] == [(1, "a\u2028b")]


# ---------------------------------------------------------------------------------------------
# .jsonl: valid lines


def test_jsonl_every_key_is_parsed():
    obj = {"prompt": "a red fox", "negative_prompt": "blurry", "seed": 5, "num_images": 3, "steps": 20,
           "guidance": 7.5, "width": 832, "height": 1216, "scheduler": "euler", "generator_device": "cuda",
           "prompt_syntax": "a1111", "emphasis": "none-norm", "watermark": True, "name": "hero"}
    assert set(obj) | set(prompts.EDIT_KEYS) == set(ALL_KEYS) == set(prompts.KEYS)  # edits: test_i2i_cli.py
    parsed = parse_jsonl(obj)
    assert parsed.problems == []
    assert parsed.lines == [PromptLine(
        1, "a red fox",
        {"negative_prompt": "blurry", "seed": 5, "steps": 20, "guidance": 7.5, "width": 832, "height": 1216,
         "scheduler": "euler", "generator_device": "cuda", "prompt_syntax": "a1111", "emphasis": "none-norm",
         "watermark": True},
        3, "hero")]


def test_jsonl_prompt_only_sets_nothing_else():
    assert parse_jsonl({"prompt": "a fox"}).lines == [PromptLine(1, "a fox", {}, None, None)]


def test_jsonl_settings_keys_are_image_request_fields():
    fields = set(ImageRequest.__dataclass_fields__)
    assert set(prompts.SETTINGS) <= fields
    assert set(prompts.KEYS) - set(prompts.SETTINGS) == {"prompt", "num_images", "name", *prompts.EDIT_KEYS}


def test_jsonl_integer_guidance_becomes_float():
    (pl,) = parse_jsonl({"prompt": "a", "guidance": 7}).lines
    assert pl.settings == {"guidance": 7.0} and type(pl.settings["guidance"]) is float


@pytest.mark.parametrize("neg", [None, ""])
def test_jsonl_empty_negative_prompt_means_none(neg):
    (pl,) = parse_jsonl({"prompt": "a", "negative_prompt": neg}).lines
    assert pl.settings == {"negative_prompt": None}


def test_jsonl_name_null_means_no_name():
    (pl,) = parse_jsonl({"prompt": "a", "name": None}).lines
    assert pl.name is None


@pytest.mark.parametrize("obj, settings", [
    ({"seed": 0}, {"seed": 0}),
    ({"seed": SEED_MAX}, {"seed": SEED_MAX}),
    ({"steps": 1}, {"steps": 1}),
    ({"steps": 1000}, {"steps": 1000}),
    ({"guidance": 0}, {"guidance": 0.0}),
    ({"width": 8, "height": 8}, {"width": 8, "height": 8}),
    ({"width": 2048}, {"width": 2048}),
])
def test_jsonl_boundary_values_accepted(obj, settings):
    parsed = parse_jsonl({"prompt": "a", **obj})
    assert parsed.problems == []
    assert parsed.lines[0].settings == settings


@pytest.mark.parametrize("n", [1, 10_000])
def test_jsonl_num_images_bounds_accepted(n):
    assert parse_jsonl({"prompt": "a", "num_images": n}).lines[0].num_images == n


@pytest.mark.parametrize("scheduler", list(presets.SCHEDULERS))
def test_jsonl_every_known_scheduler_accepted(scheduler):
    assert parse_jsonl({"prompt": "a", "scheduler": scheduler}).lines[0].settings == {"scheduler": scheduler}


def test_jsonl_comments_blank_lines_and_whitespace_are_skipped():
    text = '# comment\n\n   {"prompt": "a"}   \n  # indented\n\t{"prompt": "b"}\r\n'
    parsed = prompts.parse(text, "f.jsonl")
    assert [(pl.line, pl.prompt) for pl in parsed.lines] == [(3, "a"), (5, "b")]
    assert parsed.problems == []


# ---------------------------------------------------------------------------------------------
# .jsonl: invalid lines


def test_jsonl_unknown_key_is_an_error_naming_it():
    problem = one_problem({"prompt": "a fox", "stpes": 10})
    assert problem.startswith("f.jsonl:1: unknown key 'stpes'")
    assert all(k in problem for k in ALL_KEYS)  # lists the valid keys


def test_jsonl_typo_does_not_fall_back_to_a_default():
    parsed = parse_jsonl({"prompt": "ok"}, {"prompt": "a fox", "stpes": 10})
    assert [pl.line for pl in parsed.lines] == [1]
    assert parsed.problems[0].startswith("f.jsonl:2: ") and "'stpes'" in parsed.problems[0]


def test_jsonl_several_unknown_keys_all_named():
    problem = one_problem({"prompt": "a", "stpes": 1, "sead": 2})
    assert problem.startswith("f.jsonl:1: unknown keys ")
    assert "'stpes'" in problem and "'sead'" in problem


@pytest.mark.parametrize("obj, fragment", [
    ({}, "no 'prompt'"),
    ({"negative_prompt": "x"}, "no 'prompt'"),
    ({"prompt": ""}, "'prompt' is empty"),
    ({"prompt": "   \t"}, "'prompt' is empty"),
    ({"prompt": None}, "'prompt' must be a string, not NoneType"),
    ({"prompt": 5}, "'prompt' must be a string, not int 5"),
    ({"prompt": ["a"]}, "'prompt' must be a string, not list"),
    ({"prompt": "a", "negative_prompt": 5}, "'negative_prompt' must be a string"),
    ({"prompt": "a", "seed": "5"}, "'seed' must be a whole number, not '5'"),
    ({"prompt": "a", "seed": True}, "'seed' must be a whole number, not True"),
    ({"prompt": "a", "seed": 1.5}, "'seed' must be a whole number"),
    ({"prompt": "a", "seed": 5.0}, "'seed' must be a whole number"),
    ({"prompt": "a", "seed": None}, "'seed' must be a whole number"),
    ({"prompt": "a", "seed": -2}, f"'seed' must be from 0 to {SEED_MAX:,}"),
    ({"prompt": "a", "seed": SEED_MAX + 1}, f"'seed' must be from 0 to {SEED_MAX:,}"),
    ({"prompt": "a", "steps": 0}, "'steps' must be from 1 to 1,000"),
    ({"prompt": "a", "steps": 1001}, "'steps' must be from 1 to 1,000"),
    ({"prompt": "a", "steps": "20"}, "'steps' must be a whole number"),
    ({"prompt": "a", "steps": 20.0}, "'steps' must be a whole number"),
    ({"prompt": "a", "guidance": "high"}, "'guidance' must be a number, not 'high'"),
    ({"prompt": "a", "guidance": True}, "'guidance' must be a number"),
    ({"prompt": "a", "guidance": None}, "'guidance' must be a number"),
    ({"prompt": "a", "width": 1020}, "'width' must be a positive multiple of 8, not 1020"),
    ({"prompt": "a", "height": 1001}, "'height' must be a positive multiple of 8, not 1001"),
    ({"prompt": "a", "width": 0}, "'width' must be a positive multiple of 8, not 0"),
    ({"prompt": "a", "height": -8}, "'height' must be a positive multiple of 8, not -8"),
    ({"prompt": "a", "width": "1024"}, "'width' must be a whole number"),
    ({"prompt": "a", "width": 1024.0}, "'width' must be a whole number"),
    ({"prompt": "a", "scheduler": "eulerr"}, "'scheduler' cannot be 'eulerr'; choose one of"),
    ({"prompt": "a", "scheduler": 5}, "'scheduler' cannot be 5"),
    ({"prompt": "a", "num_images": 0}, "'num_images' must be from 1 to 10,000"),
    ({"prompt": "a", "num_images": "2"}, "'num_images' must be a whole number"),
    ({"prompt": "a", "num_images": True}, "'num_images' must be a whole number"),
    ({"prompt": "a", "name": 5}, "'name' must be a string"),
])
def test_jsonl_bad_values_reported_with_file_and_line(obj, fragment):
    problem = one_problem(obj)
    assert problem.startswith("f.jsonl:1: "), problem
    assert fragment in problem, problem


def test_jsonl_takes_a1111_sampler_names():
    parsed = parse_jsonl({"prompt": "a", "scheduler": "DPM++ 2M SDE Karras"}, {"prompt": "b", "scheduler": "euler a"})
    assert [pl.settings for pl in parsed.lines] == [{"scheduler": "dpm++2m-sde-karras"}, {"scheduler": "euler-a"}]


def test_jsonl_unknown_scheduler_lists_valid_names():
    problem = one_problem({"prompt": "a", "scheduler": "eulerr"})
    assert all(name in problem for name in presets.SCHEDULERS)
    assert "choose one of" in problem


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"])
def test_jsonl_non_finite_guidance_rejected(literal):
    # Python's json accepts the NaN / Infinity literals, and 1e999 overflows to inf.
    assert json.loads(f'{{"g": {literal}}}')  # sanity: the literal really parses
    problem = one_problem('{"prompt": "a", "guidance": %s}' % literal)
    assert problem.startswith("f.jsonl:1: 'guidance' must be a finite number"), problem


@pytest.mark.parametrize("raw", ["[1, 2]", '["prompt", "a"]', '"a string"', "42", "null", "true"])
def test_jsonl_non_object_lines_rejected(raw):
    problem = one_problem(raw)
    assert problem.startswith("f.jsonl:1: expected a JSON object"), problem


@pytest.mark.parametrize("raw", ['{"prompt": "a",}', "{prompt: 'a'}", '{"prompt": "a"', '{"prompt": "a"} x',
                                 "{"])
def test_jsonl_invalid_json_rejected(raw):
    problem = one_problem(raw)
    assert problem.startswith("f.jsonl:1: not valid JSON ("), problem
    assert "column" in problem


def test_jsonl_all_bad_lines_reported_at_once_with_real_line_numbers():
    text = jl(
        "# batch",                                 # 1
        {"prompt": "good one"},                    # 2
        "",                                        # 3
        {"prompt": "a", "stpes": 3},               # 4
        {"prompt": "a", "seed": "5"},              # 5
        {"prompt": "good two", "steps": 12},       # 6
        "[1, 2]",                                  # 7
        "# another comment",                       # 8
        '{"prompt": "a", "guidance": NaN}',        # 9
        "{not json",                               # 10
        {"prompt": "a", "width": 1001},            # 11
        {"prompt": "a", "scheduler": "nope"},      # 12
        {"prompt": ""},                            # 13
        {"seed": 1},                               # 14
        {"prompt": "good three"},                  # 15
    )
    parsed = prompts.parse(text, "batch.jsonl")
    assert [(pl.line, pl.prompt) for pl in parsed.lines] == [(2, "good one"), (6, "good two"), (15, "good three")]
    assert [p.split(": ", 1)[0] for p in parsed.problems] == [
        f"batch.jsonl:{n}" for n in (4, 5, 7, 9, 10, 11, 12, 13, 14)]
    assert parsed.lines[1].settings == {"steps": 12}


def test_read_returns_problems_and_leaves_bad_lines_out(tmp_path):
    path = write(tmp_path, "p.jsonl", jl({"prompt": "a"}, {"prompt": "b", "stpes": 1}, {"prompt": "c"}))
    parsed = prompts.read(path)
    assert [pl.line for pl in parsed.lines] == [1, 3]
    assert len(parsed.problems) == 1 and parsed.problems[0].startswith(f"{path}:2: unknown key 'stpes'")


def test_read_file_with_only_bad_lines_returns_problems_instead_of_raising(tmp_path):
    path = write(tmp_path, "p.jsonl", '{"prompt": ""}\n')
    parsed = prompts.read(path)
    assert parsed.lines == [] and len(parsed.problems) == 1


# ---------------------------------------------------------------------------------------------
# names


@pytest.mark.parametrize("name", [
    "../x", "a/b", "/etc/passwd", "..", ".", ".hidden", "C:\\x", "a\\b", "a:b", " x", "x ", "dir/../../x",
])
def test_hostile_names_rejected(name):
    problem = one_problem({"prompt": "a", "name": name})
    assert problem.startswith(f"f.jsonl:1: 'name' {json.dumps(name)} is not a plain file name"), problem


@pytest.mark.parametrize("name, bad", [
    ("y`touch${IFS}PWNED`", '"$", "`", "{", "}"'), ("a;b", '";"'), ("a|b", '"|"'), ("a&b", '"&"'),
    ("it's", '"\'"'), ('say "hi"', '"\\""'), ("a\nb", '"\\n"'), ("a\tb", '"\\t"'), ("a$(id)", '"$", "(", ")"'),
    ("a>b", '">"'), ("a*", '"*"'), ("x\u2028y", '"\\u2028"'),
])
def test_names_a_shell_would_act_on_rejected(name, bad):
    """A name ends up in shell commands (the page's copied replay command): refused where it is made,
    one line naming file:line, the key and the characters."""
    problem = one_problem({"prompt": "a", "name": name})
    assert problem.startswith(f"f.jsonl:1: 'name' {json.dumps(name)} has characters a shell would act on ({bad})"), \
        problem


def test_leading_dash_and_the_scores_suffix_rejected():
    assert one_problem({"prompt": "a", "name": "-rf"}).startswith("f.jsonl:1: 'name' \"-rf\" starts with '-'")
    # x.scores.json is the scores file of x.png: a line named x.scores would have its sidecar overwritten.
    for name in ("x.scores", "X.SCORES"):
        problem = one_problem({"prompt": "a", "name": name})
        assert problem.startswith(f"f.jsonl:1: 'name' \"{name}\" ends in '.scores'"), problem
    parsed = parse_jsonl({"prompt": "a", "name": "x.scores2"}, {"prompt": "b", "name": "a-b c,d+e=f@g%h"})
    assert parsed.problems == [] and [pl.name for pl in parsed.lines] == ["x.scores2", "a-b c,d+e=f@g%h"]


@pytest.mark.parametrize("name, words", [("a\x00b", "contains a NUL character"), ("", "is empty"),
                                         ("x" * 201, "is 201 characters long; the limit is 200")])
def test_names_that_are_not_text_rejected(name, words):
    assert one_problem({"prompt": "a", "name": name}).startswith(f"f.jsonl:1: 'name' {words}")


@pytest.mark.parametrize("name", ["hero", "hero_1.v2", "Fox-Portrait", "renard-doré", "a" * 200])
def test_plain_names_accepted(name):
    parsed = parse_jsonl({"prompt": "a", "name": name})
    assert parsed.problems == [] and parsed.lines[0].name == name


def test_duplicate_names_reported_with_both_lines():
    parsed = parse_jsonl(
        {"prompt": "a", "name": "x"},   # 1
        {"prompt": "b", "name": "y"},   # 2
        "# comment",                    # 3
        {"prompt": "c", "name": "x"},   # 4
        {"prompt": "d"},                # 5
        {"prompt": "e", "name": "x"},   # 6
    )
    assert parsed.problems == [
        'f.jsonl:4: name "x" is already used on line 1',
        'f.jsonl:6: name "x" is already used on line 1',
    ]
    assert [pl.line for pl in parsed.lines] == [1, 2, 5]


def test_duplicate_name_on_a_bad_line_is_not_counted_twice():
    parsed = parse_jsonl({"prompt": "a", "name": "x"}, {"prompt": "", "name": "x"})
    assert len(parsed.problems) == 1 and parsed.problems[0].startswith("f.jsonl:2: 'prompt'")


# ---------------------------------------------------------------------------------------------
# format detection


@pytest.mark.parametrize("source, fmt", [("p.txt", "txt"), ("dir.jsonl/p.txt", "txt"), ("p.jsonl", "jsonl"),
                                          ("a/b/p.jsonl", "jsonl")])
def test_format_by_suffix(source, fmt):
    # The suffix wins over the content.
    content = '{"prompt": "a"}\n' if fmt == "txt" else "a plain prompt\n"
    assert prompts.detect_format(content, source, None) == fmt


def test_fmt_override_beats_suffix():
    assert prompts.detect_format("a plain prompt", "p.txt", "jsonl") == "jsonl"
    assert prompts.detect_format('{"prompt": "a"}', "p.jsonl", "txt") == "txt"
    parsed = prompts.parse('{"prompt": "a", "seed": 3}\n', "p.txt", fmt="jsonl")
    assert parsed.lines == [PromptLine(1, "a", {"seed": 3})]
    parsed = prompts.parse('{"prompt": "a"}\n', "p.jsonl", fmt="txt")
    assert parsed.lines == [PromptLine(1, '{"prompt": "a"}')]


@pytest.mark.parametrize("fmt", ["csv", "json", "TXT", "yaml"])
def test_unknown_fmt_is_a_usage_error(fmt):
    err = usage_error(prompts.detect_format, "a", "p.txt", fmt)
    assert fmt in err.message and "txt" in err.paragraph() and "jsonl" in err.paragraph()
    usage_error(prompts.parse, "a", "p.txt", fmt)


@pytest.mark.parametrize("text, fmt", [
    ('{"prompt": "a"}\n{"prompt": "b"}\n', "jsonl"),
    ('# comment\n\n  {"prompt": "a"}\n   # indented\n', "jsonl"),
    ('{"prompt": "a"}\na plain prompt\n', "txt"),
    ("a plain prompt\n", "txt"),
    ("", "txt"),
    ("# only comments\n\n", "txt"),
    ("[1, 2]\n", "txt"),
])
def test_format_by_content_for_stdin(text, fmt):
    assert prompts.detect_format(text, "<stdin>", None) == fmt


def test_unknown_suffix_detected_by_content(tmp_path):
    path = write(tmp_path, "batch.prompts", '{"prompt": "a", "steps": 9}\n')
    assert prompts.read(path).lines == [PromptLine(1, "a", {"steps": 9})]
    path = write(tmp_path, "batch2.prompts", "a fox\n")
    assert prompts.read(path).lines == [PromptLine(1, "a fox")]


def test_stdin_jsonl_by_content():
    parsed = prompts.read("-", stdin=io.BytesIO(b'# c\n{"prompt": "a", "seed": 3}\n{"prompt": "b"}\n'))
    assert parsed.source == "<stdin>"
    assert parsed.lines == [PromptLine(2, "a", {"seed": 3}), PromptLine(3, "b")]


def test_stdin_txt_by_content():
    parsed = prompts.read("-", stdin=io.BytesIO(b"a fox\r\n\r\n# c\r\nan owl\r\n"))
    assert parsed.source == "<stdin>"
    assert parsed.lines == [PromptLine(1, "a fox"), PromptLine(4, "an owl")]


def test_stdin_problems_name_stdin():
    parsed = prompts.read("-", stdin=io.BytesIO(b'{"prompt": "a"}\n{"prompt": "b", "stpes": 2}\n'))
    assert parsed.problems and parsed.problems[0].startswith("<stdin>:2: unknown key 'stpes'")


def test_stdin_with_bom_still_detected_as_jsonl():
    parsed = prompts.read("-", stdin=io.BytesIO(b'\xef\xbb\xbf{"prompt": "a"}\r\n'))
    assert parsed.problems == [] and parsed.lines == [PromptLine(1, "a")]


def test_parse_detects_jsonl_behind_a_bom():
    parsed = prompts.parse('\ufeff{"prompt": "a"}\n', "<stdin>")
    assert parsed.lines == [PromptLine(1, "a")]


def test_stdin_fmt_override():
    parsed = prompts.read("-", "txt", stdin=io.BytesIO(b'{"prompt": "a"}\n'))
    assert parsed.lines == [PromptLine(1, '{"prompt": "a"}')]
    parsed = prompts.read("-", "jsonl", stdin=io.BytesIO(b"a fox\n"))
    assert parsed.lines == [] and parsed.problems[0].startswith("<stdin>:1: not valid JSON")


def test_stdin_text_stream_accepted():
    assert prompts.read("-", stdin=io.StringIO("a fox\n")).lines == [PromptLine(1, "a fox")]


# ---------------------------------------------------------------------------------------------
# read(): files


def test_read_missing_file(tmp_path):
    path = str(tmp_path / "nope.txt")
    err = usage_error(prompts.read, path)
    assert path in err.message and "does not exist" in err.message


def test_read_directory(tmp_path):
    err = usage_error(prompts.read, str(tmp_path))
    assert str(tmp_path) in err.message and "not a file" in err.message


def test_read_non_utf8_names_the_line(tmp_path):
    path = write(tmp_path, "p.txt", b"first\n# comment\nbad \xff byte\nlast\n")
    err = usage_error(prompts.read, path)
    assert err.message.startswith(f"{path}:3: not UTF-8 text")
    assert "UTF-8" in err.hint


def test_read_latin1_file_rejected(tmp_path):
    path = write(tmp_path, "p.txt", "café crème\n".encode("latin-1"))
    assert usage_error(prompts.read, path).message.startswith(f"{path}:1: not UTF-8")


def test_read_non_utf8_on_stdin():
    err = usage_error(prompts.read, "-", stdin=io.BytesIO(b"ok\n\xfe\n"))
    assert err.message.startswith("<stdin>:2: not UTF-8")


def test_read_non_utf8_line_number_after_a_bom(tmp_path):
    path = write(tmp_path, "p.txt", b"\xef\xbb\xbfa\n\xff\n")
    assert usage_error(prompts.read, path).message.startswith(f"{path}:2: not UTF-8")


@pytest.mark.parametrize("content", [b"", b"\n\n", b"   \n\t\n", b"# only\n  # comments\n", b"\xef\xbb\xbf",
                                     b"\xef\xbb\xbf# c\r\n"])
@pytest.mark.parametrize("name", ["p.txt", "p.jsonl"])
def test_read_empty_or_comments_only_file(tmp_path, content, name):
    path = write(tmp_path, name, content)
    err = usage_error(prompts.read, path)
    assert err.message == f"{path} holds no prompts."
    assert err.hint


def test_read_empty_stdin():
    assert usage_error(prompts.read, "-", stdin=io.BytesIO(b"")).message == "<stdin> holds no prompts."


def test_read_txt_file(tmp_path):
    path = write(tmp_path, "p.txt", "a fox\n# c\nan owl\n")
    assert prompts.read(path) == ParsedFile(path, [PromptLine(1, "a fox"), PromptLine(3, "an owl")], [])


def test_examples_file_has_twenty_prompts():
    parsed = prompts.read(str(EXAMPLES))
    assert parsed.problems == []
    assert len(parsed.lines) == 20
    assert all(pl.prompt and not pl.prompt.startswith("#") and pl.prompt == pl.prompt.strip()
               for pl in parsed.lines)
    assert len({pl.prompt for pl in parsed.lines}) == 20
    assert [pl.line for pl in parsed.lines] == sorted(pl.line for pl in parsed.lines)
    text_lines = EXAMPLES.read_text(encoding="utf-8").splitlines()
    assert all(text_lines[pl.line - 1].strip() == pl.prompt for pl in parsed.lines)
    jobs_ = expand(parsed, defaults(seed=0), 1)
    assert [j.request.seed for j in jobs_] == list(range(20))
    assert len({j.stem for j in jobs_}) == 20


# ---------------------------------------------------------------------------------------------
# tasks: seeds


@dataclass
class J:
    request: ImageRequest
    line: int
    index: int
    stem: str


def expand(parsed, d, n) -> list[J]:
    tasks, _ = prompts.tasks(parsed, d, n)
    return [J(t.request, t.extra["batch"]["line"], t.extra["batch"]["index"], t.stem) for t in tasks]


def seeds(job_list: list[J]) -> list[int]:
    return [j.request.seed for j in job_list]


def test_expand_seeds_count_images_in_file_order():
    parsed = prompts.parse("a\n# c\nb\n\nc\n", "p.txt")
    out = expand(parsed, defaults(seed=100), 1)
    assert seeds(out) == [100, 101, 102]
    assert [(j.line, j.index, j.request.prompt) for j in out] == [(1, 0, "a"), (3, 0, "b"), (5, 0, "c")]


def test_expand_num_images_default():
    parsed = prompts.parse("a\nb\n", "p.txt")
    out = expand(parsed, defaults(seed=100), 3)
    assert seeds(out) == [100, 101, 102, 103, 104, 105]
    assert [(j.line, j.index) for j in out] == [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]


def test_expand_line_num_images_overrides_default():
    parsed = parse_jsonl({"prompt": "a", "num_images": 3}, {"prompt": "b"}, {"prompt": "c", "num_images": 1})
    out = expand(parsed, defaults(seed=100), 2)
    assert [(j.line, j.index, j.request.seed) for j in out] == [
        (1, 0, 100), (1, 1, 101), (1, 2, 102), (2, 0, 103), (2, 1, 104), (3, 0, 105)]


def test_expand_line_seed_counts_up_and_still_consumes_indices():
    parsed = parse_jsonl(
        {"prompt": "a"},                                # k = 0, 1
        {"prompt": "b", "seed": 7, "num_images": 3},    # own seeds 7, 8, 9; consumes k = 2, 3, 4
        {"prompt": "c"},                                # k = 5, 6
    )
    out = expand(parsed, defaults(seed=100), 2)
    assert seeds(out) == [100, 101, 7, 8, 9, 105, 106]


def test_expand_line_seed_zero_is_used():
    out = expand(parse_jsonl({"prompt": "a", "seed": 0}), defaults(seed=100), 2)
    assert seeds(out) == [0, 1]


def test_expand_bad_lines_do_not_consume_seeds():
    parsed = parse_jsonl({"prompt": "a"}, {"prompt": "b", "stpes": 1}, {"prompt": "c"})
    assert seeds(expand(parsed, defaults(seed=100), 1)) == [100, 101]


def test_expand_seeds_depend_only_on_file_and_seed():
    parsed = parse_jsonl({"prompt": "a", "num_images": 2}, {"prompt": "b"})
    base = expand(parsed, defaults(seed=50), 1)
    other = expand(parsed, defaults(seed=50, steps=5, guidance=1.0, width=512, height=512,
                                            scheduler="euler", negative_prompt=None), 1)
    assert seeds(other) == seeds(base) == [50, 51, 52]
    assert [j.stem for j in other] == [j.stem for j in base]
    assert seeds(expand(parsed, defaults(seed=60), 1)) == [60, 61, 62]


def test_expand_seed_overflow_from_defaults():
    parsed = prompts.parse("a\nb\n", "p.txt")
    assert seeds(expand(parsed, defaults(seed=SEED_MAX - 1), 1)) == [SEED_MAX - 1, SEED_MAX]
    err = usage_error(expand, parsed, defaults(seed=SEED_MAX), 1)
    assert f"{SEED_MAX + 1:,}" in err.message
    usage_error(expand, parsed, defaults(seed=SEED_MAX - 1), 2)


def test_expand_seed_overflow_from_a_line_seed():
    assert seeds(expand(parse_jsonl({"prompt": "a", "seed": SEED_MAX}), defaults(seed=0), 1)) == [SEED_MAX]
    parsed = parse_jsonl({"prompt": "a", "seed": SEED_MAX, "num_images": 2})
    err = usage_error(expand, parsed, defaults(seed=0), 1)
    assert f"{SEED_MAX + 1:,}" in err.message


# ---------------------------------------------------------------------------------------------
# tasks: settings


def test_expand_line_settings_override_only_their_fields():
    parsed = parse_jsonl(
        {"prompt": "a", "steps": 10, "width": 512},
        {"prompt": "b", "negative_prompt": "", "guidance": 9, "scheduler": "euler", "height": 768},
        {"prompt": "c"},
    )
    d = defaults(seed=100)
    a, b, c = expand(parsed, d, 1)
    assert a.request == ImageRequest(prompt="a", seed=100, negative_prompt="blurry", steps=10, guidance=5.0,
                                     width=512, height=1024, scheduler="default", generator_device="cpu")
    assert b.request == ImageRequest(prompt="b", seed=101, negative_prompt=None, steps=30, guidance=9.0,
                                     width=1024, height=768, scheduler="euler", generator_device="cpu")
    assert c.request == ImageRequest(prompt="c", seed=102, negative_prompt="blurry", steps=30, guidance=5.0,
                                     width=1024, height=1024, scheduler="default", generator_device="cpu")
    assert d.prompt == "" and d.seed == 100  # defaults untouched


def test_expand_line_negative_prompt_overrides_default():
    (job,) = expand(parse_jsonl({"prompt": "a", "negative_prompt": "text, watermark"}), defaults(), 1)
    assert job.request.negative_prompt == "text, watermark"


def test_expand_all_images_of_a_line_share_its_settings():
    parsed = parse_jsonl({"prompt": "a", "steps": 12, "num_images": 3})
    out = expand(parsed, defaults(), 1)
    assert {(j.request.prompt, j.request.steps) for j in out} == {("a", 12)}
    assert len({j.request.group_key() for j in out}) == 1


# ---------------------------------------------------------------------------------------------
# tasks: stems


def test_expand_auto_stems():
    parsed = prompts.parse("# c\nA Red Fox, in the SNOW!\n\nrenard doré\n", "p.txt")
    out = expand(parsed, defaults(seed=100), 2)
    assert [j.stem for j in out] == [
        "00002-a-red-fox-in-the-snow-s100", "00002-a-red-fox-in-the-snow-s101",
        "00004-renard-dore-s102", "00004-renard-dore-s103"]
    for j in out:
        assert j.stem == f"{j.line:05d}-{naming.slugify(j.request.prompt)}-s{j.request.seed}"
        assert naming.check_stem(j.stem) == j.stem


def test_expand_auto_stem_uses_line_seed():
    out = expand(parse_jsonl({"prompt": "fox", "seed": 7, "num_images": 2}), defaults(), 1)
    assert [j.stem for j in out] == ["00001-fox-s7", "00001-fox-s8"]


def test_expand_auto_stem_of_unsluggable_prompt():
    out = expand(prompts.parse("雪の中の狐\n", "p.txt"), defaults(seed=1), 1)
    assert out[0].stem == "00001-image-s1"


def test_expand_named_stems():
    parsed = parse_jsonl(
        {"prompt": "a", "name": "solo"},
        {"prompt": "b", "name": "multi", "num_images": 3},
        {"prompt": "c", "name": "bydefault"},
    )
    out = expand(parsed, defaults(seed=100), 1)
    assert [j.stem for j in out] == ["solo", "multi-0", "multi-1", "multi-2", "bydefault"]
    out = expand(parsed, defaults(seed=100), 2)
    assert [j.stem for j in out] == ["solo-0", "solo-1", "multi-0", "multi-1", "multi-2",
                                     "bydefault-0", "bydefault-1"]
    assert [j.index for j in out] == [0, 1, 0, 1, 2, 0, 1]


def test_expand_same_prompt_and_seed_on_two_lines_do_not_collide():
    parsed = parse_jsonl({"prompt": "fox", "seed": 1}, {"prompt": "fox", "seed": 1})
    assert [j.stem for j in expand(parsed, defaults(), 1)] == ["00001-fox-s1", "00002-fox-s1"]


def test_expand_name_colliding_with_a_numbered_name():
    parsed = parse_jsonl({"prompt": "a", "name": "foo", "num_images": 2}, "# c", {"prompt": "b", "name": "foo-0"})
    assert parsed.problems == []  # distinct names: only the expansion collides
    err = usage_error(expand, parsed, defaults(), 1)
    assert err.message.startswith("f.jsonl:3: ")
    assert "'foo-0'" in err.message and "line 1" in err.message


def test_expand_name_colliding_with_an_auto_stem():
    parsed = parse_jsonl({"prompt": "a"}, {"prompt": "b", "name": "00001-a-s100"})
    err = usage_error(expand, parsed, defaults(seed=100), 1)
    assert err.message.startswith("f.jsonl:2: ") and "line 1" in err.message
    # With another --seed the auto stem moves and nothing collides.
    assert [j.stem for j in expand(parsed, defaults(seed=5), 1)] == ["00001-a-s5", "00001-a-s100"]


def test_expand_stems_are_unique_and_usable():
    parsed = parse_jsonl(
        {"prompt": "a fox", "num_images": 3}, {"prompt": "a fox", "name": "fox"},
        {"prompt": "an owl", "seed": 3, "num_images": 2}, {"prompt": "x", "name": "many", "num_images": 4},
    )
    out = expand(parsed, defaults(), 2)
    stems = [j.stem for j in out]
    assert len(stems) == len(set(stems)) == 3 + 2 + 2 + 4
    assert all(naming.check_stem(s) == s for s in stems)


def test_expand_numbered_name_too_long_for_a_file_is_refused_up_front():
    parsed = parse_jsonl({"prompt": "a", "name": "n" * 200, "num_images": 2})
    assert parsed.problems == []  # 200 is a usable name; "-0" makes it one byte too many per file
    err = usage_error(expand, parsed, defaults(), 1)
    assert err.message.startswith("f.jsonl:1: 'name' gives the file name 'nnn") and "too long" in err.message
