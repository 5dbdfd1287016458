"""The GPU harness's own arithmetic (benchmarks/bench_gpu.py, bench_attention.py), on the CPU in
milliseconds: which calls are steady state, the interleaving order, the pixel difference, and the
tables rendered from a results JSON with raw times. The GPU and `--toy` runs exercise the rest."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_attention  # noqa: E402
import bench_gpu  # noqa: E402


def calls(*spec):
    """(steps, s, kind, phase) tuples as a row's raw calls."""
    return [{"steps": st, "s": s, "kind": kind, "phase": phase, "round": None, "position": None}
            for st, s, kind, phase in spec]


def test_steady_state_drops_the_warm_up_and_the_first_timed_call_at_each_step_count():
    raw = calls((50, 9.0, "compile", "load"), (50, 2.0, "timed", "main"), (50, 1.1, "timed", "main"),
                (50, 1.2, "timed", "main"), (50, 1.0, "timed", "main"), (30, 1.5, "timed", "main"),
                (30, 0.7, "timed", "main"), (50, 5.0, "timed", "recipe"), (50, 1.3, "timed", "recipe"))
    assert bench_gpu.steady_times(raw, 50, "main") == [1.1, 1.2, 1.0]
    assert bench_gpu.steady_times(raw, 30, "main") == [0.7]
    assert bench_gpu.steady_times(raw, 50, "recipe") == [1.3]  # each phase settles on its own
    st = bench_gpu.summary([1.1, 1.2, 1.0])
    assert (st["n"], st["median"], st["min"], st["max"], st["steady"]) == (3, 1.1, 1.0, 1.2, True)
    assert bench_gpu.summary([0.7])["steady"] is False
    assert bench_gpu.summary([]) is None


def test_interleaving_calls_every_contender_once_a_round_and_rotates_the_order():
    keys = ["snippet", "spo", "fast"]
    rounds = bench_gpu.rotation(keys, 4)
    assert rounds == [["snippet", "spo", "fast"], ["spo", "fast", "snippet"], ["fast", "snippet", "spo"],
                      ["snippet", "spo", "fast"]]
    flat = [k for r in rounds for k in r]
    assert all(a != b for a, b in zip(flat, flat[1:]))  # never the same contender twice in a row
    assert bench_gpu.rotation(keys, 2, start=1)[0] == ["spo", "fast", "snippet"]
    assert bench_gpu.rotation([], 3) == []


def test_contenders_of_one_loaded_object_are_never_neighbours_in_a_round():
    order = bench_gpu.ROUND_ORDER
    assert sorted(order) == sorted(bench_gpu.INTERLEAVED)
    specs = bench_gpu.specs()
    for r in bench_gpu.rotation(order, len(order)):
        for a, b in zip(r, r[1:] + r[:1]):  # cyclic: a round's last runs just before the next round's first
            assert specs[a].obj != specs[b].obj, (a, b)


def test_pixel_diff_is_in_255ths_and_refuses_images_of_different_shapes():
    a = np.zeros((4, 4, 3), dtype=np.uint8)
    b = a.copy()
    b[0, 0, 0], b[1, 1, 1] = 255, 3  # uint8 would wrap 0 − 255 to 1: the difference must not
    assert bench_gpu.pixel_diff(a, b) == {"max": 255, "mean": round(258 / 48, 4)}
    assert bench_gpu.pixel_diff(b, b) == {"max": 0, "mean": 0.0}
    with pytest.raises(ValueError, match="different shapes"):
        bench_gpu.pixel_diff(a, np.zeros((4, 5, 3), dtype=np.uint8))


def results_json():
    def row(key, raw, **kw):
        return {"key": key, "label": bench_gpu.CONTENDERS[key], "grad_mode": "inference_mode", "noise_device": "cuda",
                "load_s": 2.0, "first_call_s": None, "calls": raw, "weights_vram": 7 * 2**30,
                "peak_vram": 9 * 2**30, "skipped": None, "error": None, **kw}

    main = [("timed", "main")] * 4
    return {
        "steady_definition": bench_gpu.STEADY_DEFINITION, "flops_per_step": 13.52e12, "peak_tflops": 989.4,
        "in_progress": None,
        "pixels": [{"a": "fast", "b": "spo", "steps": 50, "max": 2, "mean": 0.0312, "expected": "≤ 2/255"}],
        "rows": {
            "snippet": row("snippet", calls((50, 4.0, "warm-up", "load"),
                                            *[(50, s, k, p) for s, (k, p) in zip([3.9, 3.0, 3.2, 3.4], main)])),
            "spo": row("spo", calls((50, 3.1, "timed", "main"), (50, 2.9, "timed", "main"))),
            "fast": row("fast", calls((50, 110.0, "compile", "load"),
                                      *[(50, s, k, p) for s, (k, p) in zip([1.7, 1.6, 1.5, 1.65], main)]),
                        first_call_s=110.0),
            "fast-fp8": row("fast-fp8", [], skipped="needs CUDA"),
        },
    }


