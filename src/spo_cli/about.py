"""What `spo` is and which commands it has: the one table that both the instant top-level help
(`usage`) and typer's app (`cli`) read, so that neither imports the other to get it."""

from __future__ import annotations

ABOUT = "SPO-SDXL from the terminal: SDXL fine-tuned with Step-aware Preference Optimization."
EXAMPLES = (
    'spo generate "a child and a penguin sitting on the moon"',
    "spo batch examples/prompts.txt --out runs/spo --num-images 4 --batch-size 4",
    'spo compare "a lighthouse in a storm" --base --spo',
    "spo models",
    "spo download spo-lora",
    "spo doctor",
)
# (name, the first sentence of its docstring), in the order the help lists them.
COMMANDS = (
    ("generate", "Generate images from a prompt and write each with a JSON sidecar of its settings."),
    ("batch", "Run a whole prompt file with the model loaded once; resumable, and sharded under torchrun."),
    ("compare", "Render the same prompts and seeds through several models or SPO strengths, side by side."),
    ("replay", "Make a recorded image again, from the same commits; a Sampling or Model option replaces the recorded value."),
    ("inspect", "Show what image files say about how they were made: the recorded recipe and the provenance "
                "marks."),
    ("score", "Score images with preference models (PickScore, HPSv2, ImageReward, aesthetic, CLIP)."),
    ("eval", "Generate a prompt file with several models and score it: means, paired win rates, a plot, a report."),
    ("serve", "Keep SPO-SDXL loaded and serve it over HTTP: OpenAI- and A1111-compatible APIs, and a page."),
    ("models", "List the model presets, their repos, and whether each is already in the local cache."),
    ("download", "Fetch everything a model needs into the Hugging Face cache, for later offline use."),
    ("doctor", "Check this machine: versions, device and memory, the Hub, cached models and disk, then a "
               "tiny smoke generation; end with the one next step that matters."),
)
OPTIONS = (("--version", "Show the version and exit."), ("-h, --help", "Show this message and exit."))
