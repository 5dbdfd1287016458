"""Unit tests for spo_cli.syntax: A1111 emphasis parsing and 75-token chunking.

The expected values are what AUTOMATIC1111's own code gives (modules/prompt_parser.py
`parse_prompt_attention`, its docstring examples first; modules/sd_hijack_clip.py `tokenize_line`),
quirks included. Pure and fast, except the one test with a real CLIP tokenizer (slow tier).
"""

from __future__ import annotations

import re

import pytest
from pytest import approx

from spo_cli import syntax
from spo_cli.syntax import BREAK, Chunk, PromptSyntaxError, chunks, has_syntax, parse

R = 1.1
S = 1 / 1.1

PARSED = [
    # A1111's docstring examples
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", R), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", R)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", R)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.3 * R * R), (" ", R), ("on", 1.0), (" a ", R), ("hill", 0.55),
      (", sun, ", R), ("sky", R ** 4), (".", R)]),
    # weights
    ("[x]", [("x", S)]),
    ("((x))", [("x", R * R)]),
    ("[[x]]", [("x", S * S)]),
    ("(x:1)", [("x", 1.0)]),
    ("(x:1.5)", [("x", 1.5)]),
    ("(x:-1)", [("x", -1.0)]),
    ("(x:-.5)", [("x", -0.5)]),
    ("(x:.5)", [("x", 0.5)]),
    ("(x:+2)", [("x", 2.0)]),
    ("(x: 1.5 )", [("x", 1.5)]),  # spaces around the weight: newer A1111's regex allows them
    ("(x:0)", [("x", 0.0)]),
    ("a (b:1.5) c", [("a ", 1.0), ("b", 1.5), (" c", 1.0)]),
    ("((a:1.5) b)", [("a", 1.5 * R), (" b", R)]),
    ("[(a:2)]", [("a", 2 * S)]),
    ("([a])", [("a", S * R)]),  # not exactly 1.0: the brackets still count as syntax
    ("(a:1.5)(b:1.5)", [("ab", 1.5)]),  # runs of equal weight merge
    # unbalanced and stray brackets
    ("[unbalanced", [("unbalanced", S)]),
    ("(a [b", [("a ", R), ("b", R * S)]),  # unclosed round brackets are applied before square ones
    ("[a (b", [("a ", S), ("b", R * S)]),
    ("a ) b", [("a ) b", 1.0)]),
    ("a ] b", [("a ] b", 1.0)]),
    ("(a]", [("a]", R)]),  # `]` with no `[` open is text, even inside ( )
    ("x:1.5) y", [("x:1.5) y", 1.0)]),  # a weight with no `(` open is text
    ("()", [("", 1.0)]),
    ("(:1.5)", [("", 1.0)]),
    ("a:b", [("a:b", 1.0)]),
    # escapes
    ("\\(x\\)", [("(x)", 1.0)]),
    ("\\[x\\]", [("[x]", 1.0)]),
    ("a \\\\ b", [("a \\ b", 1.0)]),
    ("a\\b", [("ab", 1.0)]),  # a backslash before anything else escapes nothing and vanishes
    ("a\\", [("a", 1.0)]),
    ("(\\(x\\))", [("(x)", R)]),
    ("\\(x:1.5\\)", [("(x:1.5)", 1.0)]),
    # BREAK: a word of its own (word boundaries, not spaces), capitals only
    ("a BREAK b", [("a", 1.0), BREAK, ("b", 1.0)]),
    ("BREAK a", [("", 1.0), BREAK, ("a", 1.0)]),
    ("a BREAK", [("a", 1.0), BREAK, ("", 1.0)]),
    ("BREAK", [("", 1.0), BREAK, ("", 1.0)]),
    ("a BREAK BREAK b", [("a", 1.0), BREAK, ("", 1.0), BREAK, ("b", 1.0)]),
    ("a,BREAK,b", [("a,", 1.0), BREAK, (",b", 1.0)]),
    ("a\nBREAK\nb", [("a", 1.0), BREAK, ("b", 1.0)]),
    ("a (b) BREAK c", [("a ", 1.0), ("b", R), ("", 1.0), BREAK, ("c", 1.0)]),
    ("aBREAK b", [("aBREAK b", 1.0)]),
    ("a BREAKS b", [("a BREAKS b", 1.0)]),
    ("a break b", [("a break b", 1.0)]),
    # inside brackets the marker is weighted too, so A1111 no longer sees it as a BREAK
    ("(a BREAK b)", [("a", R), ("BREAK", -R), ("b", R)]),
    # prompt editing and alternation are not parsed here: literal text in [ ] emphasis
    ("a [b:c:0.5] d", [("a ", 1.0), ("b:c:0.5", S), (" d", 1.0)]),
    ("a [b|c] d", [("a ", 1.0), ("b|c", S), (" d", 1.0)]),
    # empty
    ("", [("", 1.0)]),
    (" ", [(" ", 1.0)]),
]


