"""--quantize fp8: its refusals, the layers it picks, how a column asks for it, what the sidecar and the
spec hash say, and (slow) the real torchao float8 path on the tiny model through `spo generate` and
`spo replay`.

No CPU has float8 tensor cores, and this machine has no GPU: the end-to-end test opens the two gates
that say so (torchao's hardware check and spo's own, `quantize.refuse_device`), and lowers the layer
width threshold to the tiny UNet's 64 features; everything else is the real code. torch's CPU build
has float8 `_scaled_mm`, so torchao's Float8Tensor really computes there."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import probe_cli
from spo_cli import comparison, quantize
from spo_cli.cli import options
from spo_cli.errors import UsageError
from spo_cli.request import ImageRequest, ImageTask, ModelRequest

COMMON = dict(vae=None, dtype="auto", device="auto")


# -- refusals ----------------------------------------------------------------------------------


def test_capability_gate_is_ada_or_newer():
    assert [quantize.capable(*c) for c in [(7, 5), (8, 0), (8, 6), (8, 9), (9, 0), (10, 0), (12, 0)]] == [
        False, False, False, True, True, True, True]


def test_refuse_device_names_the_gpu_and_its_sm():
    with pytest.raises(UsageError) as e:
        quantize.refuse_device("cuda:1", (8, 0), "NVIDIA A100-SXM4-80GB")
    assert "cuda:1 is an NVIDIA A100-SXM4-80GB (sm80), which has no float8 tensor cores" in e.value.paragraph()
    quantize.refuse_device("cuda", (9, 0), "NVIDIA H200")  # no error
    # spo doctor's row: it said "not here: this machine has none (spo would run on cpu)", none of what
    assert quantize.here("cpu")["why"] == "it needs an NVIDIA Ada or Hopper GPU (or newer), and spo would run on cpu"
    assert quantize.here("cuda", (8, 0), "NVIDIA A100")["why"] == ("the NVIDIA A100 (sm80) has no float8 tensor cores "
                                                                   "(Ada sm89, Hopper sm90 or newer)")
    assert quantize.here("cuda", (9, 0), "NVIDIA H200") == {"possible": True, "torchao": quantize.torchao_version(),
                                                            "why": None}
    with pytest.raises(UsageError, match="--device mps is not one"):
        quantize.refuse_device("mps")
    with pytest.raises(UsageError, match="this machine has none"):
        quantize.refuse_device("cpu", picked=True)


def test_missing_torchao_is_an_install_line_before_torch(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao", None)  # as if not installed
    with pytest.raises(UsageError) as e:
        options.model_request(model="spo", quantize="fp8")
    assert e.value.paragraph() == ('--quantize fp8 needs torchao, which is not installed. Install the extra: '
                                   'pip install "spo-cli[fp8]".')
    assert options.model_request(model="spo")[0].quantize is None  # unasked, torchao is not looked for
    with pytest.raises(UsageError, match=r"The SPO-SDXL column's @fp8 needs torchao, which is not installed"):
        _labels_and_quantize("spo,spo@fp8")


def test_refusals_come_before_torch(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red fox\n")
    got = probe_cli({
        "cpu": ["generate", "x", "--quantize", "fp8", "--device", "cpu"],
        "fp32": ["generate", "x", "--quantize", "fp8", "--dtype", "fp32"],
        "offload": ["batch", str(prompts), "--quantize", "fp8", "--offload", "model"],
        "value": ["generate", "x", "--quantize", "int4"],
        "column": ["compare", "x", "--model", "spo@fp8", "--device", "cpu"],
        "server": ["generate", "x", "--quantize", "fp8", "--server", "http://127.0.0.1:9"],
    })
    for case, text in got.items():
        assert text.rstrip().endswith("EXIT:2:HEAVY:"), (case, text)
    assert "--device cpu is not one" in got["cpu"] and "Hopper" in got["cpu"]
    assert "takes a 16-bit model" in got["fp32"]
    assert "--offload model do not go together" in got["offload"]
    assert "--quantize cannot be 'int4'. Use fp8" in got["value"]
    assert "--device cpu is not one" in got["column"]
    assert "--quantize cannot be used with --server" in got["server"]


# -- the layers ----------------------------------------------------------------------------------


def _linears(unet):
    import torch

    return {n: (m.in_features, m.out_features) for n, m in unet.named_modules() if isinstance(m, torch.nn.Linear)}


def test_filter_picks_the_transformer_linears_of_the_tiny_unet():
    import torch
    from diffusers import UNet2DConditionModel

    from spo_cli import tiny

    with torch.device("meta"):
        unet = UNet2DConditionModel(**tiny.unet_config())
    linears = _linears(unet)
    picked = [n for n, (i, o) in linears.items() if quantize.chosen(n, i, o, min_features=16)]
    # 12 transformer blocks × (self- and cross-attention's q, k, v, out + the feed-forward's two) + 6 × proj_in/out
    assert len(picked) == 12 * 10 + 6 * 2
    left = sorted(set(linears) - set(picked))
    assert left and all(n.startswith(("time_embedding.", "add_embedding.")) or n.endswith(".time_emb_proj")
                        for n in left), left
    assert "mid_block.attentions.0.transformer_blocks.1.attn2.to_k" in picked
    assert "down_blocks.1.attentions.0.proj_in" in picked
    assert "up_blocks.0.attentions.2.transformer_blocks.0.ff.net.0.proj" in picked
    # At its real threshold nothing of the tiny UNet is wide enough to gain.
    assert not [n for n, (i, o) in linears.items() if quantize.chosen(n, i, o)]
    assert not quantize.chosen("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", 648, 520, 16)


def test_filter_on_sdxl_shapes_takes_all_but_the_embeddings_and_the_fused_qkv():
    """SDXL's own UNet (built on the meta device: shapes, no weights)."""
    import torch
    from diffusers import UNet2DConditionModel

    sdxl = dict(block_out_channels=(320, 640, 1280), layers_per_block=2, cross_attention_dim=2048,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
                addition_embed_type="text_time", addition_time_embed_dim=256,
                projection_class_embeddings_input_dim=2816, sample_size=128)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**sdxl)
    linears = _linears(unet)
    picked = [n for n, (i, o) in linears.items() if quantize.chosen(n, i, o)]
    assert (len(linears), len(picked)) == (743, 70 * 10 + 11 * 2)  # 70 transformer blocks in 11 transformers
    assert min(min(linears[n]) for n in picked) == 640
    unet.fuse_qkv_projections()  # --fast: one GEMM for q, k and v (k and v in cross-attention)
    fused = [n for n, (i, o) in _linears(unet).items() if quantize.chosen(n, i, o)]
    assert sum(n.endswith(".attn1.to_qkv") for n in fused) == sum(n.endswith(".attn2.to_kv") for n in fused) == 70


