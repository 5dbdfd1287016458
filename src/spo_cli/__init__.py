"""spo-cli: SPO-SDXL (Step-aware Preference Optimization) from the terminal."""

__version__ = "0.1.0"
