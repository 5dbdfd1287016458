from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from time import perf_counter

import typer

from spo_cli import presets
from spo_cli.cli import app, loading, options as opts
from spo_cli.cli.command import command
from spo_cli.cli.models import cache_state
from spo_cli.cli.ui import UI, escape
from spo_cli.errors import EXIT_FAILURE
from spo_cli.request import RunOptions

EXAMPLES = """[bold]Examples[/]

  spo doctor

  spo doctor --device cpu --json
"""
JSON_HELP = ("Print the report as a JSON object on stdout (versions, device and memory, Hub, cache and presets, "
             "smoke test, problems, next step), nothing else.")
HF_VARS = ("HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_ENDPOINT")


def smoke_test(engine_mod, device: str, dtype: str) -> dict:
    """Two denoising steps through a tiny random SDXL built in memory: exercises torch, diffusers and
    the device end to end with no download."""
    from spo_cli import tiny
    from spo_cli.request import ImageRequest

    with tempfile.TemporaryDirectory() as tmp:
        pipe = tiny.build_pipeline(Path(tmp))
    pipe.to(device, engine_mod.TORCH_DTYPES[dtype])
    eng = engine_mod.Engine(pipe, device, dtype)
    t0 = perf_counter()
    [res] = eng.run([ImageRequest(prompt="a lighthouse in a storm", seed=0, steps=2, width=64, height=64)])
    return {"ok": not res.nan, "seconds": round(perf_counter() - t0, 3), "size": list(res.image.size)}


def host_ram_gib() -> tuple[float | None, float | None]:
    """(total, available) host memory, from /proc/meminfo where there is one."""
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        kib = {k: int(v.split()[0]) for k, v in info.items() if k in ("MemTotal", "MemAvailable")}
        return kib["MemTotal"] / 2**20, kib["MemAvailable"] / 2**20
    except (OSError, KeyError, ValueError):
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, None
        except (ValueError, OSError, AttributeError):
            return None, None


@command(app, examples=EXAMPLES, json_help=JSON_HELP)
def doctor(ui: UI, device: opts.Device = "auto", dtype: opts.Dtype = "auto") -> None:
    """Check this machine: versions, device and memory, the Hub, cached models and disk, then a tiny smoke
    generation; end with the one next step that matters. Exit 1 when spo cannot make an image here."""
    # A bad SPO_SDPA_BACKENDS makes every command that loads a model refuse: a problem to report, not a
    # reason for the doctor to refuse too. The doctor's own checks and smoke test run without it.
    from spo_cli import speed
    from spo_cli.errors import UsageError

    try:
        speed.sdpa_order()
    except UsageError as e:
        saved = os.environ.pop(speed.SDPA_ENV)
        try:
            return _doctor(ui, device, dtype, [e.paragraph()])
        finally:
            os.environ[speed.SDPA_ENV] = saved
    return _doctor(ui, device, dtype, [])