def test_a_float16_model_runs_its_float8_gemms_with_bfloat16_results(monkeypatch):
    """torch's row-wise scaled GEMM on CUDA returns bfloat16 only (CUTLASS's kernel, on Ada and on Hopper
    below cuBLAS 12.9), and torchao asks it for the activations' dtype: a float16 model's quantized
    layers must hand it bfloat16. The CPU's kernel takes float16 too, so the call is watched, not its
    failure. And a row of zeros (SDXL's unconditional text embeddings) must not become 0/0."""
    import torch
    import torchao.quantization.quant_api as quant_api
    from diffusers import UNet2DConditionModel
    from torch.utils._python_dispatch import TorchDispatchMode

    from spo_cli import tiny

    monkeypatch.setattr(quant_api, "_check_hardware_support", lambda granularity: None)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**tiny.unet_config()).to(torch.float16).eval()
    # A weight row of zeros would quantize to 0/0: that layer is left as it is (a LoRA or a merge can zero a row).
    zeroed = next(n for n, m in unet.named_modules()
                  if type(m) is torch.nn.Linear and quantize.chosen(n, m.in_features, m.out_features, 16))
    with torch.no_grad():
        unet.get_submodule(zeroed).weight[3].zero_()
    names = quantize.quantize_unet(unet, min_features=16)
    assert zeroed not in names and type(unet.get_submodule(zeroed)) is torch.nn.Linear
    layer = unet.get_submodule(names[0])
    assert type(layer).__name__ == "Float8Linear16" and type(layer.weight).__name__ == "Float8Tensor"
    assert unet.time_embedding.linear_1.weight.dtype == torch.float16  # left as it was
    assert unet.conv_in.weight.dtype == torch.float16

    calls = []

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            result = func(*args, **(kwargs or {}))
            if func is torch.ops.aten._scaled_mm.default:
                bias = (kwargs or {}).get("bias", args[4] if len(args) > 4 else None)
                calls.append((result.dtype, bias))
            return result

    sample = torch.randn(1, 4, 8, 8, dtype=torch.float16)
    text = torch.zeros(1, 77, 64, dtype=torch.float16)  # no negative prompt: zero embeddings
    added = {"text_embeds": torch.randn(1, 32, dtype=torch.float16), "time_ids": torch.randn(1, 6, dtype=torch.float16)}
    with torch.inference_mode(), Watch():
        out = unet(sample, 10, encoder_hidden_states=text, added_cond_kwargs=added).sample
    assert len(calls) >= len(names) // 2  # dead to_k/to_v of nothing: every layer picked runs once here
    assert {dtype for dtype, _ in calls} == {torch.bfloat16}
    assert {b.dtype for _, b in calls if b is not None} <= {torch.bfloat16}
    assert out.dtype == torch.float16 and not out.isnan().any()


