from __future__ import annotations

from spo_cli import presets
from spo_cli.cli import app
from spo_cli.cli.command import command
from spo_cli.cli.ui import UI
from spo_cli.errors import SpoError
from spo_cli.request import ModelRequest

EXAMPLES = """[bold]Examples[/]

  spo models

  spo models --json
"""
JSON_HELP = ("Print a JSON array of the presets on stdout (name, repos, LoRA file, and per dtype whether it is "
             "cached, its size and commit), nothing else.")


def cache_state(name: str) -> dict:
    """Whether everything `name` needs in float16 (GPU) and float32 (CPU) is in the local cache, whole."""
    from spo_cli.resolve import quiet_hub, resolve_model

    quiet_hub()
    state = {}
    for dtype in ("float16", "float32"):
        try:
            resolved = resolve_model(ModelRequest(model=name), dtype, local_only=True)
            state[dtype] = {"cached": True, "bytes": resolved.nbytes(), "commit": resolved.pipeline.commit}
        except SpoError as e:
            state[dtype] = {"cached": False, "damaged": "damaged" in e.message}
    return state


@command(app, examples=EXAMPLES, json_help=JSON_HELP)
def models(ui: UI) -> None:
    """List the model presets, their repos, and whether each is already in the local cache."""
    rows = []
    for p in presets.PRESETS.values():
        rows.append({
            "name": p.name, "repo": p.repo_id, "lora_repo": p.lora_repo, "lora_file": p.lora_file,
            "description": p.description, "default": p.name == presets.DEFAULT_PRESET,
            "cache": cache_state(p.name),
        })
    if ui.json_mode:
        ui.emit_json(rows)
        return

    def show(c: dict) -> str:
        if c["cached"]:
            return f"[green]{c['bytes'] / 1e9:.1f} GB[/]"
        return "[red]damaged[/]" if c.get("damaged") else "[dim]no[/]"

    # Repo ids one a line, each whole (they are copied into commands), with the description under
    # them: beside them, it left too little room at 80 columns and the ids were broken mid-word.
    ui.table(
        "Model presets (cached: all a preset needs is in the HF cache, with its size)",
        ["preset", "weights", "cached fp16", "cached fp32"],
        [[r["name"] + (" (default)" if r["default"] else ""),
          "\n".join([r["repo"], *([r["lora_repo"]] if r["lora_repo"] else []), f"[dim]{r['description']}[/]"]),
          show(r["cache"]["float16"]), show(r["cache"]["float32"])] for r in rows],
    )
    if not ui.quiet:
        ui.info("Any Hub repo id or local diffusers folder also works with --model; "
                "`spo download PRESET` fetches a preset for offline use"
                + (" (`--force` repairs a damaged copy)." if any(
                    c.get("damaged") for r in rows for c in r["cache"].values()) else "."))
