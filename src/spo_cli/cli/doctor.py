from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from time import perf_counter

from spo_cli.cli import app, options as o, session
from spo_cli.cli.models import cache_state
from spo_cli.cli.ui import UI
from spo_cli import presets

EXAMPLES = """[bold]Examples[/]

  spo doctor

  spo doctor --device cpu --json
"""

HF_VARS = ("HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_ENDPOINT")


def smoke_test(engine_mod, device: str, dtype: str) -> dict:
    """Two denoising steps through a tiny random SDXL built in memory: exercises torch, diffusers and
    the device end to end with no download."""
    from spo_cli import tiny
    from spo_cli.jobs import ImageRequest

    with tempfile.TemporaryDirectory() as tmp:
        pipe = tiny.build_pipeline(Path(tmp))
    pipe.to(device, engine_mod.TORCH_DTYPES[dtype])
    eng = engine_mod.Engine(pipe, device, dtype)
    t0 = perf_counter()
    [res] = eng.run([ImageRequest(prompt="a lighthouse in a storm", seed=0, steps=2, width=64, height=64)])
    return {"ok": not res.nan, "seconds": round(perf_counter() - t0, 3), "size": list(res.image.size)}


@app.command(epilog=EXAMPLES)
def doctor(device: o.Device = "auto", dtype: o.Dtype = "auto", json_: o.Json = False, quiet: o.Quiet = False,
           debug: o.Debug = False) -> None:
    """Check this machine: versions, device and memory, cache and disk, then a tiny smoke generation."""
    ui = UI(quiet=quiet, json_mode=json_, debug=debug)
    with session.handled(ui):
        with ui.status("Starting PyTorch"):
            from spo_cli import engine as engine_mod

            engine_mod.quiet_libraries(debug)
            import torch
            from huggingface_hub import constants

            picked, notes = engine_mod.pick_device(device)
            picked_dtype = engine_mod.pick_dtype(picked, dtype)
        report = {"versions": engine_mod.versions(), "device": picked, "dtype": picked_dtype, "notes": notes}
        report["cuda"] = {"available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda}
        if torch.cuda.is_available():
            idx = torch.device(picked).index or 0 if picked.startswith("cuda") else 0
            free, total = torch.cuda.mem_get_info(idx)
            report["cuda"].update(name=torch.cuda.get_device_name(idx), vram_total_gb=round(total / 2**30, 2),
                                  vram_free_gb=round(free / 2**30, 2))
        report["mps"] = {"available": torch.backends.mps.is_available()}
        cache = Path(constants.HF_HUB_CACHE)
        probe = cache if cache.exists() else next(p for p in cache.parents if p.exists())
        report["cache"] = {
            "dir": str(cache), "free_disk_gb": round(shutil.disk_usage(probe).free / 1e9, 1),
            "offline": bool(constants.HF_HUB_OFFLINE),
            # Whether a token is configured, never the token itself.
            "token": bool(os.environ.get("HF_TOKEN") or Path(constants.HF_TOKEN_PATH).exists()),
            "env": {k: os.environ[k] for k in HF_VARS if k in os.environ},
            "presets": {name: cache_state(name) for name in presets.PRESETS},
        }
        with ui.status(f"Smoke test: tiny random SDXL on {picked} ({picked_dtype})"):
            report["smoke_test"] = smoke_test(engine_mod, picked, picked_dtype)

        if json_:
            ui.emit_json(report)
        else:
            v = report["versions"]
            cuda = report["cuda"]
            rows = [
                ["spo-cli", v["spo-cli"]], ["python", v["python"]], ["torch", f"{v['torch']} ({'CUDA ' + cuda['torch_cuda'] if cuda['torch_cuda'] else 'CPU-only build'})"],
                ["diffusers", v["diffusers"]], ["transformers", v["transformers"]],
                ["huggingface_hub", v["huggingface_hub"]],
                ["device", f"{picked} ({picked_dtype})"],
            ]
            if "name" in cuda:
                rows.append(["GPU", f"{cuda['name']}: {cuda['vram_free_gb']} GB free of {cuda['vram_total_gb']} GB"])
            c = report["cache"]
            rows += [["HF cache", c["dir"]], ["free disk", f"{c['free_disk_gb']} GB"],
                     ["offline", "yes (HF_HUB_OFFLINE)" if c["offline"] else "no"],
                     ["HF token", "configured" if c["token"] else "none (only needed for gated/private repos)"]]
            for name, st in c["presets"].items():
                have = [d.replace("float", "fp") for d, s in st.items() if s["cached"]]
                rows.append([f"preset {name}", "cached: " + ", ".join(have) if have else "not cached"])
            s = report["smoke_test"]
            rows.append(["smoke test", f"[green]ok[/] in {s['seconds']} s" if s["ok"] else "[red]NaN output[/]"])
            ui.table("spo doctor", ["check", "result"], rows)
            for n in notes:
                ui.warn(n)
        if not report["smoke_test"]["ok"]:
            from spo_cli.errors import GenerationError

            raise GenerationError(f"The smoke test produced NaN on {picked} in {picked_dtype}.",
                                  "Try --dtype fp32, and check the GPU driver.")
