"""Preference scorers: which models each metric needs, and how its authors compute it.

Pure data (no torch): the command line checks `--metric` and plans downloads from this table
before anything heavy is imported. The models themselves live in `scores.models`.
"""

from __future__ import annotations

from dataclasses import dataclass

CLIP_H = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
CLIP_L = "openai/clip-vit-large-patch14"
PICKSCORE = "yuvalkirstain/PickScore_v1"
HPSV2 = "xswu/HPSv2"
IMAGEREWARD = "THUDM/ImageReward"
BERT = "google-bert/bert-base-uncased"
AESTHETIC = "camenduru/improved-aesthetic-predictor"  # a copy of the LAION GitHub release's file

HPS_FILES = {"v2.1": "HPS_v2.1_compressed.pt", "v2.0": "HPS_v2_compressed.pt"}
AESTHETIC_FILE = "sac+logos+ava1-l14-linearMSE.pth"

# The files a transformers CLIP processor reads (whichever of them a repo has: slow or fast tokenizer).
PROCESSOR_FILES = ("preprocessor_config.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "tokenizer.json")
BERT_FILES = ("tokenizer_config.json", "vocab.txt", "tokenizer.json", "special_tokens_map.json")


@dataclass(frozen=True)
class Source:
    """One Hub repo and the files taken from it. `required` must all exist; of `optional`, those
    the repo has are fetched too (tokenizer files come in slow and fast flavours)."""

    repo: str
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()


# The towers run in the run's dtype (float16 on a GPU, float32 on the CPU); what turns their
# embeddings into the number always runs in float32: float16's steps (~0.016 at PickScore's ~22)
# are as large as the differences between models of one size.
_TOWERS = "towers in the run's dtype (float16 on a GPU, float32 on the CPU)"


@dataclass(frozen=True)
class Metric:
    name: str
    title: str
    sources: tuple[Source, ...]
    reference: str  # whose code the number reproduces (the eval report's scorer table)
    paper: str  # what the SPO paper reports for SDXL → SPO-SDXL, for orientation
    precision: str  # where float16 may enter and where it may not (the eval report's scorer table)


def _clip_repo(repo: str, weights: bool) -> Source:
    return Source(repo, ("config.json",) + (("model.safetensors",) if weights else ()), PROCESSOR_FILES)


def metric_table(hps_version: str = "v2.1") -> dict[str, Metric]:
    return {m.name: m for m in (
        Metric("pickscore", "PickScore", (_clip_repo(PICKSCORE, True), _clip_repo(CLIP_H, False)),
               "PickScore README: logit_scale.exp() · cos(text, image)", "21.95 → 23.06",
               f"{_TOWERS}; normalisation and the logit-scaled dot in float32"),
        Metric("hpsv2", f"HPS {hps_version}", (Source(HPSV2, (HPS_FILES[hps_version],)), _clip_repo(CLIP_H, False)),
               "HPSv2 img_score.py: image_features @ text_features.T (OpenCLIP ViT-H-14)", "26.95 → 31.80 (×100)",
               f"{_TOWERS}; normalisation and the dot in float32"),
        Metric("imagereward", "ImageReward", (Source(IMAGEREWARD, ("ImageReward.pt", "med_config.json")),
                                              Source(BERT, ("vocab.txt",), BERT_FILES)),
               "ImageReward.score: BLIP reward, (r − 0.16717) / 1.03334", "0.538 → 1.080",
               f"{_TOWERS}; the reward MLP and its normalisation in float32"),
        Metric("aesthetic", "Aesthetic", (_clip_repo(CLIP_L, True), Source(AESTHETIC, (AESTHETIC_FILE,))),
               "LAION improved-aesthetic-predictor simple_inference.py", "5.950 → 6.364",
               f"{_TOWERS}; the L2 normalisation and the MLP in float32"),
        Metric("clip", "CLIP score", (_clip_repo(CLIP_L, True),),
               "torchmetrics CLIPScore: max(100 · cos(image, text), 0)", "—",
               f"{_TOWERS}; normalisation and 100 · cos in float32"),
    )}


METRICS = tuple(metric_table())
HPS_VERSIONS = tuple(HPS_FILES)
DEFAULT_METRICS = METRICS