def _doctor(ui: UI, device: str, dtype: str, problems: list[str]) -> None:
    request, _ = opts.model_request(model=presets.DEFAULT_PRESET, dtype=dtype, device=device)
    runtime = loading.start_torch(ui, request, RunOptions())
    loading.libraries(ui, runtime)
    engine_mod, picked, picked_dtype = runtime.engine, runtime.device, runtime.dtype
    import torch
    from huggingface_hub import constants

    from spo_cli.resolve import hub_endpoint, unreachable

    # `problems`: things that stop spo from making an image here
    advice: list[str] = []  # things that make it slower or riskier
    report: dict = {"versions": engine_mod.versions(), "device": picked, "dtype": picked_dtype}

    # Device and memory.
    report["cuda"] = {"available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda}
    if picked.startswith("cuda"):
        idx = torch.device(picked).index or 0
        free, total = torch.cuda.mem_get_info(idx)
        report["cuda"].update(name=torch.cuda.get_device_name(idx), vram_total_gb=round(total / 2**30, 2),
                              vram_free_gb=round(free / 2**30, 2))
        free_gib = free / 2**30
        if free_gib < presets.PEAK_VRAM_GIB[None]:
            fits = [m for m in ("model", "sequential") if presets.PEAK_VRAM_GIB[m] < free_gib]
            (advice if fits else problems).append(
                f"{free_gib:.1f} GiB of GPU memory is free; a 1024² image needs about "
                f"{presets.PEAK_VRAM_GIB[None]:.1f} GiB" + (f": use --offload {fits[0]}" if fits else
                                                            ", more than any --offload mode brings it down to"))
    elif picked == "cpu":
        advice.append("No GPU: a full-size image takes many minutes on the CPU.")
    from spo_cli import quantize

    cuda_here = picked.startswith("cuda")
    report["fp8"] = quantize.here(picked, torch.cuda.get_device_capability(picked) if cuda_here else None,
                                  report["cuda"].get("name"))
    report["mps"] = {"available": torch.backends.mps.is_available()}
    total_ram, avail_ram = host_ram_gib()
    report["host_ram_gb"] = {"total": total_ram and round(total_ram, 1), "available": avail_ram and round(avail_ram, 1)}
    if avail_ram is not None and avail_ram < presets.PEAK_HOST_RAM_GIB:
        advice.append(f"{avail_ram:.1f} GiB of host memory is available; loading SDXL takes about "
                      f"{presets.PEAK_HOST_RAM_GIB:.0f} GiB.")

    # The Hub and the cache.
    cache = Path(constants.HF_HUB_CACHE)
    probe = cache if cache.exists() else next(p for p in cache.parents if p.exists())
    if constants.HF_HUB_OFFLINE:
        hub = "offline by setting (HF_HUB_OFFLINE)"
        reachable = False
    else:
        with ui.status(f"Reaching the Hub at {hub_endpoint()}"):
            why = unreachable()
        reachable = why is None
        hub = "reachable" if reachable else f"unreachable: {why}"
    states = {name: cache_state(name) for name in presets.PRESETS}
    report["hub"] = {"endpoint": hub_endpoint(), "status": hub, "reachable": reachable}
    report["cache"] = {
        "dir": str(cache), "free_disk_gb": round(shutil.disk_usage(probe).free / 1e9, 1),
        # Whether a token is configured, never the token itself.
        "token": bool(os.environ.get("HF_TOKEN") or Path(constants.HF_TOKEN_PATH).exists()),
        "env": {k: os.environ[k] for k in HF_VARS if k in os.environ},
        "presets": states,
    }
    usable = [n for n, st in states.items() if st[picked_dtype if picked_dtype != "bfloat16" else "float32"]["cached"]]
    damaged = [n for n, st in states.items() if any(s.get("damaged") for s in st.values())]
    if damaged:
        problems.append(f"The cached copy of {', '.join(damaged)} is damaged: run `spo download {damaged[0]} --force`.")
    flag = "" if picked_dtype == "float16" else " --dtype fp32"
    if not usable and not reachable:
        problems.append(f"No preset is cached for {picked_dtype} and the Hub cannot be reached ({hub}), so there is "
                        "no model to run.")
    if reachable and report["cache"]["free_disk_gb"] < 8:
        advice.append(f"{report['cache']['free_disk_gb']} GB free in the cache's disk; SPO-SDXL takes about 7 GB.")

    with ui.status(f"Smoke test: tiny random SDXL on {picked} ({picked_dtype})"):
        report["smoke_test"] = smoke_test(engine_mod, picked, picked_dtype)
    if not report["smoke_test"]["ok"]:
        problems.append(f"The smoke test produced NaN on {picked} in {picked_dtype}: try --dtype fp32, and check "
                        "the GPU driver.")

    if problems:
        step = ("On a machine with network access and the same HF_HOME, run `spo download spo" + flag + "`; or fix the "
                "network, proxy or HF_ENDPOINT." if not usable and not reachable else problems[0])
    elif not usable:
        step = f"`spo download spo{flag}` (about 7 GB), or just run `spo generate`, which downloads it first."
    else:
        model = "spo" if "spo" in usable else usable[0]
        step = f'spo generate "a child and a penguin sitting on the moon"{"" if model == "spo" else " --model " + model}'
    report.update(problems=problems, advice=advice, next_step=step)

    if ui.json_mode:
        ui.emit_json(report)
    else:
        v, cuda = report["versions"], report["cuda"]
        rows = [
            ["spo-cli", v["spo-cli"]], ["python", v["python"]],
            ["torch", f"{v['torch']} ({'CUDA ' + cuda['torch_cuda'] if cuda['torch_cuda'] else 'CPU-only build'})"],
            ["diffusers", v["diffusers"]], ["transformers", v["transformers"]],
            ["huggingface_hub", v["huggingface_hub"]], ["device", f"{picked} ({picked_dtype})"],
        ]
        if "name" in cuda:
            rows.append(["GPU", f"{cuda['name']}: {cuda['vram_free_gb']} GB free of {cuda['vram_total_gb']} GB"])
        if total_ram is not None:
            rows.append(["host memory", f"{report['host_ram_gb']['available'] or '?'} GB available of "
                                        f"{report['host_ram_gb']['total']} GB"])
        c = report["cache"]
        rows += [["Hub", f"{hub_endpoint()}: {hub}"], ["free disk", f"{c['free_disk_gb']} GB in the HF cache (below)"],
                 ["HF token", "configured" if c["token"] else "none (only needed for gated/private repos)"]]
        for name, st in states.items():
            have = [d.replace("float", "fp") for d, s in st.items() if s["cached"]]
            bad = [d.replace("float", "fp") for d, s in st.items() if s.get("damaged")]
            rows.append([f"preset {name}", ("cached: " + ", ".join(have) if have else "not cached")
                         + (f" ([red]damaged: {', '.join(bad)}[/])" if bad else "")])
        f = report["fp8"]
        rows.append(["--quantize fp8", f"possible (torchao {f['torchao']})" if f["possible"] else
                     f"not here: {escape(f['why'])}"])
        s = report["smoke_test"]
        rows.append(["smoke test", f"[green]ok[/] in {s['seconds']} s" if s["ok"] else "[red]NaN output[/]"])
        ui.table("spo doctor", ["check", "result"], rows)
        ui.paths([(c["dir"], "the Hugging Face cache (HF_HUB_CACHE)")])
        for a in advice:
            ui.warn(a)
        for p in problems:
            ui.error(p)
        if not ui.quiet:
            ui.info(f"[bold]Next step:[/] {escape(step)}")
    if problems:
        raise typer.Exit(EXIT_FAILURE)  # the problems are printed above (or in the JSON)
