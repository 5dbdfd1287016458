"""Unit tests for spo_cli.jobs: seeds, size/scheduler checks, batching and spec hashes."""

from __future__ import annotations

import dataclasses
import re

import pytest

from spo_cli import jobs, presets
from spo_cli.errors import EXIT_USAGE, UsageError
from spo_cli.jobs import SEED_MAX, ImageRequest


def req(**kw) -> ImageRequest:
    return ImageRequest(**{"prompt": "a red fox in fresh snow", "seed": 42, **kw})


# ---------------------------------------------------------------------------------------------
# Seeds


def test_seed_max_is_the_32_bit_limit():
    assert SEED_MAX == 4294967295


@pytest.mark.parametrize("seed", [0, 1, 42, SEED_MAX - 1, SEED_MAX])
def test_check_seed_accepts_the_whole_range(seed):
    assert jobs.check_seed(seed) == seed


@pytest.mark.parametrize("seed", [-1, -(2**31), SEED_MAX + 1, 2**64])
def test_check_seed_rejects_out_of_range(seed):
    with pytest.raises(UsageError) as e:
        jobs.check_seed(seed)
    assert e.value.exit_code == EXIT_USAGE == 2
    assert str(seed) in e.value.message
    assert str(SEED_MAX) in e.value.paragraph()


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
    assert "--num-images" in e.value.message


def test_expand_up_to_the_top_seed():
    assert [r.seed for r in jobs.expand(req(seed=SEED_MAX), 1)] == [SEED_MAX]
    assert [r.seed for r in jobs.expand(req(seed=SEED_MAX - 3), 4)] == [SEED_MAX - 3, SEED_MAX - 2,
                                                                        SEED_MAX - 1, SEED_MAX]


@pytest.mark.parametrize("seed,n", [(SEED_MAX, 2), (SEED_MAX - 3, 5), (SEED_MAX - 1, 100), (SEED_MAX + 1, 1)])
def test_expand_rejects_seeds_running_past_the_top(seed, n):
    with pytest.raises(UsageError) as e:
        jobs.expand(req(seed=seed), n)
    assert e.value.exit_code == 2
    assert "out of range" in e.value.message


def test_expand_rejects_a_negative_seed():
    with pytest.raises(UsageError):
        jobs.expand(req(seed=-1), 1)


def test_expand_rejects_a_negative_seed_even_when_the_last_one_is_positive():
    with pytest.raises(UsageError):
        jobs.expand(req(seed=-5), 10)


# ---------------------------------------------------------------------------------------------
# Sizes


@pytest.mark.parametrize("w,h", [(None, None), (1024, 1024), (1152, 896), (896, 1152), (1216, 832),
                                 (832, 1216), (1344, 768), (768, 1344)])
def test_check_size_sdxl_sizes_pass_quietly(w, h):
    assert jobs.check_size(w, h) == []


@pytest.mark.parametrize("w,h", [(64, None), (None, 1016), (8, None)])
def test_check_size_none_passes(w, h):
    assert isinstance(jobs.check_size(w, h), list)


@pytest.mark.parametrize(
    "w,h,bad",
    [(1020, 1024, "width"), (1024, 1001, "height"), (0, 1024, "width"), (1024, 0, "height"),
     (-8, 1024, "width"), (1024, -1024, "height"), (7, None, "width"), (None, 1, "height"), (4, 4, "width")],
)
def test_check_size_rejects_non_multiples_of_8_and_non_positive(w, h, bad):
    with pytest.raises(UsageError) as e:
        jobs.check_size(w, h)
    assert e.value.exit_code == 2
    assert f"--{bad}" in e.value.message
    assert "multiple of 8" in e.value.message
    # The hint suggests a usable value.
    suggested = [int(x) for x in re.findall(r"try (-?\d+)", e.value.hint or "")]
    assert suggested and suggested[0] > 0 and suggested[0] % 8 == 0


def test_check_size_suggests_the_nearest_multiple():
    with pytest.raises(UsageError) as e:
        jobs.check_size(1020, None)
    assert "try 1024" in e.value.hint
    with pytest.raises(UsageError) as e:
        jobs.check_size(None, 1001)
    assert "try 1000" in e.value.hint


