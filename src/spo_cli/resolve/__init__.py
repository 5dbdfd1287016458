"""Where the weights come from: presets, Hub repos and local folders, resolved to local files.

Everything goes through huggingface_hub, so HF_HOME, HF_HUB_CACHE, HF_TOKEN, HF_HUB_OFFLINE and
HF_ENDPOINT behave as in every Hugging Face tool and the cache is shared with them. Only the files
the pipeline will load are fetched: the safetensors of the chosen variant and the small config and
tokenizer files, never `.bin`, ONNX, OpenVINO, Flax or single-file checkpoints.

- `hub`: Hub access (downloads into the cache, reachability, the messages for what is not there);
- `files`: which files are read (allow-lists, variants), model_index.json checks, integrity;
- `parts`: each part alone (pipeline, VAE, LoRA, a scorer's files, a dataset), Hub or local;
- `single`: a single-file checkpoint (`--model file.safetensors`): its header checked (SDXL only),
  SDXL base's configs for it, its SHA-256 (A1111's Model hash), cached;
- `model`: a `ModelRequest` → its parts (`resolve_model`), and what is refused before the Hub.

No torch here, nor diffusers: a missing or damaged model is named before either is imported.
"""

from spo_cli.resolve.files import select_pipeline_files, select_vae_files, variant_of
from spo_cli.resolve.hub import Fetch, hub_endpoint, quiet_hub, unreachable
from spo_cli.resolve.model import ResolvedModel, precheck, resolve_model, uses_hub
from spo_cli.resolve.parts import Resolved, resolve_dataset, resolve_files

__all__ = [
    "Fetch", "Resolved", "ResolvedModel", "hub_endpoint", "precheck", "quiet_hub",
    "resolve_dataset", "resolve_files", "resolve_model", "select_pipeline_files", "select_vae_files",
    "unreachable", "uses_hub", "variant_of",
]