@pytest.mark.slow
def test_the_fused_quantized_unet_traces_whole_for_torch_compile(monkeypatch):
    """--fast --quantize fp8 as make_fast orders it: QKV fused, channels_last, quantized, then
    torch.compile(fullgraph=True) must trace the float8 layers (torchao's Float8Tensor, the bfloat16
    islands) without a graph break. Dynamo's tracing only (backend "eager"): inductor's kernels and
    CUDA graphs are the GPU's to check."""
    import torch
    import torchao.quantization.quant_api as quant_api
    from diffusers import UNet2DConditionModel

    from spo_cli import tiny

    monkeypatch.setattr(quant_api, "_check_hardware_support", lambda granularity: None)
    torch.manual_seed(0)
    # One transformer block a level, not two: tracing time grows with the graph, and one shows a break.
    unet = UNet2DConditionModel(**dict(tiny.unet_config(), layers_per_block=1, transformer_layers_per_block=1))
    unet = unet.to(torch.float16).eval()
    unet.fuse_qkv_projections()
    unet.to(memory_format=torch.channels_last)
    names = quantize.quantize_unet(unet, min_features=16)
    assert sum(n.endswith((".to_qkv", ".to_kv")) for n in names) == 8
    sample = torch.randn(2, 4, 8, 8, dtype=torch.float16)
    text = torch.randn(2, 77, 64, dtype=torch.float16)
    text[1] = 0  # the unconditional half, without a negative prompt
    added = {"text_embeds": torch.randn(2, 32, dtype=torch.float16), "time_ids": torch.randn(2, 6, dtype=torch.float16)}
    with torch.inference_mode():
        eager = unet(sample, 10, encoder_hidden_states=text, added_cond_kwargs=added).sample
        compiled = torch.compile(unet, backend="eager", fullgraph=True, dynamic=False)
        traced = compiled(sample, 10, encoder_hidden_states=text, added_cond_kwargs=added).sample
    assert torch.equal(traced, eager) and not eager.isnan().any()


# -- columns, identity, sidecar -------------------------------------------------------------------


def _labels_and_quantize(text):
    from spo_cli.cli import eval as eval_cli

    cols = comparison.build_columns(**eval_cli.parse_columns(text), revision=None, common=dict(COMMON),
                                    model_request=options.model_request)
    return [(c.label, c.request.model, c.request.lora_scale, c.request.quantize) for c in cols]


def test_eval_columns_take_an_fp8_suffix_on_any_column():
    assert _labels_and_quantize("spo,spo@fp8") == [("SPO-SDXL", "spo", None, None),
                                                   ("SPO-SDXL fp8", "spo", None, "fp8")]
    assert _labels_and_quantize("base@fp8,spo-lora:0.5,spo-lora:0.5@fp8,org/mine@fp8") == [
        ("SDXL base fp8", "base", None, "fp8"), ("SPO LoRA x0.5", "spo-lora", 0.5, None),
        ("SPO LoRA x0.5 fp8", "spo-lora", 0.5, "fp8"), ("mine fp8", "org/mine", None, "fp8")]
    from spo_cli.cli import eval as eval_cli

    with pytest.raises(UsageError, match="names 'spo@fp8' twice"):
        eval_cli.parse_columns("spo@fp8,spo@fp8")
    with pytest.raises(UsageError, match="strength 0.5 fp8 twice"):
        eval_cli.parse_columns("spo-lora:0.5@fp8,spo-lora:.5@fp8")