def test_the_tables_come_from_the_raw_times_in_the_json():
    text = bench_gpu.render(results_json())
    lines = text.splitlines()
    snippet = next(x for x in lines if x.startswith("| a. authors' snippet") and "| 50 |" in x)
    # median of the 3 steady calls (3.0, 3.2, 3.4), not of all 4 timed, nor the warm-up
    assert "| 50 | 3 | 3.200 | 3.000 – 3.400 |" in snippet
    fast = next(x for x in lines if x.startswith("| c. spo --fast |") and "| 50 | 3 |" in x)
    assert "| 1.600 | 1.500 – 1.650 |" in fast and "| 0.500 |" in fast  # ÷ the snippet's median
    spo = next(x for x in lines if x.startswith("| b. spo (default"))
    assert "1 (not steady state: N < 3)" in spo
    assert any("skipped: needs CUDA" in x for x in lines)
    assert "| 110.00 | 1.600 | 108.40 |" in text  # compile: first call, steady median, the difference
    ratio = next(x for x in lines if x.startswith("| c. spo --fast ÷ a. authors' snippet"))
    assert "| 3 / 3 | 0.500 | 0.441 – 0.550 |" in ratio  # 1.5/3.4 and 1.65/3.0: the range, not only the median ratio
    # a ratio of a row that is not steady state says so, as its row does
    spo_ratio = next(x for x in lines if x.startswith("| b. spo (default, CPU noise) ÷ a. authors' snippet"))
    assert "| 1 / 3 (not steady state: N < 3) |" in spo_ratio
    assert "| c. spo --fast | b. spo (default, CPU noise) | 50 | 2 | 0.0312 |" in text
    assert "steady state" in lines[0]


def test_the_compile_table_says_which_cache_its_first_calls_started_from():
    data = results_json()
    assert "emptied at the start: the first call compiles" in bench_gpu.render(data)  # files from before the field
    data["compile_cache"] = bench_gpu.COMPILE_CACHE[True]
    text = bench_gpu.render(data)
    assert "kept from an earlier process (--keep-cache)" in text and "emptied at the start" not in text


def test_render_of_a_saved_run_from_the_command_line(tmp_path, capsys, monkeypatch):
    path = tmp_path / "results.json"
    data = results_json()
    data["in_progress"] = "recipe: load and compile (first call)"
    path.write_text(json.dumps(data))
    monkeypatch.setattr(sys, "argv", ["bench_gpu.py", "--render", str(path)])
    bench_gpu.main()
    out = capsys.readouterr().out
    assert "3.200" in out and "The run stopped during: recipe: load and compile" in out
    path.write_text("{")
    with pytest.raises(SystemExit) as exc:
        bench_gpu.main()
    assert exc.value.code == 2 and "cannot render" in capsys.readouterr().err


def test_attention_flops_and_layers_match_sdxl():
    cfg = json.loads((BENCH / "sdxl" / "unet_config.json").read_text())
    assert bench_attention.layer_counts(cfg) == {1: 10, 2: 60}
    # Summed over one UNet forward they are FlopCounterMode's 1.568 TFLOP of attention per step.
    total = sum(bench_attention.attention_flops(b, h, sq, skv, d) * (10 if sq == 4096 else 60)
                for _, b, h, sq, skv, d, _ in bench_attention.SHAPES)
    assert total == 1_567_830_835_200


def test_attention_per_step_totals_need_every_shape():
    results = [{"shape": "s", "backend": "A", "ms": 1.0, "layers_per_step": 10},
               {"shape": "c", "backend": "A", "ms": 0.1, "layers_per_step": 60},
               {"shape": "s", "backend": "B", "ms": 0.5, "layers_per_step": 10},
               {"shape": "c", "backend": "B", "error": "unavailable", "layers_per_step": 60}]
    assert bench_attention.per_step(results) == {"A": pytest.approx(16.0), "B": None}


def test_a_refused_contender_is_skipped_with_spos_own_words_and_a_crash_is_not():
    from spo_cli.errors import UsageError

    refused = UsageError("--quantize fp8 needs a CUDA GPU.", "Run it on an Ada or Hopper GPU.")
    assert bench_gpu.refusal(refused) == "--quantize fp8 needs a CUDA GPU. Run it on an Ada or Hopper GPU."
    # A spo-cli whose ModelRequest has no such field yet: skipped, saying so.
    old = TypeError("ModelRequest.__init__() got an unexpected keyword argument 'quantize'")
    assert "no quantize field" in bench_gpu.refusal(old)
    # Anything else is a failure of the contender, not a refusal.
    assert bench_gpu.refusal(RuntimeError("CUDA error: an illegal memory access")) is None
    assert bench_gpu.refusal(TypeError("unsupported operand")) is None
