"""Unit tests for spo_cli.scores.stats: win rates, mean differences and their bootstrap intervals.

Pure and fast (numpy only). Each table is built so its answer is known in advance.
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from pytest import approx

from spo_cli.scores.stats import Estimate, Paired, bootstrap_mean, paired

FAST = dict(resamples=2000)  # enough for the shapes checked here, and quick


def test_no_torch():
    code = ("import sys, spo_cli.scores.stats, spo_cli.scores.plot; "
            "print(sorted({'torch', 'matplotlib'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout == "[]\n"


def test_all_wins():
    got = paired([2.0, 3.0, 4.0, 5.0], [1.0, 1.0, 1.0, 1.0], **FAST)
    assert got.win_rate == Estimate(1.0, 1.0, 1.0, 4)
    assert got.mean_diff.value == approx(2.5)
    assert (got.n, got.dropped, got.level) == (4, 0, 0.95)


def test_all_losses():
    got = paired([0.0, 0.0, 0.0], [1.0, 2.0, 3.0], **FAST)
    assert got.win_rate == Estimate(0.0, 0.0, 0.0, 3)
    assert got.mean_diff.value == approx(-2.0)


def test_all_ties():
    got = paired([0.3] * 10, [0.3] * 10, **FAST)
    assert got.win_rate == Estimate(0.5, 0.5, 0.5, 10)
    assert got.mean_diff == Estimate(0.0, 0.0, 0.0, 10)


def test_a_tie_counts_one_half():
    # two wins, a tie, a loss: (1 + 1 + 0.5 + 0) / 4
    assert paired([2, 2, 1, 0], [1, 1, 1, 1], **FAST).win_rate.value == 0.625
    # win rate is a share of pairs, not of margins: one huge loss weighs what one small loss does
    got = paired([1.01, 1.01, 1.01, -100.0], [1, 1, 1, 1], **FAST)
    assert got.win_rate.value == 0.75
    assert got.mean_diff.value < 0


def _half_wins(n: int) -> Paired:
    return paired([1.0, 0.0] * (n // 2), [0.5] * n, **FAST)


def test_half_wins_interval_contains_half_and_shrinks_with_n():
    widths = []
    for n in (20, 200, 800):
        got = _half_wins(n).win_rate
        assert got.value == 0.5
        assert got.low < 0.5 < got.high
        widths.append(got.high - got.low)
        # a win rate is a mean of 0/1 outcomes: its 95 % interval is about ±1.96 · 0.5 / √n
        assert got.high - got.low == approx(2 * 1.96 * 0.5 / math.sqrt(n), rel=0.25)
    assert widths[0] > widths[1] > widths[2]


def test_known_mean_difference():
    got = paired([3.0, 5.0, 7.0, 9.0], [1.0, 2.0, 3.0, 4.0], **FAST).mean_diff
    assert got.value == approx(3.5)  # differences 2, 3, 4, 5
    assert 2.0 <= got.low < 3.5 < got.high <= 5.0
    assert got.n == 4


def test_interval_resamples_pairs_not_columns():
    # b follows a closely: the scores spread over ±10 but the differences over ±0.1, so the
    # interval of the mean difference must be as narrow as the differences, not the scores.
    rng = np.random.default_rng(5)
    a = rng.normal(0, 10, 400)
    b = a - 1.0 + rng.normal(0, 0.1, 400)
    got = paired(a, b, **FAST).mean_diff
    assert got.low < 1.0 < got.high
    assert got.high - got.low < 0.05


def test_mean_diff_interval_is_bootstrap_mean_of_differences():
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=50), rng.normal(size=50)
    assert paired(a, b, seed=3, **FAST).mean_diff == bootstrap_mean(a - b, seed=3, **FAST)


def test_length_mismatch():
    with pytest.raises(ValueError, match="equal lengths"):
        paired([1.0, 2.0], [1.0], **FAST)


def test_missing_scores_dropped_as_pairs():
    a = [1.0, math.nan, 3.0, None, 5.0, math.inf]
    b = [0.0, 1.0, math.nan, 2.0, 7.0, 1.0]
    got = paired(a, b, **FAST)
    assert (got.n, got.dropped) == (2, 4)  # pairs 0 (a wins by 1) and 4 (a loses by 2) remain
    assert got.win_rate.value == 0.5
    assert got.mean_diff.value == approx(-0.5)
    assert got.win_rate.n == got.mean_diff.n == 2


def test_all_dropped_and_empty():
    for got in (paired([math.nan], [1.0], **FAST), paired([], [], **FAST)):
        assert got.win_rate == got.mean_diff == Estimate(None, None, None, 0)
    assert paired([None, 1.0], [1.0, None], **FAST).dropped == 2


def test_deterministic_for_a_seed():
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=60), rng.normal(size=60)
    first = paired(a, b, seed=11, **FAST)
    assert paired(a, b, seed=11, **FAST) == first
    other = paired(a, b, seed=12, **FAST)
    assert other.mean_diff.value == first.mean_diff.value
    assert (other.mean_diff.low, other.win_rate.low) != (first.mean_diff.low, first.win_rate.low)
    assert bootstrap_mean(a, seed=1, **FAST) == bootstrap_mean(list(a), seed=1, **FAST)


def test_bootstrap_mean_matches_normal_interval():
    rng = np.random.default_rng(8)
    x = rng.normal(5.0, 2.0, 2000)
    got = bootstrap_mean(x, **FAST)
    half = 1.96 * x.std(ddof=1) / math.sqrt(x.size)
    assert got.value == approx(x.mean())
    assert got.low == approx(x.mean() - half, abs=0.15 * half)
    assert got.high == approx(x.mean() + half, abs=0.15 * half)
    assert got.n == 2000


def test_bootstrap_mean_level():
    x = np.random.default_rng(9).normal(size=300)
    wide, narrow = bootstrap_mean(x, level=0.95, **FAST), bootstrap_mean(x, level=0.5, **FAST)
    assert wide.low < narrow.low < narrow.value < narrow.high < wide.high
    for level in (0, 1, 1.5):
        with pytest.raises(ValueError, match="level"):
            bootstrap_mean(x, level=level)
    with pytest.raises(ValueError, match="resamples"):
        paired(x, x, resamples=0)


def test_bootstrap_mean_small_samples():
    assert bootstrap_mean([]) == Estimate(None, None, None, 0)
    assert bootstrap_mean([2.5]) == Estimate(2.5, 2.5, 2.5, 1)
    assert bootstrap_mean([math.nan, 2.5, None]) == Estimate(2.5, 2.5, 2.5, 1)
    got = bootstrap_mean([1.0, 3.0], **FAST)
    assert (got.value, got.low, got.high) == (2.0, 1.0, 3.0)


def test_to_dict():
    got = paired([2.0, 1.0], [1.0, 1.0], **FAST)
    d = got.to_dict()
    assert d["win_rate"] == got.win_rate.to_dict() == {
        "value": 0.75, "low": got.win_rate.low, "high": got.win_rate.high, "n": 2}
    assert (d["n"], d["dropped"], d["level"]) == (2, 0, 0.95)
    assert d["mean_diff"]["value"] == 0.5
    for value in (*d["win_rate"].values(), *d["mean_diff"].values()):
        assert type(value) in (int, float)  # plain numbers, ready for json



# --- the comparison summary and the scores files (pure as well) --------------------------------


def test_summary_names_the_better_column_the_winner():
    """Columns in order base, spo: spo scores higher in 3 rows of 4 and lower in one, so the pair is
    spo against base with win rate 0.75 and a positive mean difference, never the reverse."""
    from spo_cli.scores.summary import markdown, summarise

    base = [1.0, 1.0, 1.0, 5.0]
    spo = [2.0, 3.0, 4.0, 4.0]
    cells = [[{"pickscore": b}, {"pickscore": s}] for b, s in zip(base, spo)]
    got = summarise(["base", "spo"], cells, ["pickscore"])
    (pair,) = got["pairs"]
    assert (pair["a"], pair["b"]) == ("spo", "base")
    m = pair["metrics"]["pickscore"]
    assert m["win_rate"]["value"] == 0.75 and m["mean_diff"]["value"] == approx(1.25) and m["n"] == 4
    assert got["means"]["base"]["pickscore"]["value"] == 2.0 and got["means"]["spo"]["pickscore"]["value"] == 3.25
    assert "| spo vs base | pickscore | 0.75 [" in markdown(got)


def test_summary_leaves_out_failed_cells_as_pairs():
    from spo_cli.scores.summary import summarise

    cells = [[{"clip": 1.0}, {"clip": 2.0}], [None, {"clip": 9.0}], [{"clip": 3.0}, {}]]
    m = summarise(["a", "b"], cells, ["clip"])["pairs"][0]["metrics"]["clip"]
    assert (m["n"], m["dropped"], m["win_rate"]["value"], m["mean_diff"]["value"]) == (1, 2, 1.0, 1.0)


def test_scorer_text_reads_a1111_as_the_generator_did():
    from spo_cli.scores.store import scorer_text

    assert scorer_text("(red fox:1.3) BREAK in snow", "a1111") == "red fox in snow"
    assert scorer_text("(red fox:1.3)BREAK in snow", "a1111") == "red fox in snow"
    assert scorer_text("a  (fox:1.2)", "plain") == "a  (fox:1.2)"  # plain text is scored as written


def test_recorded_score_reused_only_for_the_same_image_prompt_and_models(tmp_path):
    from spo_cli.scores import store

    image = tmp_path / "x.png"
    image.write_bytes(b"not really a png")
    models = {"org/pick": "abc:model.safetensors"}
    item = store.Item(image, "a red fox", "sidecar")
    record = store.write(item, "d1", {"pickscore": (21.5, models)}, {})
    assert store.read(image) == record
    assert store.current(record, "pickscore", models, "d1", "a red fox") == 21.5
    assert store.current(record, "pickscore", models, "d1", "a blue fox") is None  # the prompt changed
    assert store.current(record, "pickscore", models, "d2", "a red fox") is None  # the image changed
    assert store.current(record, "pickscore", {"org/pick": "def:model.safetensors"}, "d1", "a red fox") is None
    assert store.current(record, "clip", models, "d1", "a red fox") is None
    # A new prompt starts a new record: the old prompt's other scores are not carried over.
    again = store.write(store.Item(image, "a blue fox", "--prompt"), "d1", {"clip": (30.0, models)}, record)
    assert set(again["scores"]) == {"clip"}
    same = store.write(item, "d1", {"clip": (30.0, models)}, record)
    assert set(same["scores"]) == {"clip", "pickscore"}


def test_paper_harness_description():
    """The LPO harness, as its code reads (Kwai-Kolors/LPO evaluation/general_score_pap_val.py)."""
    from spo_cli.scores import paper

    (lpo,) = [a for a in paper.ASSUMPTIONS if "LPO" in a]
    assert "pickapic-anonymous/pickapic_v1" in lpo and "scores only the first of the four" in lpo


@pytest.fixture
def read_only(tmp_path):
    """A folder the process cannot write to: a read-only bind mount where the tests run as root
    (root ignores permission bits), else mode 0555."""
    import contextlib
    import os

    folder = tmp_path / "ro"
    folder.mkdir()

    @contextlib.contextmanager
    def locked():
        if os.geteuid() != 0:
            folder.chmod(0o555)
            try:
                yield folder
            finally:
                folder.chmod(0o755)
            return
        mounted = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True).returncode == 0
        try:
            if not mounted or subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)],
                                             capture_output=True).returncode != 0:
                pytest.skip("running as root without the right to mount: no folder is read-only here")
            yield folder
        finally:
            if mounted:
                subprocess.run(["umount", str(folder)], check=True)

    return folder, locked


def test_scores_on_a_read_only_folder_are_one_paragraph(read_only):
    from spo_cli.errors import OutputError
    from spo_cli.scores import store

    folder, locked = read_only
    image = folder / "x.png"
    image.write_bytes(b"png")
    with locked():
        with pytest.raises(OutputError) as e:
            store.write(store.Item(image, "a fox", "sidecar"), "d", {"clip": (1.0, {})}, {})
    assert not isinstance(e.value, store.Unsaved)  # the whole run stops: nothing can be saved there
    text = e.value.paragraph()
    assert f"The scores of {image} cannot be saved: {folder} is not writable" in text and "writable folder" in text
    assert not store.scores_path(image).exists()


def test_a_folder_named_like_the_scores_file_fails_that_image(tmp_path):
    from spo_cli.scores import store

    image = tmp_path / "x.png"
    image.write_bytes(b"png")
    store.scores_path(image).mkdir()
    assert store.read(image) == {}
    with pytest.raises(store.Unsaved, match=r"x\.scores\.json beside it is a folder"):
        store.write(store.Item(image, "a fox", "sidecar"), "d", {"clip": (1.0, {})}, {})
    assert store.scores_path(image).is_dir() and list(store.scores_path(image).iterdir()) == []


def test_too_large_read_from_the_header(tmp_path):
    """A 12000×12000 PNG header: refused without decoding (PIL opens lazily), and without PIL's
    DecompressionBombWarning reaching stderr; a small image passes."""
    import warnings
    import zlib

    from PIL import Image

    from spo_cli.scores import store

    def png(path, w, h):
        def chunk(kind, data):
            return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

        ihdr = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 7))
                         + chunk(b"IEND", b""))
        return path

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning PIL lets out fails the test
        assert "12000×12000 (144 Mpx)" in store.too_large(png(tmp_path / "big.png", 12000, 12000))
        assert "past what PIL will decode" in store.too_large(png(tmp_path / "bomb.png", 20000, 20000))
        assert store.too_large(png(tmp_path / "edge.png", 8000, 8000)) is None  # exactly 64 Mpx
        assert "8001×8000" in store.too_large(png(tmp_path / "over.png", 8001, 8000))
        Image.new("RGB", (8, 8)).save(tmp_path / "small.png")
        assert store.too_large(tmp_path / "small.png") is None
        (tmp_path / "junk.png").write_bytes(b"not an image")
        assert store.too_large(tmp_path / "junk.png") is None  # left to the decode, which says why


def test_manifest_rewritten_only_when_scores_change(read_only):
    """Scores reused as they were leave a batch folder's manifest alone (a folder made read-only
    since it was scored is no error then); new values are merged into the image's line."""
    import json

    from spo_cli.outputs import files
    from spo_cli.scores import store

    folder, locked = read_only
    (folder / "a.png").write_bytes(b"png")
    files.write_manifest(folder, [{"file": "a.png", "scores": {"clip": 30.0}}, {"file": "b.png", "scores": "junk"}])
    key = (folder / "a.png").resolve()
    with locked():
        assert store.update_manifest(folder, {key: {"clip": 30.0}}) is None
    assert store.update_manifest(folder, {key: {"pickscore": 21.0}}) == folder / files.MANIFEST
    b = (folder / "b.png").resolve()
    assert store.update_manifest(folder, {b: {"clip": 1.0}}) == folder / files.MANIFEST  # a junk value replaced
    rows = [json.loads(line) for line in (folder / files.MANIFEST).read_text().splitlines()]
    assert rows == [{"file": "a.png", "scores": {"clip": 30.0, "pickscore": 21.0}}, {"file": "b.png", "scores": {"clip": 1.0}}]