def test_a_suffix_that_only_looks_like_fp8_is_refused_for_what_it_is(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # Each reached the model resolver as a folder or repo named e.g. 'spo@fp8' ('neither a preset, ...'),
    # or, for '@fp8', as "--model is empty".
    for text, says in (("spo@fp8@fp8", "says @fp8 twice"), ("spo-lora:0.5@fp8@fp8", "says @fp8 twice"),
                       ("spo,@fp8", "has @fp8 but no model before it"), ("spo@FP8", "written @fp8, in lower case")):
        with pytest.raises(UsageError, match=says):
            _labels_and_quantize(text)
        with pytest.raises(UsageError, match=says):  # compare's --model and a sweep's model axis: the same grammar
            comparison.build_columns(None, None, None, [text.split(",")[-1]], [], [], None, None, dict(COMMON),
                                     options.model_request)
    # a folder named like a quantized column is not read as another folder in fp8
    (tmp_path / "run@fp8").mkdir()
    with pytest.raises(UsageError, match=r"^'\./run@fp8' is a folder, and @fp8 at the end of a model's name"):
        _labels_and_quantize("spo,./run@fp8")
    # a folder whose name holds '@' is still a folder, quantized or not
    assert _labels_and_quantize("org/mo@del,org/mo@del@fp8") == [("mo@del", "org/mo@del", None, None),
                                                                ("mo@del fp8", "org/mo@del", None, "fp8")]


def test_compare_model_columns_take_the_suffix_and_a_label_stays_the_users():
    cols = comparison.build_columns(None, True, None, ["spo@fp8", "./mine@fp8"], [], [], None, None, dict(COMMON),
                                    options.model_request, ["spo", "model:0", "model:1"])
    assert [(c.label, c.request.quantize) for c in cols] == [("SPO-SDXL", None), ("SPO-SDXL fp8", "fp8"),
                                                            ("mine fp8", "fp8")]
    cols = comparison.build_columns(None, None, None, ["spo@fp8"], ["eight"], [], None, None, dict(COMMON),
                                    options.model_request)
    assert [(c.label, c.request.quantize) for c in cols] == [("eight", "fp8")]
    # --quantize fp8 for the whole comparison: every column, labels as they are
    cols = comparison.build_columns(True, True, None, [], [], [], None, None, dict(COMMON, quantize="fp8"),
                                    options.model_request)
    assert [(c.label, c.request.quantize) for c in cols] == [("SDXL base", "fp8"), ("SPO-SDXL", "fp8")]


def test_a_sweeps_model_axis_takes_the_suffix_too():
    from spo_cli.sweep import axes, plan

    [axis] = axes.parse_axes("model=spo,spo@fp8,spo-lora:0.5,spo-lora:0.5@fp8", None, None, given=set(),
                             size_limit=True)
    assert axis.labels == ("SPO-SDXL", "SPO-SDXL fp8", "SPO LoRA x0.5", "SPO LoRA x0.5 fp8")
    cols = plan.build_models(axis, dict(COMMON), options.model_request)
    assert [(c.label, c.request.lora_scale, c.request.quantize) for c in cols] == [
        ("SPO-SDXL", None, None), ("SPO-SDXL fp8", None, "fp8"), ("SPO LoRA x0.5", 0.5, None),
        ("SPO LoRA x0.5 fp8", 0.5, "fp8")]
    # and a lora-scale axis across an fp8 column keeps it fp8
    [col] = [plan.lora_column(c, 0.25, dict(COMMON), options.model_request) for c in cols[3:]]
    assert (col.label, col.request.lora_scale, col.request.quantize) == ("SPO LoRA x0.25 fp8", 0.25, "fp8")


def test_quantize_for_every_column_and_a_column_of_its_own_fp8_do_not_go_together():
    # `--quantize fp8 --columns spo,spo@fp8` made two fp8 columns of one model, one labelled as if it were not.
    from spo_cli.cli import eval as eval_cli
    from spo_cli.sweep import axes, plan

    for text in ("spo,spo@fp8", "spo-lora:0.5@fp8"):
        with pytest.raises(UsageError, match="quantizes every column, so @fp8 on the SPO"):
            comparison.build_columns(**eval_cli.parse_columns(text), revision=None,
                                     common=dict(COMMON, quantize="fp8"), model_request=options.model_request)
    # a lora-scale axis under --quantize fp8 is not such a column: every strength is fp8, as every column is
    [axis] = axes.parse_axes("model=spo,spo-lora", None, None, given=set(), size_limit=True)
    common = dict(COMMON, quantize="fp8")
    cols = [plan.lora_column(c, 0.25, common, options.model_request)
            for c in plan.build_models(axis, common, options.model_request)]
    assert [(c.label, c.request.quantize) for c in cols] == [("SPO LoRA x0.25", "fp8")] * 2


def _resolved(quantize_: str | None):
    from spo_cli.resolve.model import ResolvedModel
    from spo_cli.resolve.parts import Resolved

    part = Resolved("org/model", "hub", Path("/nowhere"), commit="c0ffee")
    return ResolvedModel(ModelRequest(model="org/model", quantize=quantize_), None, part, "float16")


def test_identity_and_sidecar_carry_fp8_only_when_set():
    from datetime import datetime, timezone

    from spo_cli.outputs import metadata

    plain, fp8 = _resolved(None), _resolved("fp8")
    assert "quantize" not in plain.identity() and fp8.identity() == dict(plain.identity(), quantize="fp8")
    image = ImageRequest("a red fox", 1)
    assert image.spec_hash(plain.identity()) != image.spec_hash(fp8.identity())  # batch resume: other images
    assert "quantize" not in plain.describe()["model_request"]  # sidecars as they were
    run = {"device": "cuda", "dtype": "float16", "versions": {"spo-cli": "0"}}
    scheduler = {"name": "default", "class": "EulerDiscreteScheduler", "a1111": "Euler", "config": {}}
    sidecars = [metadata.build(image, r.describe(), run, scheduler, width=64, height=64, batch_size=1, elapsed_s=0,
                               created=datetime.now(timezone.utc)) for r in (plain, fp8)]
    assert [metadata.recorded_requests(s, Path("x.json"))[1].quantize for s in sidecars] == [None, "fp8"]
    texts = [metadata.a1111_parameters(s) for s in sidecars]
    assert "FP8 weight" not in texts[0] and "FP8 weight: Enable for SDXL" in texts[1]
    with pytest.raises(UsageError, match="quantize"):
        bad = json.loads(json.dumps(sidecars[1]))
        bad["model_request"]["quantize"] = "int2"
        metadata.recorded_requests(bad, Path("x.json"))


def test_eval_reports_the_pixel_distance_of_a_quantized_column(tmp_path):
    import numpy as np
    from PIL import Image

    from spo_cli.scores import report

    cols = [comparison.Column("SDXL base", ModelRequest(model="base"), "base"),
            comparison.Column("SPO-SDXL", ModelRequest(model="spo"), "spo"),
            comparison.Column("SPO-SDXL fp8", ModelRequest(model="spo", quantize="fp8"), "spo-fp8")]
    rows = [ImageTask(ImageRequest("a fox", s), f"fox-{s}") for s in (1, 2, 3)]
    assert report.quantized_pairs(cols) == [(1, 2)]  # not base against either
    pixels = np.full((4, 4, 3), 100, np.uint8)
    for folder, shift in (("spo", 0), ("spo-fp8", 3)):
        (tmp_path / folder).mkdir()
        for s in (1, 2, 3):
            changed = pixels.copy()
            changed[0, 0, 0] += shift * s  # cell s: one value off by 3·s
            Image.fromarray(changed).save(tmp_path / folder / f"fox-{s}.png")
    Image.fromarray(np.full((4, 8, 3), 100, np.uint8)).save(tmp_path / "spo" / "fox-4.png")  # sizes differ: no distance
    Image.fromarray(pixels).save(tmp_path / "spo-fp8" / "fox-4.png")
    rows.append(ImageTask(ImageRequest("a fox", 4), "fox-4"))
    [got] = report.pixel_distances(cols, rows, tmp_path, failed={(2, 2): "boom"})  # the third cell failed
    assert (got["a"], got["b"], got["max"]) == ("SPO-SDXL fp8", "SPO-SDXL", 6)
    assert [(c["seed"], c["max"]) for c in got["cells"]] == [(1, 3), (2, 6)]
    assert got["mean"] == pytest.approx((3 / 48 + 6 / 48) / 2, abs=1e-3)


# -- the real float8 path, end to end (slow) --------------------------------------------------


@pytest.mark.slow
def test_fp8_on_the_tiny_model_through_generate_compare_and_replay(hub_cache, out, monkeypatch):
    """spo generate --quantize fp8 through the CLI, in float16 (the GPU default, whose layers run as
    bfloat16 islands), with the SPO LoRA folded in first; spo compare of the same model with and
    without fp8 on the same seed (the comparison's own loading, which keeps the fp8 UNet apart);
    replay of the fp8 image; spo serve --quantize fp8 over A1111's API; and a replay refused where
    fp8 cannot run."""
    import numpy as np
    import torchao.quantization.quant_api as quant_api
    from PIL import Image
    from typer.testing import CliRunner

    from spo_cli import engine as engine_module
    from spo_cli.cli import app

    loaded = []
    load = engine_module.Engine.load.__func__

    def keep(cls, *args, **kw):
        loaded.append(load(cls, *args, **kw))
        return loaded[-1]

    monkeypatch.setattr(engine_module.Engine, "load", classmethod(keep))
    small = ["--width", "16", "--height", "16", "--steps", "1", "--device", "cpu", "--dtype", "fp16"]

    def run(*args):
        result = CliRunner().invoke(app, list(args))
        assert result.exit_code == 0, result.output
        return result

    with monkeypatch.context() as gates:
        gates.setattr(quant_api, "_check_hardware_support", lambda granularity: None)
        gates.setattr(quantize, "refuse_device", lambda *a, **kw: None)
        gates.setattr(quantize, "MIN_FEATURES", 16)  # the tiny UNet is 64 features wide
        run("generate", "a red fox", *small, "--seed", "5", "--model", "spo-lora", "--quantize", "fp8",
            "--out", str(out / "fp8"))
        run("compare", "a red fox", *small, "--seeds", "5", "--spo-lora", "--model", "spo-lora@fp8",
            "--out", str(out / "cmp"))
        [fp8_png] = (out / "fp8").glob("*.png")
        run("replay", str(fp8_png.with_suffix(".json")), "--device", "cpu", "--out", str(out / "again"))
        # spo serve --quantize fp8: the same image over A1111's API, and /health says which models are fp8.
        import base64

        from tests.test_serve import Running, png_pixels, request

        served = Running(out / "serve", labels=["spo-lora"], dtype="fp16", quantize="fp8").start().ready()
        try:
            status, body, _ = request(served.url + "/sdapi/v1/txt2img", {
                "prompt": "a red fox", "seed": 5, "steps": 1, "width": 16, "height": 16})
            health = request(served.url + "/health")[1]
        finally:
            served.stop()
        assert status == 200, body
        assert health["quantize"] == {"spo-lora": "fp8"}
        assert np.abs(png_pixels(base64.b64decode(body["images"][0])) - np.asarray(Image.open(fp8_png), int)).max() <= 1

    unet = loaded[0].pipe.unet
    assert len(unet.spo_fp8_layers) == 132 and not getattr(unet, "peft_config", None)  # the LoRA folded in
    for name in unet.spo_fp8_layers:
        assert type(unet.get_submodule(name).weight).__name__ == "Float8Tensor", name
    assert type(unet.time_embedding.linear_1.weight).__name__ == "Parameter"
    assert len(loaded) == 3 and len(loaded[1].pipe.unet.spo_fp8_layers) == 132  # replay quantized too
    assert len(loaded[2].pipe.unet.spo_fp8_layers) == 132  # and the server

    meta = json.loads(fp8_png.with_suffix(".json").read_text())
    assert meta["model_request"]["quantize"] == "fp8" and meta["versions"]["torchao"]
    assert "FP8 weight: Enable for SDXL" in Image.open(fp8_png).info["parameters"]
    [plain_cell] = (out / "cmp" / "cells" / "spo-lora-x1").glob("*.png")
    [fp8_cell] = (out / "cmp" / "cells" / "spo-lora-x1-fp8").glob("*.png")
    assert json.loads(fp8_cell.with_suffix(".json").read_text())["model_request"]["quantize"] == "fp8"
    a, b, c = (np.asarray(Image.open(p), np.int16) for p in (fp8_cell, plain_cell, fp8_png))
    delta = np.abs(a - b)
    assert 0 < delta.max() < 64 and delta.mean() < 4, (delta.max(), delta.mean())  # other pixels, but close
    assert np.abs(a - c).max() <= 1  # the comparison's fp8 column is spo generate --quantize fp8
    [again] = (out / "again").glob("*.png")
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(fp8_png)))

    # Gates closed again: this machine cannot run what the image recorded, said before anything loads.
    result = CliRunner().invoke(app, ["replay", str(fp8_png.with_suffix(".json")), "--out", str(out / "refused")])
    assert result.exit_code == 2 and "this machine has none" in result.output and len(loaded) == 3, result.output