@pytest.mark.parametrize(("text", "expected"), PARSED)
def test_parse_matches_a1111(text, expected):
    got = parse(text)
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == [approx(w) for _, w in expected]


def test_parse_float_values_are_a1111s_exactly():
    # A1111's docstring prints these products; the same order of multiplication gives them.
    got = dict(parse("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky)))."))
    assert got["house"] == 1.5730000000000004
    assert got["sky"] == 1.4641000000000006
    # Unclosed brackets: A1111 applies the round ones, then the square ones; the other order
    # would give 1.3000000000000003.
    assert parse("(a [(b:1.3)")[1] == ("b", 1.3)


@pytest.mark.parametrize("text", ["(a:1.2.3)", "(a:.)", "x (y:1..) z", "(a:-.)"])
def test_parse_refuses_a_weight_that_is_no_number(text):
    with pytest.raises(PromptSyntaxError, match="is not a number") as e:
        parse(text)
    assert isinstance(e.value, ValueError)


@pytest.mark.timeout(60)  # a hang guard, not a timing: its speed is benchmarks/hostile.py --round2's to measure
def test_parse_long_prompt():
    words = [f"(w{i}:1.{i % 9 + 1})" if i % 3 == 0 else f"w{i}" for i in range(1000)]
    got = parse(" ".join(words))
    assert "".join(t for t, _ in got) == " ".join(w.split(":")[0].lstrip("(") for w in words)
    assert got[0] == ("w0", approx(1.1))
    assert len(got) == 667  # 334 weighted words, and the 333 runs of plain text between them


@pytest.mark.parametrize("text", ["a cat", "", "a: b, c", "BREAKS", "a break b", "a )", "x:1.5) y", "100%"])
def test_has_syntax_false_for_plain_text(text):
    assert not has_syntax(text)


@pytest.mark.parametrize("text", ["a (cat)", "[x]", "(x:1)", "\\(x", "a\\b", "a BREAK b", "()", "(a:1.2.3)",
                                  "([a])", "BREAK"])
def test_has_syntax_true_when_a1111_would_change_it(text):
    assert has_syntax(text)


# ---------------------------------------------------------------------------------------------
# Chunking, with a fake tokenizer: one token per word, the comma a token of its own

BOS, EOS, PAD, COMMA = 49406, 49407, 0, 267
_IDS: dict[str, int] = {",": COMMA}


def fake_tokenize(texts: list[str]) -> list[list[int]]:
    return [[_IDS.setdefault(w, 1000 + len(_IDS)) for w in t.replace(",", " , ").split()] for t in texts]


def ids(text: str) -> list[int]:
    return fake_tokenize([text])[0]


def words(start: int, stop: int) -> str:
    return " ".join(f"w{i}" for i in range(start, stop))


def cut(text: str, **kw) -> list[Chunk]:
    kw = {"bos": BOS, "eos": EOS, **kw}
    return chunks(text, fake_tokenize, COMMA, **kw)


def content(chunk: Chunk) -> list[int]:
    """The prompt tokens of a chunk (the fake tokenizer never makes EOS)."""
    body = chunk.tokens[1:]
    return list(body[:body.index(EOS)])


def test_short_prompt_is_one_padded_chunk():
    (c,) = cut("a red fox")
    assert c.tokens == (BOS, *ids("a red fox"), EOS) + (EOS,) * 72
    assert c.multipliers == (1.0,) * 77


def test_second_encoder_pads_after_eos_with_its_pad_id():
    (c,) = cut("a red fox", pad=PAD)
    assert c.tokens == (BOS, *ids("a red fox"), EOS) + (PAD,) * 72


def test_empty_prompt_is_one_chunk_of_padding():
    (c,) = cut("")
    assert c.tokens == (BOS,) + (EOS,) * 76 and c.multipliers == (1.0,) * 77
    (c,) = cut("", pad=PAD)
    assert c.tokens == (BOS, EOS) + (PAD,) * 75


@pytest.mark.parametrize("pad", [EOS, PAD])
def test_75_tokens_fill_one_chunk_and_the_76th_starts_another(pad):
    (c,) = cut(words(0, 75), pad=pad)
    assert c.tokens == (BOS, *ids(words(0, 75)), EOS) 
    first, second = cut(words(0, 76), pad=pad)
    assert first.tokens == (BOS, *ids(words(0, 75)), EOS)
    assert second.tokens == (BOS, *ids("w75"), EOS) + (pad,) * 74


