"""Pure pieces of issue 22's GPU session: latency percentiles and rates (bench_serve.py), the phase
plan of gpu_session.sh (session_plan.py), and the full-size scorer configs of bench_eval.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_serve  # noqa: E402
import session_plan  # noqa: E402


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(100, 0, -1)]  # 1..100, unsorted
    assert bench_serve.percentile(values, 50) == 50.0
    assert bench_serve.percentile(values, 99) == 99.0
    assert bench_serve.percentile(values[:48], 99) == 100.0  # 53..100: the p99 of 48 is the slowest
    assert bench_serve.percentile([3.0], 50) == 3.0
    assert bench_serve.percentile(values, 7) == 7.0  # 0.07 × 100 is 7.000000000000001 in floats
    assert bench_serve.percentile(values, 29) == 29.0
    with pytest.raises(ValueError):
        bench_serve.percentile([], 50)


def test_steady_rate_leaves_out_the_first_call():
    # calls of 4 images finishing together every 2 s, after a first call that took 30 s (load, compile)
    finished = [30.0] * 4 + [32.0] * 4 + [34.0] * 4
    assert bench_serve.steady_rate(finished, 4) == pytest.approx(8 / 4)
    assert bench_serve.steady_rate([5.0, 6.0, 8.0], 1) == pytest.approx(2 / 3)
    # a first call of 2 whose images were written a second apart: the clock starts at the second
    assert bench_serve.steady_rate([14.0, 10.0, 12.0, 11.0], 2) == pytest.approx(2 / 3)
    assert bench_serve.steady_rate([5.0] * 4, 4) is None  # nothing after the first call


def test_the_two_calls_fit_the_device():
    for call, (phases, budget) in session_plan.CALLS.items():
        assert session_plan.check(session_plan.parse(phases), budget) == [], call
        assert budget <= 600 - 30  # one device call is at most 600 s; the script keeps time in hand
    assert sum(b for _, b in session_plan.CALLS.values()) <= 900 - 60  # 15 min with a start-up


def test_call_one_compiles_apart_before_the_interleaved_bench():
    # --fast's compile (GEMM autotuning: minutes) is a phase of its own, first, and cannot take the time
    # the interleaved bench and the attention table need: they are kept back from its timeout.
    phases = session_plan.parse(session_plan.CALLS[1][0])
    assert phases[:2] == ["compile", "bench"]
    assert session_plan.reserve("compile", phases) == sum(session_plan.PHASES[k].needs_s for k in phases[1:])
    assert session_plan.parse("bench,compile") == ["compile", "bench"]  # run order, whatever the order given


def test_phase_plan_reserves_the_later_phases_and_names_problems():
    phases = ["bench", "attn", "prof"]
    later = session_plan.PHASES["attn"].needs_s + session_plan.PHASES["prof"].needs_s
    assert session_plan.reserve("bench", phases) == later
    assert session_plan.reserve("prof", phases) == 0
    assert session_plan.reserve("bench", phases, toy=True) == 2 * session_plan.TOY_NEEDS_S
    assert session_plan.check(["bench", "nope"], 540) == [f"unknown phase 'nope' (phases: {', '.join(session_plan.PHASES)})"]
    assert any("more than the budget" in p for p in session_plan.check(["bench", "recipe"], 540))
    many = session_plan.PHASES | {f"x{i}": session_plan.Phase("x", 1, 1, (f"x{i}.json",)) for i in range(7)}
    session_plan.PHASES, saved = many, session_plan.PHASES
    try:
        assert any("the device returns 8" in p for p in session_plan.check(["attn", *[f"x{i}" for i in range(7)]], 540))
    finally:
        session_plan.PHASES = saved
    assert session_plan.main(["check", "bench,nope", "540"]) == 1


def test_full_size_scorer_configs_match_the_published_parameter_counts():
    import bench_eval

    ok, lines = bench_eval.check_scorer_configs()
    assert ok, "\n".join(lines)
    assert len(lines) == 4


def test_the_linked_cache_is_a_hugging_face_cache(tmp_path):
    """bench_eval's offline Hub: hard links, one blob for files linked between two folders (so spo shares
    the component), and huggingface_hub itself finds the files offline."""
    import os

    from huggingface_hub import snapshot_download

    import bench_eval

    a, b = tmp_path / "a", tmp_path / "b"
    (a / "text_encoder").mkdir(parents=True)
    (a / "text_encoder" / "model.safetensors").write_bytes(b"weights")
    (a / "model_index.json").write_text("{}")
    (a / ".ready").touch()  # bench markers stay out
    (b / "text_encoder").mkdir(parents=True)
    os.link(a / "text_encoder" / "model.safetensors", b / "text_encoder" / "model.safetensors")
    cache = tmp_path / "hub"
    bench_eval.link_to_cache(cache, "org/a", a)
    bench_eval.link_to_cache(cache, "org/b", b)
    folder = Path(snapshot_download("org/a", cache_dir=cache, local_files_only=True))
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        "model_index.json", "text_encoder/model.safetensors"]
    blob_a = os.path.realpath(folder / "text_encoder" / "model.safetensors")
    blob_b = os.path.realpath(Path(snapshot_download("org/b", cache_dir=cache, local_files_only=True))
                              / "text_encoder" / "model.safetensors")
    assert os.path.basename(blob_a) == os.path.basename(blob_b)  # bank.py's content id: one component
    assert os.stat(blob_a).st_ino == os.stat(a / "text_encoder" / "model.safetensors").st_ino  # linked, not copied