def test_health_names_the_models_served_with_fp8():
    """/health of `spo serve --quantize fp8` (its route, over a worker's state as the server keeps it)."""
    import asyncio
    from types import SimpleNamespace

    from spo_cli.serve.routes.spo import health

    def worker(quantized):
        model = SimpleNamespace(engine=SimpleNamespace(quantize=quantized))
        lane = SimpleNamespace(name="cuda", state="ready", busy=0, images=0, failures=0, error=None)
        return SimpleNamespace(lanes=[lane], status="ready", queued=0, load_error=None,
                               loaded=lambda: {"spo": model, "base": model})

    body = asyncio.run(health(SimpleNamespace(worker=worker("fp8"))))
    assert body["quantize"] == {"spo": "fp8", "base": "fp8"} and body["models"] == ["spo", "base"]
    assert "quantize" not in asyncio.run(health(SimpleNamespace(worker=worker(None))))


def test_serve_refuses_fp8_on_a_machine_without_the_gpu_before_it_binds():
    # It bound its port and printed "Serving on http://..." before: the machine was checked at load.
    import torch

    from conftest import run_spo

    if torch.cuda.is_available():
        pytest.skip("a CUDA machine could serve: this is the refusal of one without a float8 GPU")
    r = run_spo("serve", "--quantize", "fp8", "--port", "0")
    assert r.returncode == 2 and "this machine has none (spo would run on cpu)" in r.stderr, r.stderr
    assert "Serving on" not in r.stdout + r.stderr and "Traceback" not in r.stderr