@pytest.mark.parametrize("w,h", [(512, 512), (64, 64), (256, 1024), (2048, 2048), (1536, 1536), (4096, 1024)])
def test_check_size_warns_far_from_one_megapixel(w, h):
    warnings = jobs.check_size(w, h)
    assert len(warnings) == 1
    assert f"{w}×{h}" in warnings[0]
    assert "1024×1024" in warnings[0]


@pytest.mark.parametrize("w,h", [(768, 768), (1024, 512 + 64), (1408, 1408)])
def test_check_size_no_warning_within_half_to_two_megapixels(w, h):
    assert 0.5 <= w * h / 1024**2 <= 2.0
    assert jobs.check_size(w, h) == []


# ---------------------------------------------------------------------------------------------
# Schedulers


@pytest.mark.parametrize("name", list(presets.SCHEDULERS))
def test_check_scheduler_accepts_every_known_name(name):
    assert jobs.check_scheduler(name) == name


@pytest.mark.parametrize("name", ["Euler", "dpmpp_2m", "", "k_euler", "euler "])
def test_check_scheduler_unknown_lists_valid_names(name):
    with pytest.raises(UsageError) as e:
        jobs.check_scheduler(name)
    assert e.value.exit_code == 2
    assert f"'{name}'" in e.value.message
    for valid in presets.SCHEDULERS:
        assert valid in e.value.hint
    assert e.value.hint in e.value.paragraph()


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
    out = jobs.batches(requests, 3)
    assert [[r.seed for r in b] for b in out] == [[100, 101, 102], [103, 104, 105], [106]]
    _check_partition(requests, out, 3)


def test_batches_of_one():
    requests = jobs.expand(req(seed=1), 3)
    assert jobs.batches(requests, 1) == [[r] for r in requests]


def test_batches_larger_than_the_work():
    requests = jobs.expand(req(seed=1), 3)
    assert jobs.batches(requests, 64) == [requests]


def test_batches_empty():
    assert jobs.batches([], 4) == []


@pytest.mark.parametrize("size", [0, -1])
def test_batches_needs_a_positive_batch_size(size):
    with pytest.raises(UsageError) as e:
        jobs.batches([req()], size)
    assert e.value.exit_code == 2
    assert "--batch-size" in e.value.message


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
    out = jobs.batches([a, b, dataclasses.replace(a, seed=3)], 8)
    assert [[r.seed for r in batch] for batch in out] == [[1, 3], [2]]


def test_batches_may_mix_prompts_seeds_and_set_negative_prompts():
    # Different prompts, seeds and (non-None) negative prompts go through one call together.
    rs = [req(seed=1, prompt="a cat", negative_prompt="blurry"),
          req(seed=9, prompt="a dog", negative_prompt="low quality"),
          req(seed=3, prompt="a bird", negative_prompt="")]
    assert jobs.batches(rs, 8) == [rs]


def test_batches_interleaved_groups_keep_order_within_each_group():
    fast = [req(seed=s, steps=10) for s in range(5)]
    slow = [req(seed=100 + s, steps=50) for s in range(4)]
    neg = [req(seed=200 + s, steps=10, negative_prompt="x") for s in range(3)]
    interleaved = [fast[0], slow[0], neg[0], fast[1], slow[1], fast[2], neg[1], slow[2], fast[3],
                   slow[3], neg[2], fast[4]]
    out = jobs.batches(interleaved, 2)
    _check_partition(interleaved, out, 2)
    seeds = [[r.seed for r in b] for b in out]
    # Groups appear in the order of their first request; requests keep their order inside a group.
    assert seeds == [[0, 1], [2, 3], [4], [100, 101], [102, 103], [200, 201], [202]]


def test_batches_none_vs_set_negative_never_share_a_batch():
    rs = [req(seed=s, negative_prompt=None if s % 2 else "ugly") for s in range(6)]
    out = jobs.batches(rs, 6)
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
    m = jobs.ModelRequest()
    assert m.model == presets.DEFAULT_PRESET == "spo"
    assert m.vae is None and m.lora is None and m.lora_scale == 1.0


def test_image_request_defaults_are_the_authors():
    r = ImageRequest(prompt="x", seed=0)
    assert r.steps == presets.DEFAULT_STEPS == 50
    assert r.guidance == presets.DEFAULT_GUIDANCE == 5.0
    assert r.negative_prompt is None and r.width is None and r.height is None
    assert r.scheduler == "default" and r.generator_device == "cpu"
