from __future__ import annotations

from spo_cli import presets
from spo_cli.cli import app, options as o, session
from spo_cli.cli.ui import UI
from spo_cli.errors import SpoError
from spo_cli.jobs import ModelRequest

EXAMPLES = """[bold]Examples[/]

  spo models

  spo models --json
"""


def cache_state(name: str) -> dict:
    """Whether everything `name` needs in float16 (GPU) and float32 (CPU) is in the local cache."""
    from spo_cli.resolve import resolve

    state = {}
    for dtype in ("float16", "float32"):
        try:
            resolved = resolve(ModelRequest(model=name), dtype, local_only=True)
            state[dtype] = {"cached": True, "bytes": resolved.nbytes(), "commit": resolved.pipeline.commit}
        except SpoError:
            state[dtype] = {"cached": False}
    return state


@app.command(epilog=EXAMPLES)
def models(json_: o.Json = False, quiet: o.Quiet = False, debug: o.Debug = False) -> None:
    """List the model presets, their repos, and whether each is already in the local cache."""
    ui = UI(quiet=quiet, json_mode=json_, debug=debug)
    with session.handled(ui):
        rows = []
        for p in presets.PRESETS.values():
            rows.append({
                "name": p.name, "repo": p.repo_id, "lora_repo": p.lora_repo, "lora_file": p.lora_file,
                "description": p.description, "default": p.name == presets.DEFAULT_PRESET,
                "cache": cache_state(p.name),
            })
        if json_:
            ui.emit_json(rows)
            return

        def show(c: dict) -> str:
            return f"[green]yes[/] ({c['bytes'] / 1e9:.1f} GB)" if c["cached"] else "[dim]no[/]"

        ui.table(
            "Model presets (cached: everything the preset needs is in the Hugging Face cache)",
            ["preset", "weights", "cached fp16", "cached fp32", "about"],
            [[r["name"] + (" (default)" if r["default"] else ""),
              r["repo"] + (f"\n+ {r['lora_repo']}" if r["lora_repo"] else ""),
              show(r["cache"]["float16"]), show(r["cache"]["float32"]), r["description"]] for r in rows],
        )
        if not quiet:
            ui.info("Any Hub repo id or local diffusers folder also works with --model; "
                    "`spo download PRESET` fetches a preset for offline use.")
