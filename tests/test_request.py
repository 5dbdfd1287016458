"""Unit tests for spo_cli.request: seed expansion, grouping into pipeline calls, spec hashes."""

from __future__ import annotations

import dataclasses
import re

import pytest

from spo_cli import request as jobs
from spo_cli.errors import UsageError
from spo_cli.request import Hires, ImageRequest, InputImage
from spo_cli.validate import SEED_MAX


def req(**kw) -> ImageRequest:
    return ImageRequest(**{"prompt": "a red fox in fresh snow", "seed": 42, **kw})


# ---------------------------------------------------------------------------------------------
# Seeds


def test_random_seed_is_in_range():
    seeds = {jobs.random_seed() for _ in range(200)}
    assert all(0 <= s <= SEED_MAX for s in seeds)
    assert len(seeds) > 150  # actually random, not a constant


def test_expand_gives_consecutive_seeds_and_keeps_everything_else():
    base = req(seed=7, negative_prompt="blurry", steps=12, guidance=3.5, width=1152, height=896,
               scheduler="euler-a", generator_device="cuda")
    out = jobs.expand(base, 4)
    assert [r.seed for r in out] == [7, 8, 9, 10]
    for r in out:
        assert dataclasses.replace(r, seed=base.seed) == base
    assert out[0] == base


def test_expand_one_image_is_the_base():
    base = req(seed=123)
    assert jobs.expand(base, 1) == [base]


@pytest.mark.parametrize("n", [0, -1, -10])
def test_expand_needs_at_least_one_image(n):
    with pytest.raises(UsageError) as e:
        jobs.expand(req(), n)
    assert e.value.exit_code == 2
    assert "--num-images" in e.value.message and "from 1 to 10,000" in e.value.message


def test_expand_up_to_the_top_seed():
    assert [r.seed for r in jobs.expand(req(seed=SEED_MAX), 1)] == [SEED_MAX]
    assert [r.seed for r in jobs.expand(req(seed=SEED_MAX - 3), 4)] == [SEED_MAX - 3, SEED_MAX - 2,
                                                                        SEED_MAX - 1, SEED_MAX]


@pytest.mark.parametrize("seed,n", [(SEED_MAX, 2), (SEED_MAX - 3, 5), (SEED_MAX - 1, 100), (SEED_MAX + 1, 1)])
def test_expand_rejects_seeds_running_past_the_top(seed, n):
    with pytest.raises(UsageError) as e:
        jobs.expand(req(seed=seed), n)
    assert e.value.exit_code == 2
    assert "4,294,967,295" in e.value.message


def test_expand_rejects_a_negative_seed():
    with pytest.raises(UsageError):
        jobs.expand(req(seed=-1), 1)


def test_expand_rejects_a_negative_seed_even_when_the_last_one_is_positive():
    with pytest.raises(UsageError):
        jobs.expand(req(seed=-5), 10)


# ---------------------------------------------------------------------------------------------
# Batching


def _check_partition(requests, out, batch_size):
    flat = [r for b in out for r in b]
    assert sorted(flat, key=id) == sorted(requests, key=id)  # every request exactly once
    assert len(flat) == len(requests)
    for b in out:
        assert 1 <= len(b) <= batch_size
        assert len({r.group_key() for r in b}) == 1


def test_batches_same_settings_split_by_batch_size_in_order():
    requests = jobs.expand(req(seed=100), 7)
    out = jobs.calls(requests, 3)
    assert [[r.seed for r in b] for b in out] == [[100, 101, 102], [103, 104, 105], [106]]
    _check_partition(requests, out, 3)


def test_batches_of_one():
    requests = jobs.expand(req(seed=1), 3)
    assert jobs.calls(requests, 1) == [[r] for r in requests]


def test_batches_larger_than_the_work():
    requests = jobs.expand(req(seed=1), 3)
    assert jobs.calls(requests, 64) == [requests]


def test_batches_empty():
    assert jobs.calls([], 4) == []


@pytest.mark.parametrize(
    "change",
    [
        {"steps": 30},
        {"guidance": 7.0},
        {"width": 1152, "height": 896},
        {"width": 1152},
        {"height": 896},
        {"scheduler": "euler-a"},
        {"generator_device": "cuda"},
        {"negative_prompt": "blurry"},
        {"negative_prompt": ""},  # "" is a real (empty) negative prompt, not SDXL's zero embeddings
    ],
)
def test_batches_never_mix_incompatible_requests(change):
    a = req(seed=1)
    b = dataclasses.replace(req(seed=2), **change)
    out = jobs.calls([a, b, dataclasses.replace(a, seed=3)], 8)
    assert [[r.seed for r in batch] for batch in out] == [[1, 3], [2]]


