from __future__ import annotations

from typing import Annotated

import typer

from spo_cli import presets
from spo_cli.cli import app, options as o, session
from spo_cli.cli.ui import UI
from spo_cli.errors import UsageError
from spo_cli.jobs import ModelRequest

EXAMPLES = """[bold]Examples[/]

  spo download                  # the default preset, for a GPU (float16)

  spo download spo-lora

  spo download base --dtype fp32  # the files a CPU run loads

  HF_HOME=/shared/hf spo download spo   # into a shared cache
"""


@app.command(epilog=EXAMPLES)
def download(
    model: Annotated[str, typer.Argument(help="Preset, Hub repo id (diffusers layout).")] = presets.DEFAULT_PRESET,
    revision: o.Revision = None,
    lora: o.Lora = None,
    lora_file: o.LoraFile = None,
    vae: o.Vae = None,
    dtype: Annotated[str, typer.Option(help="fp16 (GPU runs) or fp32 (CPU runs): decides which weight "
                                       "files and VAE are fetched.")] = "fp16",
    json_: o.Json = False,
    quiet: o.Quiet = False,
    debug: o.Debug = False,
) -> None:
    """Fetch everything a model needs into the Hugging Face cache, for later offline use."""
    ui = UI(quiet=quiet, json_mode=json_, debug=debug)
    with session.handled(ui):
        dtype = presets.DTYPES.get(dtype, dtype)
        if dtype not in ("float16", "bfloat16", "float32"):
            raise UsageError(f"Unknown --dtype '{dtype}'.", "Use fp16, bf16 or fp32.")
        from spo_cli.resolve import resolve

        if not quiet:
            from huggingface_hub import constants

            ui.info(f"Cache: {constants.HF_HUB_CACHE}")
        resolved = resolve(ModelRequest(model=model, revision=revision, lora=lora, lora_file=lora_file, vae=vae),
                           dtype, tqdm=ui.download_tqdm)
        parts = resolved.parts()
        rows = [{"id": p.id, "file": p.file, "commit": p.commit, "variant": p.variant, "path": str(p.path)}
                for p in parts]
        if json_:
            ui.emit_json({"model": model, "dtype": dtype, "bytes": resolved.nbytes(), "repos": rows})
            return
        ui.table(f"{model}: ready for offline use ({resolved.nbytes() / 1e9:.2f} GB)", ["repo", "commit", "path"],
                 [[r["id"] + (f" / {r['file']}" if r["file"] else ""), (r["commit"] or "-")[:12], r["path"]]
                  for r in rows])