def test_a_torchao_that_cannot_be_imported_is_named_not_unexpected(hub_cache, tmp_path):
    # diffusers imports an installed torchao with every model, --quantize or not: one built for another
    # torch failed `spo generate` as "Unexpected RuntimeError: Failed to import diffusers.models...".
    import os

    from conftest import TINY, run_spo

    fake = tmp_path / "site" / "torchao"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('built for another torch')\n")
    path = os.pathsep.join(p for p in (str(fake.parent), os.environ.get("PYTHONPATH")) if p)
    r = run_spo("generate", "a cat", *TINY, "--device", "cpu", "--out", str(tmp_path / "out"), env={"PYTHONPATH": path})
    msg = " ".join(r.stderr.split())
    assert r.returncode == 1 and "Traceback" not in msg and "Unexpected" not in msg, msg
    assert "cannot be imported (ImportError: built for another torch)" in msg and "pip uninstall torchao" in msg


def _fp8_sidecar(tmp_path, name, quantize_) -> str:
    from spo_cli.outputs import metadata

    meta = {"schema": metadata.SCHEMA, "prompt": "x", "seed": 1, "steps": 2, "guidance": 5.0, "width": 64,
            "height": 64, "scheduler": {"name": "default"}, "model_request": {"model": "spo", "quantize": quantize_},
            "model": {}, "dtype": "float16"}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(meta))
    return str(path)


