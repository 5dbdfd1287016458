"""`spo eval --paper`: the SPO paper's evaluation as closely as the public record allows.

Pure data and the prompt reader (pyarrow, imported when the prompts are read). Everything the
paper did not state, or that spo cannot do the same way, is written down in `ASSUMPTIONS` and
lands in the report.
"""

from __future__ import annotations

from pathlib import Path

from spo_cli import presets

DATASET = "yuvalkirstain/pickapic_v1_no_images"
SPLIT = "validation_unique"
# `push_to_hub` names a split's shards data/<split>-00000-of-00001-<hash>.parquet.
PATTERN = f"*{SPLIT}-*.parquet"
COLUMN = "caption"

SEED = 42
# The authors' inference script: the merged checkpoint in float16, its own scheduler, the pipeline's
# defaults (50 steps, 1024²), guidance 5.0, the fp16-fix VAE, no negative prompt, the prompt as it is
# (diffusers' encoding, cut at 77 tokens), a CUDA generator seeded 42 for each prompt.
SETTINGS = {
    "guidance": presets.DEFAULT_GUIDANCE,
    "steps": presets.DEFAULT_STEPS,
    "scheduler": "default",
    "width": presets.DEFAULT_SIZE,
    "height": presets.DEFAULT_SIZE,
    "negative_prompt": None,
    "prompt_syntax": "plain",
    "seeds": [SEED],
    "vae": presets.FP16_FIX_VAE,
}

ASSUMPTIONS = [
    f"Prompts: the '{COLUMN}' column of Pick-a-Pic v1 '{SPLIT}' ({DATASET}), in file order, exact "
    "duplicates removed (the split is meant to hold each caption once), empty captions dropped.",
    "Settings from the authors' inference script (RockeyCoss/SPO inference_scripts/inference_spo_sdxl.py): "
    "guidance 5.0, the checkpoint's own scheduler and the pipeline's default 50 steps at 1024×1024, "
    f"the VAE {presets.FP16_FIX_VAE}, no negative prompt, one image per prompt from a generator seeded {SEED}.",
    "The paper does not say how it encoded prompts past 77 tokens; spo reads them as diffusers does "
    "(prompt syntax 'plain': cut at 77 tokens), which is what the authors' script does.",
    "The generator is a CUDA one when the run is on CUDA, as in the authors' script (CUDA noise differs "
    "from CPU noise for the same seed); elsewhere it is the CPU generator.",
    "The SDXL row uses stabilityai/stable-diffusion-xl-base-1.0 with the same settings and VAE; the paper "
    "does not publish its baseline script.",
    "A later public harness (Kwai-Kolors/LPO evaluation/general_score_pap_val.py) differs: it streams "
    "validation_unique from pickapic-anonymous/pickapic_v1 (the Pick-a-Pic v1 release with its images; spo "
    f"reads the captions from {DATASET} and assumes they are the same), renders with DDIM, 20 steps and "
    "guidance 5.0, 4 images per prompt from one generator seeded 42 per prompt, and scores only the first of "
    "the four (it zips each prompt with the prompt's images). spo follows the authors' own script instead; "
    "--scheduler ddim --steps 20 --seeds 42 is the close variant (close, not identical: spo gives each image "
    "its own generator).",
]


def captions(paths: list[Path]) -> list[tuple[int, str]]:
    """The split's captions with their row numbers (from 1, across the shards in order), exact
    duplicates and empty ones removed."""
    import pyarrow.parquet as pq

    seen: dict[str, int] = {}
    row = 0
    for path in paths:
        for text in pq.read_table(path, columns=[COLUMN]).column(COLUMN).to_pylist():
            row += 1
            if isinstance(text, str) and text.strip():
                seen.setdefault(text, row)
    return [(n, text) for text, n in seen.items()]
