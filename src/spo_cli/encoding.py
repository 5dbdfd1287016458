"""Prompts in A1111 syntax → SDXL's text embeddings, as AUTOMATIC1111 computes them.

`syntax` cuts a prompt into 77-token windows with a weight per token; here each window goes
through both SDXL text encoders (penultimate hidden states, as diffusers and A1111 take them),
the weights are applied per window (A1111's `sd_emphasis`), the windows are concatenated along
the sequence, and the pooled embedding is CLIP-G's of the first window. The pipeline is then
called with `prompt_embeds`, so everything after the text encoders is diffusers' own code.

Each prompt is encoded on its own, never mixed with the others of its pipeline call: A1111's
"Original" emphasis restores the mean over the whole tensor it is given, and an image must not
depend on which prompts shared its call.

The prompt and the negative prompt get the same number of windows, the shorter padded with windows
of the empty prompt: A1111's "Pad prompt/negative prompt" option (sd_samplers_cfg_denoiser.py
`pad_cond_uncond`). A1111 by default instead runs the UNet twice per step, once per side at its own
length; diffusers' pipeline runs both sides as one batch, which needs one length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spo_cli import syntax, validate
from spo_cli.errors import GenerationError, UsageError


@dataclass(frozen=True)
class Plan:
    """How one image's prompts are encoded: `syntax` "plain" (diffusers' own encode_prompt) or
    "a1111", and the number of 77-token windows its embeddings have (1 for plain)."""

    syntax: str
    chunks: int


def _tokenize(tokenizer):
    def tokenize(texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, truncation=False, add_special_tokens=False, verbose=False)["input_ids"]

    return tokenize


def windows(tokenizer, text: str) -> list[syntax.Chunk]:
    """`text` cut into A1111's windows with `tokenizer`'s ids (its own padding token after EOS)."""
    comma = tokenizer.get_vocab().get(",</w>")
    return syntax.chunks(text, _tokenize(tokenizer), comma, bos=tokenizer.bos_token_id,
                         eos=tokenizer.eos_token_id, pad=tokenizer.pad_token_id)


def fits_plain(tokenizer, text: str | None) -> bool:
    """Whether diffusers' own encoding sees all of `text`: no A1111 syntax, and within one window."""
    if not text:
        return True
    if syntax.has_syntax(text):
        return False
    ids = tokenizer(text, truncation=False, add_special_tokens=False, verbose=False).input_ids
    return len(ids) <= tokenizer.model_max_length - 2


def plan(pipe, prompt: str, negative: str | None, choice: str) -> Plan:
    """Resolve --prompt-syntax (`auto` is `plain` exactly when plain loses nothing) and count windows,
    refusing a prompt of more than `validate.WINDOWS_MAX` (UsageError, before any encoding)."""
    if choice == "plain" or (choice == "auto" and fits_plain(pipe.tokenizer, prompt)
                             and fits_plain(pipe.tokenizer, negative)):
        return Plan("plain", 1)
    n = 1
    for name, text in (("prompt", syntax.without_extra_networks(prompt)), ("negative prompt", negative)):
        if text is None:
            continue
        count = len(windows(pipe.tokenizer, text))
        if count > validate.WINDOWS_MAX:
            error = UsageError(f"The {name} takes {count:,} text-encoder windows of 75 tokens; the limit is "
                               f"{validate.WINDOWS_MAX}.", f"Shorten it, or use fewer BREAKs (A1111 prompts rarely "
                                                           f"need more than {validate.WINDOWS_MAX // 4} windows).")
            error.field = "negative_prompt" if name.startswith("negative") else "prompt"  # for a server's 400
            raise error
        n = max(n, count)
    return Plan("a1111", n)


def _device(module) -> torch.device:
    try:  # offloaded encoders live on the CPU until their hook moves them: ask where they will run
        from diffusers.utils.torch_utils import get_module_execution_device

        return get_module_execution_device(module)
    except ImportError:  # diffusers before 0.36
        return next(module.parameters()).device


def _encode(encoder, chunks: list[syntax.Chunk], emphasis: str, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(1, 77·len(chunks), dim) weighted hidden states, and the pooled embedding of the first
    window when the encoder has a projection (CLIP-G). Weighted in float32, as A1111 does (its
    multipliers are a float32 tensor); a result the encoder's dtype cannot hold is refused, naming
    the weight, rather than becoming a NaN image far from its cause."""
    device = _device(encoder)
    parts, pooled = [], None
    # One window per encoder call, as diffusers encodes a one-image prompt: batching windows would
    # change float rounding with the window count.
    for k, chunk in enumerate(chunks):
        out = encoder(torch.tensor([chunk.tokens], device=device), output_hidden_states=True)
        window = out.hidden_states[-2]
        if k == 0 and out[0].ndim == 2:
            pooled = out[0]
        weights = torch.tensor(chunk.multipliers, dtype=torch.float32, device=window.device)[None, :, None]
        weighted = window * weights.expand(window.shape)
        if emphasis == "original":  # multiply, then restore the window's mean (sd_emphasis.EmphasisOriginal)
            weighted = weighted * (window.mean() / weighted.mean())
        weighted = weighted.to(window.dtype)
        if not torch.isfinite(weighted).all():
            top = max(chunk.multipliers, key=abs)
            raise GenerationError(
                f"The {name}'s A1111 weight {top:g} multiplies the text encoder's values past what "
                f"{str(window.dtype).removeprefix('torch.')} holds (largest {torch.finfo(window.dtype).max:g}), "
                "so the image would be NaN.",
                "Use a smaller weight (A1111 weights are usually 0.5 to 1.5), or --dtype fp32.")
        parts.append(weighted)
    return torch.cat(parts, dim=1), pooled


def _embed(pipe, text: str, n_windows: int, emphasis: str, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One text's (1, 77·n_windows, 2048) embeddings and (1, 1280) pooled embedding; short texts
    are padded with windows of the empty prompt (A1111's "pad prompt/negative prompt")."""
    hidden, pooled = [], None
    for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        chunks = windows(tokenizer, text)
        if len(chunks) < n_windows:
            chunks += windows(tokenizer, "") * (n_windows - len(chunks))
        z, p = _encode(encoder, chunks, emphasis, name)
        hidden.append(z)
        pooled = p if p is not None else pooled
    return torch.cat(hidden, dim=-1), pooled


@torch.inference_mode()
def embeddings(pipe, prompts: list[str], negatives: list[str | None], n_windows: int, emphasis: str) -> dict:
    """The keyword arguments for `pipe(...)` that replace `prompt`/`negative_prompt`. A negative of
    None leaves the unconditional side to diffusers: zero embeddings, as SDXL does with no negative."""
    # A1111 takes extra-network tags (<lora:name:1>) out of the prompt, not out of the negative.
    pos = [_embed(pipe, syntax.without_extra_networks(p), n_windows, emphasis, "prompt") for p in prompts]
    kwargs = {"prompt_embeds": torch.cat([h for h, _ in pos]), "pooled_prompt_embeds": torch.cat([p for _, p in pos])}
    if negatives[0] is not None:
        neg = [_embed(pipe, n, n_windows, emphasis, "negative prompt") for n in negatives]
        kwargs["negative_prompt_embeds"] = torch.cat([h for h, _ in neg])
        kwargs["negative_pooled_prompt_embeds"] = torch.cat([p for _, p in neg])
    return kwargs
