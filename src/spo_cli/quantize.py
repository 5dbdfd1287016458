"""`--quantize fp8`: the UNet's large linear layers as float8 GEMMs (torchao's dynamic float8
activations and float8 weights, one scale per row), on GPUs with float8 tensor cores.

It changes pixels, so it is a property of the weights (ModelRequest.quantize), recorded with every
image and part of its spec hash, never a run option. The layer filter and the checks before torch
(`precheck`) import neither torch nor torchao, so that a request that cannot run is refused before
anything loads.

The order of work on a loaded pipeline (Engine.load, and make_fast under --fast): the LoRAs are
folded into the UNet's weights (a float8 weight cannot carry a LoRA beside it, and fp8 of the sum is
what a merged checkpoint would give); under --fast the QKV projections are fused (one float8 GEMM
instead of three); then the layers are quantized; then torch.compile sees the float8 graph.
"""

from __future__ import annotations

from spo_cli.errors import UsageError

FP8 = "fp8"
# Float8 tensor cores: Ada (sm89) and Hopper (sm90) and newer. torch's _scaled_mm has no kernel below.
MIN_CAPABILITY = (8, 9)
# The layers chosen are the transformer blocks' own: their GEMMs run over every latent token (at 1024²,
# 4,096 in SDXL's 640-wide level and 1,024 in its 1280-wide one), which is where float8's doubled
# tensor-core rate pays. Not the time
# and added (text-time) embeddings, nor the resnets' time projections: their GEMMs have one row per
# image, are bound by reading the weights, and condition every step, so quantizing them would cost
# precision for no time.
_LEAVES = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_qkv", "attn1.to_out.0",
           "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_kv", "attn2.to_out.0",
           "ff.net.0.proj", "ff.net.2")
# A GEMM over many tokens of a layer n features wide does about n/2 FLOPs per byte it moves in 16-bit;
# an H100/H200 needs about 200 (989 TFLOP/s over 4.8 TB/s) to be bound by its tensor cores rather than by
# memory. Below about 400 features float8 could only add its quantization pass, so narrower layers stay
# as they are. SDXL's narrowest chosen layer is 640 wide: the threshold guards other shapes, not SDXL's.
MIN_FEATURES = 512
# torch._scaled_mm needs both sides of the weight to be multiples of 16 (torchao would skip others silently).
ALIGN = 16
LABEL = "fp8"  # a quantized comparison column's label suffix: "SPO-SDXL fp8"
SUFFIX = "@" + FP8  # eval's and compare's column suffix: spo@fp8


def chosen(name: str, in_features: int, out_features: int, min_features: int | None = None) -> bool:
    """Whether the UNet's nn.Linear `name` (its module path) of that shape is quantized."""
    min_features = MIN_FEATURES if min_features is None else min_features
    parts = name.split(".")
    in_block = "transformer_blocks" in parts and any(name.endswith("." + leaf) for leaf in _LEAVES)
    # proj_in / proj_out of a Transformer2DModel (SDXL's use_linear_projection): over every token too.
    projection = parts[-1] in ("proj_in", "proj_out") and "attentions" in parts
    if not (in_block or projection):
        return False
    return (min(in_features, out_features) >= min_features
            and in_features % ALIGN == 0 and out_features % ALIGN == 0)


def capable(major: int, minor: int) -> bool:
    """Whether a CUDA device of this compute capability has float8 tensor cores."""
    return (major, minor) >= MIN_CAPABILITY