def test_batches_may_mix_prompts_seeds_and_set_negative_prompts():
    # Different prompts, seeds and (non-None) negative prompts go through one call together.
    rs = [req(seed=1, prompt="a cat", negative_prompt="blurry"),
          req(seed=9, prompt="a dog", negative_prompt="low quality"),
          req(seed=3, prompt="a bird", negative_prompt="")]
    assert jobs.calls(rs, 8) == [rs]


def test_batches_interleaved_groups_keep_order_within_each_group():
    fast = [req(seed=s, steps=10) for s in range(5)]
    slow = [req(seed=100 + s, steps=50) for s in range(4)]
    neg = [req(seed=200 + s, steps=10, negative_prompt="x") for s in range(3)]
    interleaved = [fast[0], slow[0], neg[0], fast[1], slow[1], fast[2], neg[1], slow[2], fast[3],
                   slow[3], neg[2], fast[4]]
    out = jobs.calls(interleaved, 2)
    _check_partition(interleaved, out, 2)
    seeds = [[r.seed for r in b] for b in out]
    # Groups appear in the order of their first request; requests keep their order inside a group.
    assert seeds == [[0, 1], [2, 3], [4], [100, 101], [102, 103], [200, 201], [202]]


def test_batches_none_vs_set_negative_never_share_a_batch():
    rs = [req(seed=s, negative_prompt=None if s % 2 else "ugly") for s in range(6)]
    out = jobs.calls(rs, 6)
    assert len(out) == 2
    for b in out:
        assert len({r.negative_prompt is None for r in b}) == 1


# ---------------------------------------------------------------------------------------------
# Spec hashes


def test_spec_hash_is_stable():
    r = req()
    h = r.spec_hash()
    assert re.fullmatch(r"[0-9a-f]{16}", h)
    assert h == req().spec_hash() == r.spec_hash({}) == r.spec_hash(None)
    # A stable id across processes and versions: pinned so that an accidental change is noticed
    # (resumes and replays compare these).
    assert h == "089538895357d932"


def test_spec_hash_ignores_model_dict_key_order():
    r = req()
    assert r.spec_hash({"a": 1, "b": {"x": 1, "y": 2}}) == r.spec_hash({"b": {"y": 2, "x": 1}, "a": 1})


_DIFFERENT = {
    "prompt": "a different prompt",
    "seed": 43,
    "negative_prompt": "blurry",
    "steps": 49,
    "guidance": 5.5,
    "width": 1152,
    "height": 896,
    "scheduler": "euler",
    "generator_device": "cuda",
    "prompt_syntax": "a1111",
    "emphasis": "none-norm",
    "image": InputImage("/in.png", "ab" * 32, 64, 64, 100),
    "mask": InputImage("/mask.png", "cd" * 32, 64, 64, 100),
    "strength": 0.5,
    "mask_blur": 4,
    "mask_crop": 32,
    "hires": Hires(1.5),
    "watermark": True,
}


def test_spec_hash_test_covers_every_field():
    assert set(_DIFFERENT) == {f.name for f in dataclasses.fields(ImageRequest)}


@pytest.mark.parametrize("field", list(_DIFFERENT))
def test_spec_hash_is_sensitive_to_every_field(field):
    r = req()
    assert r.spec_hash() != dataclasses.replace(r, **{field: _DIFFERENT[field]}).spec_hash()


def test_spec_hash_negative_none_differs_from_empty():
    assert req(negative_prompt=None).spec_hash() != req(negative_prompt="").spec_hash()


def test_spec_hash_is_sensitive_to_the_model():
    r = req()
    m = {"model": {"id": "SPO-Diffusion-Models/SPO-SDXL_4k-p_10ep", "commit": "a" * 40}}
    m2 = {"model": {"id": "SPO-Diffusion-Models/SPO-SDXL_4k-p_10ep", "commit": "b" * 40}}
    assert r.spec_hash(m) != r.spec_hash()
    assert r.spec_hash(m) != r.spec_hash(m2)
    assert r.spec_hash(m) == r.spec_hash(dict(m))


def test_requests_are_frozen_and_hashable():
    r = req()
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.seed = 1  # type: ignore[misc]
    assert len({r, req(), req(seed=1)}) == 2


def test_lora_scale_unset_means_the_full_effect():
    assert jobs.ModelRequest().effective_lora_scale == 1.0
    assert jobs.ModelRequest(lora_scale=0.0).effective_lora_scale == 0.0


def test_a_hires_request_runs_its_first_pass_and_all_its_hires_steps():
    # A1111 runs every hires step (of a schedule stretched to steps / strength), not int(steps × strength).
    assert ImageRequest("a", 1, steps=20, hires=Hires(1.5, strength=0.5)).denoising_steps == 20 + 20
    assert ImageRequest("a", 1, steps=20, hires=Hires(1.5, steps=7, strength=0.3)).denoising_steps == 20 + 7
