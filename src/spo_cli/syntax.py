"""AUTOMATIC1111 prompt syntax: emphasis weights, BREAK, and 75-token chunks.

Follows stable-diffusion-webui's rules exactly (modules/prompt_parser.py `parse_prompt_attention`,
modules/sd_hijack_clip.py `tokenize_line`), so that a prompt pasted from A1111 or Civitai is read
the way its author's tool read it, oddities included. Pure: stdlib only, because the CLI imports
it before torch to decide whether a prompt needs the weighted encoder at all.

Prompt editing `[a:b:step]` and alternation `[a|b]` are not supported: as in A1111 once its prompt
scheduling has had its turn, this parser sees them as literal text inside `[...]` emphasis.
Extra-network tags (`<lora:name:0.8>`) are taken out of the prompt before it is parsed, as A1111's
modules/extra_networks.py does (the negative prompt keeps them as text, as in A1111).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# The alternatives are ordered as A1111's: escapes first (a lone `\` is an escape of nothing and
# vanishes), then brackets, then `:weight)` before a plain `)`, then text, then a stray `:`.
_ATTENTION = re.compile(r"""
\\\(|\\\)|\\\[|\\]|\\\\|\\|
\(|\[|
:\s*([+-]?[.\d]+)\s*\)|
\)|]|
[^\\()\[\]:]+|
:
""", re.X)
# BREAK needs word boundaries, not spaces: "a,BREAK,b" breaks too; "BREAKS" and "break" do not.
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
_ROUND = 1.1
_SQUARE = 1 / 1.1
BREAK = ("BREAK", -1.0)  # the marker `parse` emits; only weight exactly -1 counts when chunking


# A1111's re_extra_net (modules/extra_networks.py): `<name:args>`, such as <lora:detail:0.6>.
_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")


def _extra_network_span(text: str) -> str:
    # Only up to the last '>': past it no tag can end, and `[^>]+` would rescan the rest of the text
    # from every '<name:' (quadratic in the text's length).
    return text[: text.rfind(">") + 1]


def extra_networks(text: str) -> list[str]:
    """The extra-network tags A1111 takes out of a prompt, as written."""
    return [m.group(0) for m in _EXTRA_NETWORK.finditer(_extra_network_span(text))]


def without_extra_networks(text: str) -> str:
    """The prompt A1111 encodes: extra-network tags removed (their spaces stay, as in A1111)."""
    end = text.rfind(">") + 1
    return _EXTRA_NETWORK.sub("", text[:end]) + text[end:] if end else text


class PromptSyntaxError(ValueError):
    """A `(text:weight)` whose weight is no number, such as `1.2.3`: A1111 fails on it too."""


def parse(text: str) -> list[tuple[str, float]]:
    """Split a prompt into (text, weight) runs, as A1111's `parse_prompt_attention` does.

    Brackets left open are closed by multiplying every run after them, as A1111 does, which costs
    (open brackets × runs): at most about 0.8 s of CPU at the prompt limit, so text over it is refused
    here rather than parsed, whichever source it came from."""
    from spo_cli.validate import PROMPT_MAX_CHARS  # the one limit (validate imports this module)

    if len(text) > PROMPT_MAX_CHARS:
        raise PromptSyntaxError(f"the text is {len(text):,} characters long; a prompt is at most "
                                f"{PROMPT_MAX_CHARS:,}")
    res: list[list] = []  # [text, weight] pairs, weights multiplied in place as brackets close
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for item in res[start:]:
            item[1] *= factor

    for m in _ATTENTION.finditer(text):
        piece, weight = m.group(0), m.group(1)
        if piece.startswith("\\"):
            res.append([piece[1:], 1.0])
        elif piece == "(":
            round_open.append(len(res))
        elif piece == "[":
            square_open.append(len(res))
        elif weight is not None and round_open:
            try:
                factor = float(weight)
            except ValueError:
                raise PromptSyntaxError(f"the weight in {piece!r} is not a number") from None
            multiply(round_open.pop(), factor)
        elif piece == ")" and round_open:
            multiply(round_open.pop(), _ROUND)
        elif piece == "]" and square_open:
            multiply(square_open.pop(), _SQUARE)
        else:  # text, or a bracket/`:weight)` with nothing open: literal
            for i, part in enumerate(_BREAK.split(piece)):
                if i:
                    res.append(list(BREAK))
                res.append([part, 1.0])
    # Unclosed brackets reach to the end of the prompt (round ones first, as A1111 does).
    for start in round_open:
        multiply(start, _ROUND)
    for start in square_open:
        multiply(start, _SQUARE)
    if not res:
        res = [["", 1.0]]
    merged = [res[0]]
    for item in res[1:]:
        if item[1] == merged[-1][1]:
            merged[-1][0] += item[0]
        else:
            merged.append(item)
    return [(t, w) for t, w in merged]


def has_syntax(text: str) -> bool:
    """Whether A1111 would read `text` other than as plain text (for `--prompt-syntax auto`)."""
    if not any(c in text for c in "()[]\\<") and "BREAK" not in text:
        return False
    if extra_networks(text):
        return True
    try:
        return parse(text) != [(text, 1.0)]
    except PromptSyntaxError:
        return True


@dataclass(frozen=True)
class Chunk:
    """One text-encoder window: BOS, `chunk_length` prompt tokens or padding, EOS.

    `multipliers` has one weight per token (1.0 for BOS, EOS and padding)."""

    tokens: tuple[int, ...]
    multipliers: tuple[float, ...]


def chunks(text: str, tokenize: Callable[[list[str]], Sequence[Sequence[int]]], comma_token: int | None, *,
           bos: int, eos: int, pad: int | None = None, chunk_length: int = 75, comma_backtrack: int = 20,
           syntax: bool = True) -> list[Chunk]:
    """A prompt as A1111's `tokenize_line` cuts it into windows of `chunk_length` + 2 tokens.

    `tokenize` maps fragments to ids without BOS/EOS; it is called once, with every fragment of
    `parse` (BREAK markers too, then skipped), as A1111 does. `pad` fills a short window after its EOS
    (SDXL's second encoder pads with id 0, A1111's `id_pad`); it defaults to `eos` (CLIP-L).
    `syntax=False` is A1111's "Emphasis: None": the whole text at weight 1, no BREAK either.
    When a window fills up and a comma lies at most `comma_backtrack` tokens back, the tokens
    after it move to the next window, so a phrase is not torn apart (0 turns this off).
    Raises PromptSyntaxError as `parse` does.
    """
    pad = eos if pad is None else pad
    parsed = parse(text) if syntax else [(text, 1.0)]
    tokenized = tokenize([t for t, _ in parsed])
    out: list[Chunk] = []
    toks: list[int] = []
    mults: list[float] = []
    last_comma = -1

    def close() -> None:
        nonlocal toks, mults, last_comma
        fill = chunk_length - len(toks)
        ids = [bos, *toks] + [eos] * (max(fill, 0) + 1)
        if pad != eos:  # A1111's process_tokens: everything after the first EOS becomes padding
            first = ids.index(eos)
            ids[first + 1:] = [pad] * (len(ids) - first - 1)
        weights = [1.0, *mults] + [1.0] * (max(fill, 0) + 1)
        out.append(Chunk(tuple(ids), tuple(weights)))
        toks, mults, last_comma = [], [], -1

    for ids, (fragment, weight) in zip(tokenized, parsed):
        if fragment == "BREAK" and weight == -1:
            close()  # even an empty window: A1111 does not check
            continue
        for token in ids:
            if token == comma_token:
                last_comma = len(toks)
            elif (comma_backtrack != 0 and len(toks) == chunk_length and last_comma != -1
                  and len(toks) - last_comma <= comma_backtrack):
                cut = last_comma + 1
                moved = toks[cut:], mults[cut:]
                del toks[cut:], mults[cut:]
                close()
                toks, mults = list(moved[0]), list(moved[1])
            if len(toks) == chunk_length:
                close()
            toks.append(token)
            mults.append(weight)
    if toks or not out:  # a trailing BREAK adds no empty window; an empty prompt gets one
        close()
    return out


def break_windows(parsed: Sequence[tuple[str, float]]) -> int:
    """The windows a `parse`d prompt has at the least, known without a tokenizer: one closed by each
    BREAK, and the last one if words follow the last BREAK (`chunks` counts them all, tokens included)."""
    breaks = [i for i, item in enumerate(parsed) if item == BREAK]
    tail = parsed[breaks[-1] + 1:] if breaks else parsed
    return len(breaks) + (1 if not breaks or any(c.isalnum() for t, _ in tail for c in t) else 0)