def split_suffix(name: str) -> tuple[str, str | None]:
    """A comparison column's name → (name, quantize): `spo@fp8` → ("spo", "fp8"). A name that only
    looks like one (`@fp8`, `spo@fp8@fp8`, `spo@FP8`) is refused here: it would otherwise reach the model
    resolver as a folder or repo called `spo@fp8`, whose refusal says nothing about the suffix."""
    from spo_cli.validate import shown

    if name.endswith(SUFFIX):
        import os

        bare = name[: -len(SUFFIX)]
        if os.path.isdir(os.path.expanduser(name)):  # else ./run@fp8 silently became ./run (or nothing) in fp8
            raise UsageError(f"{shown(name)} is a folder, and {SUFFIX} at the end of a model's name asks for that "
                             f"model in fp8 ({shown(bare)} here).", f"Rename the folder: its name cannot end in {SUFFIX}.")
        if not bare.strip():
            raise UsageError(f"{shown(name)} has {SUFFIX} but no model before it.", f"Put it after one, e.g. spo{SUFFIX}.")
        if bare.endswith(SUFFIX):
            raise UsageError(f"{shown(name)} says {SUFFIX} twice.", f"Write it once, after the model: e.g. spo{SUFFIX}.")
        return bare, FP8
    if "@" in name and name.rsplit("@", 1)[1].strip().lower() == FP8:
        raise UsageError(f"{shown(name)}: the float8 suffix is written {SUFFIX}, in lower case and with nothing "
                         "after it.", f"E.g. spo{SUFFIX}.")
    return name, None


NEEDS = ("--quantize fp8 runs float8 GEMMs on the tensor cores of NVIDIA Ada (sm89, e.g. L4, L40S, RTX 4090), "
         "Hopper (sm90: H100, H200) or newer GPUs")
DROP = "Drop --quantize fp8 (spo replay: --quantize none) to run the model as it is"


def precheck(quantize: str | None, device: str, dtype: str, offload: str | None) -> None:
    """What refuses fp8 before torch: torchao missing, a device asked for that is not CUDA, CPU
    offload (the weights would move to host memory and back), float32 (its GEMMs give 16-bit results)."""
    if quantize is None:
        return
    from spo_cli import extras

    extras.require(FP8, "--quantize fp8", "torchao")
    if device != "auto":
        refuse_device(device)
    if offload:
        raise UsageError(f"--quantize fp8 and --offload {offload} do not go together: offloading moves the weights "
                         "between host and GPU memory, and float8 weights stay on the GPU.",
                         "Drop --offload (fp8 halves the UNet's linear weights' memory), or drop --quantize fp8.")
    if dtype in ("float32", "fp32"):
        raise UsageError("--quantize fp8 takes a 16-bit model (--dtype fp16 or bf16): its float8 GEMMs give 16-bit "
                         "results, so float32 would only be rounded to them.", "Drop --dtype fp32 (fp16 is the "
                         "GPU default), or drop --quantize fp8.")


def check_machine(quantize: str | None, device: str, dtype: str) -> None:
    """After torch has picked the device and dtype: CUDA, of capability ≥ 8.9, and 16-bit."""
    if quantize is None:
        return
    capability = name = None
    if device.startswith("cuda"):
        import torch

        capability, name = torch.cuda.get_device_capability(device), torch.cuda.get_device_name(device)
    refuse_device(device, capability, name, picked=True)
    precheck(quantize, device, dtype, None)


def refuse_device(device: str, capability: tuple[int, int] | None = None, name: str | None = None, *,
                  picked: bool = False) -> None:
    """The one gate on the machine (the tests open it to run the real float8 path on the CPU): `device`
    must be CUDA, and of a capability that has float8 tensor cores when it is known. `picked`: the
    device is what `auto` became, not what the user named."""
    if not device.startswith("cuda"):
        raise UsageError(f"{NEEDS}; this machine has none (spo would run on {device})." if picked else
                         f"{NEEDS}; --device {device} is not one.", f"{DROP}, or run it on such a GPU.")
    if capability is not None and not capable(*capability):
        major, minor = capability
        raise UsageError(f"{NEEDS}; {device} is an {name} (sm{major}{minor}), which has no float8 tensor cores.",
                         f"{DROP}, or run it on an Ada or Hopper GPU.")