def test_1000_tokens_make_14_chunks_of_77():
    cs = cut(words(0, 1000), pad=PAD)
    assert len(cs) == 14
    assert all(len(c.tokens) == 77 and len(c.multipliers) == 77 for c in cs)
    assert all(c.tokens[0] == BOS for c in cs)
    assert all(c.tokens[-1] == EOS for c in cs[:13])
    assert [t for c in cs for t in content(c)] == ids(words(0, 1000))
    assert cs[13].tokens[26:] == (EOS,) + (PAD,) * 50 and cs[13].tokens[:26] == (BOS, *ids(words(975, 1000)))


def test_comma_back_off_moves_the_phrase_after_the_comma_to_the_next_chunk():
    text = f"{words(0, 60)}, {words(60, 80)}"  # comma at position 60: 15 tokens back when full
    first, second = cut(text, pad=PAD)
    assert content(first) == ids(words(0, 60)) + [COMMA]
    assert first.tokens[62:] == (EOS,) + (PAD,) * 14
    assert content(second) == ids(words(60, 80))


@pytest.mark.parametrize(("comma_at", "backs_off"), [(55, True), (54, False), (74, True)])
def test_comma_back_off_reaches_20_tokens_back(comma_at, backs_off):
    text = f"{words(0, comma_at)}, {words(comma_at, 90)}"
    first, second = cut(text)
    if backs_off:
        assert content(first) == ids(words(0, comma_at)) + [COMMA]
        assert content(second) == ids(words(comma_at, 90))
    else:
        assert content(first) == ids(words(0, comma_at)) + [COMMA] + ids(words(comma_at, 74))
        assert content(second) == ids(words(74, 90))


def test_comma_back_off_can_be_turned_off_or_widened():
    text = f"{words(0, 40)}, {words(40, 80)}"
    assert len(content(cut(text)[0])) == 75  # 35 back: too far by default
    assert content(cut(text, comma_backtrack=40)[0]) == ids(words(0, 40)) + [COMMA]
    text = f"{words(0, 70)}, {words(70, 80)}"
    assert len(content(cut(text, comma_backtrack=0)[0])) == 75


def test_a_comma_arriving_at_a_full_chunk_opens_the_next():
    first, second = cut(f"{words(0, 75)}, w75")
    assert content(first) == ids(words(0, 75))
    assert content(second) == [COMMA] + ids("w75")


def test_multipliers_follow_their_tokens():
    cs = cut(f"a (b c:1.5) [d] {words(0, 80)} (e)")
    assert cs[0].multipliers[:6] == (1.0, 1.0, 1.5, 1.5, approx(S), 1.0)
    assert cs[1].multipliers[:12] == (1.0,) * 10 + (approx(R), 1.0)  # BOS, w71..w79, e, EOS
    assert cs[1].tokens[10] == ids("e")[0]
    for c in cs:
        assert len(c.multipliers) == len(c.tokens) == 77


def test_break_closes_the_chunk_early():
    first, second = cut("a b BREAK c", pad=PAD)
    assert content(first) == ids("a b") and first.tokens[3:] == (EOS,) + (PAD,) * 73
    assert content(second) == ids("c")


def test_break_at_start_end_and_twice():
    empty = (BOS,) + (EOS,) * 76
    lead, body = cut("BREAK a")
    assert lead.tokens == empty and content(body) == ids("a")  # A1111 closes even an empty chunk
    assert [content(c) for c in cut("a BREAK")] == [ids("a")]  # no empty chunk after a trailing BREAK
    a, middle, b = cut("a BREAK BREAK b")
    assert middle.tokens == empty and content(b) == ids("b")
    (only,) = cut("BREAK")
    assert only.tokens == empty


def test_break_inside_brackets_is_a_word_as_in_a1111():
    (c,) = cut("(a BREAK b)")
    assert content(c) == ids("a BREAK b")
    assert c.multipliers[2] == approx(-R)


def test_syntax_off_reads_the_text_as_it_is():
    (c,) = cut("(a) BREAK b", syntax=False)
    assert content(c) == ids("(a) BREAK b") and set(c.multipliers) == {1.0}


def test_chunk_length_is_a_parameter():
    cs = cut(words(0, 25), chunk_length=10, comma_backtrack=3)
    assert [len(c.tokens) for c in cs] == [12, 12, 12]
    assert [len(content(c)) for c in cs] == [10, 10, 5]


def test_no_comma_token_means_no_back_off():
    cs = chunks(f"{words(0, 70)}, {words(70, 80)}", fake_tokenize, None, bos=BOS, eos=EOS)
    assert len(content(cs[0])) == 75