def test_a_sidecars_quantize_is_checked_as_input_from_that_file(tmp_path, monkeypatch):
    hostile = {"number": 8, "list": ["fp8"], "spaced": "fp8 ", "upper": "FP8", "long": "f" * 500_000}
    got = probe_cli({name: ["replay", _fp8_sidecar(tmp_path, name, v), "--out", str(tmp_path / "out")]
                     for name, v in hostile.items()})
    for name, text in got.items():
        said = " ".join(text.split())
        assert said.endswith("EXIT:2:HEAVY:") and f"{name}.json: 'quantize' cannot be" in said, said
        assert len(said) < 400  # the 500,000 characters quoted by their start
    assert not (tmp_path / "out").exists()
    # a file made with fp8 on a machine without torchao: said of the file, with the way out
    from typer.testing import CliRunner

    from spo_cli.cli import app

    monkeypatch.setitem(sys.modules, "torchao", None)
    sidecar = _fp8_sidecar(tmp_path, "made", "fp8")
    r = CliRunner().invoke(app, ["replay", sidecar, "--out", str(tmp_path / "out")])
    assert r.exit_code == 2 and f"{sidecar} was made with --quantize fp8, which needs torchao" in " ".join(r.stderr.split())
    assert "--quantize none" in r.stderr and not (tmp_path / "out").exists()