def here(device: str, capability: tuple[int, int] | None = None, name: str | None = None) -> dict:
    """For `spo doctor`: whether --quantize fp8 can run on `device` ({"possible", "torchao", "why"})."""
    from spo_cli import extras

    version = None if extras.missing("torchao") else torchao_version()
    why = None if version else 'torchao is not installed (pip install "spo-cli[fp8]")'
    try:
        refuse_device(device, capability, name, picked=True)
    except UsageError:
        # Its own words, not the tail of refuse_device's: "this machine has none" lost what it had none of.
        why = why or (f"it needs an NVIDIA Ada or Hopper GPU (or newer), and spo would run on {device}"
                      if not device.startswith("cuda") else f"the {name} (sm{capability[0]}{capability[1]}) has no "
                      "float8 tensor cores (Ada sm89, Hopper sm90 or newer)")
    return {"possible": why is None, "torchao": version, "why": why}


def quantize_unet(unet, adapters=(), min_features: int | None = None) -> list[str]:
    """Fold `adapters` (LoRA adapters on the UNet, already weighted by set_adapters) into its weights,
    then quantize the chosen layers in place; the names quantized.

    torchao's row-wise float8 takes bfloat16 weights only, and torch's row-wise scaled GEMM on CUDA
    (CUTLASS's kernel on Ada, and on Hopper below cuBLAS 12.9) writes bfloat16 results only; torchao
    asks it for the activations' dtype. So a float16 model's chosen layers become bfloat16 islands
    (Float8Linear16): their input is cast to bfloat16 before its float8 quantization, their result back
    to float16. Everything else (convolutions, norms, attention itself, the text encoders, the VAE)
    runs as without fp8, so that `spo eval --columns spo,spo@fp8` measures the float8 GEMMs alone."""
    import torch
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    # A LoRA with no UNet weights (text encoders only) has no adapter here to fold.
    adapters = [a for a in adapters if a in (getattr(unet, "peft_config", None) or {})]
    if adapters:
        unet.fuse_lora(lora_scale=1.0, adapter_names=adapters)
        unet.unload_lora()
    # A weight row of zeros would get a scale of 0 and quantize to 0/0 = NaN: such a layer stays as it is.
    names = [n for n, m in unet.named_modules() if type(m) is torch.nn.Linear
             and chosen(n, m.in_features, m.out_features, min_features)
             and bool(m.weight.detach().abs().amax(dim=1).gt(0).all())]
    if not names:
        return []
    island = unet.dtype != torch.bfloat16
    picked = set(names)
    for name in names:
        unet.get_submodule(name).to(torch.bfloat16)
    config = Float8DynamicActivationFloat8WeightConfig(
        granularity=PerRow(),
        # An activation row of zeros likewise: SDXL's unconditional branch without a negative prompt is
        # zero text embeddings, which every cross-attention's to_k and to_v take. A floor under each
        # row's max |x| makes its scale tiny, not 0, and the row quantizes to zeros; no real row is that small.
        activation_value_lb=1e-12,
        # torchao would otherwise turn on coordinate-descent tuning and other inductor settings for the
        # whole process, changing how --fast compiles every model in it.
        set_inductor_config=False)
    quantize_(unet, config, filter_fn=lambda module, fqn: fqn in picked)
    if island:
        for name in names:
            unet.get_submodule(name).__class__ = island_class()
    return names


def apply(pipe, adapters=()) -> tuple:
    """Quantize a loaded pipeline's UNet (its LoRA `adapters` folded in first); the adapters left on
    it: none. The names quantized are kept on the UNet, for tests and the curious."""
    pipe.unet.spo_fp8_layers = quantize_unet(pipe.unet, adapters)
    return ()


def torchao_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torchao")
    except PackageNotFoundError:
        return None


_ISLAND = []


def island_class():
    """Float8Linear16, made on first use (it needs torch, which importing this module must not)."""
    if not _ISLAND:
        import torch

        class Float8Linear16(torch.nn.Linear):
            """A float8 linear layer in a model that is not bfloat16 (see quantize_unet)."""

            def forward(self, x):
                # The bias too: the scaled GEMM adds it in the output's dtype, and a later
                # .to(float16) of the model (diffusers' from_pipe) casts it back.
                bias = None if self.bias is None else self.bias.to(torch.bfloat16)
                return torch.nn.functional.linear(x.to(torch.bfloat16), self.weight, bias).to(x.dtype)

        _ISLAND.append(Float8Linear16)
    return _ISLAND[0]