def test_syntax_imports_nothing_heavy():
    import subprocess
    import sys

    code = ("import sys, spo_cli.syntax, spo_cli.infotext\n"
            "print(sorted({'torch', 'transformers', 'numpy'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.slow
def test_with_the_real_tiny_clip_tokenizer(tmp_path):
    from transformers import CLIPTokenizer

    from spo_cli.tiny import write_tokenizer

    write_tokenizer(tmp_path)
    tok = CLIPTokenizer.from_pretrained(tmp_path)

    def tokenize(texts):
        return tok(texts, add_special_tokens=False, truncation=False)["input_ids"]

    comma = tok.get_vocab()[",</w>"]
    cs = syntax.chunks("a red fox, (fresh snow:1.3) BREAK golden hour", tokenize, comma,
                       bos=tok.bos_token_id, eos=tok.eos_token_id, pad=0)
    assert len(cs) == 2
    plain = tokenize(["a red fox, fresh snow"])[0]
    assert cs[0].tokens[:len(plain) + 2] == (tok.bos_token_id, *plain, tok.eos_token_id)
    assert set(cs[0].tokens[len(plain) + 2:]) == {0}
    snow = tokenize(["fresh snow"])[0]
    assert cs[0].multipliers[1 + len(plain) - len(snow):1 + len(plain)] == (1.3,) * len(snow)
    specials = {tok.bos_token_id, tok.eos_token_id, 0}
    assert [t for t in cs[1].tokens if t not in specials] == tokenize(["golden hour"])[0]

    # 119 tokens; the chunk fills 3 tokens past a comma, and the next token is no comma
    long = ", ".join(["a red fox in snow"] * 20)
    cs = syntax.chunks(long, tokenize, comma, bos=tok.bos_token_id, eos=tok.eos_token_id)
    assert len(cs) == 2 and all(len(c.tokens) == 77 for c in cs)
    first = [t for t in cs[0].tokens[1:] if t != tok.eos_token_id]
    assert len(first) == 72 and first[-1] == comma  # the phrase kept whole: moved to chunk 2
    assert list(cs[1].tokens[1:6]) == tokenize(["a red fox in snow"])[0]


# ---------------------------------------------------------------------------------------------
# Extra-network tags (A1111's modules/extra_networks.py re_extra_net) and BREAK's windows


@pytest.mark.parametrize("text, tags, left", [
    ("a fox <lora:detail:0.6>", ["<lora:detail:0.6>"], "a fox "),
    ("<lora:a:1><hypernet:b:0.5> fox", ["<lora:a:1>", "<hypernet:b:0.5>"], " fox"),
    ("a <lora:x:1:te=0.5> b", ["<lora:x:1:te=0.5>"], "a  b"),
    ("a <lora> b", [], "a <lora> b"), ("a <:x> b", [], "a <:x> b"), ("a <lo ra:x> b", [], "a <lo ra:x> b"),
    ("a <lora:> b", [], "a <lora:> b"), ("a <lora:x b", [], "a <lora:x b"), ("a > <b:c", [], "a > <b:c"),
    ("<a:<b:c>", ["<a:<b:c>"], ""), ("(x) <l:y:1> [z]", ["<l:y:1>"], "(x)  [z]"),
])
def test_extra_network_tags_are_found_and_taken_out_as_a1111_does(text, tags, left):
    a1111 = re.compile(r"<(\w+):([^>]+)>")
    assert syntax.extra_networks(text) == [m.group(0) for m in a1111.finditer(text)] == tags
    assert syntax.without_extra_networks(text) == a1111.sub("", text) == left
    assert has_syntax(text) == bool(tags) or "(" in text


@pytest.mark.timeout(60)
def test_finding_tags_ends_on_unclosed_tags():
    # '<a:' with no '>' after it made the regex scan to the end from every one of them: minutes here,
    # which the timeout turns into a failure (about 1 ms now; benchmarks/hostile.py --round2 times it).
    text = "<a:" * 100_000 + " x"
    assert syntax.extra_networks(text) == [] and syntax.without_extra_networks(text) == text


@pytest.mark.parametrize("text, windows", [
    ("a fox", 1), ("", 1), ("a BREAK b", 2), ("a BREAK", 1), ("BREAK", 1), ("BREAK a", 2),
    ("a BREAK BREAK b", 3), ("a BREAK , ", 1), ("(a BREAK b)", 1), ("a " + "BREAK " * 40 + "b", 41),
])
def test_break_windows_count_what_chunks_would_at_the_least(text, windows):
    assert syntax.break_windows(parse(text)) == windows
    assert len(cut(text)) >= windows


def test_text_past_the_prompt_limit_is_refused_before_it_is_parsed():
    from spo_cli.validate import PROMPT_MAX_CHARS

    with pytest.raises(syntax.PromptSyntaxError, match="at most 10,000"):
        syntax.parse("[a:b:" * 8000)  # 40,000 characters of open brackets: seconds of work if parsed
    at_limit = "[a|" * (PROMPT_MAX_CHARS // 3)
    assert syntax.parse(at_limit)  # the limit itself is parsed
