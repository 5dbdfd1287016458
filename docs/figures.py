"""What the docs' figure scripts share: the tiny random-weight models the tests use, in a temporary
offline Hugging Face cache, for `spo` run in this process."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def tiny_offline_cache() -> Iterator[Path]:
    """A scratch folder whose `hub/` holds the tiny repos under the real repo ids; the HF variables point
    at it (set before huggingface_hub is imported: it reads them at import). Removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="spo-figure-"))
    try:
        os.environ.update(HF_HOME=str(root / "hf-home"), HF_HUB_CACHE=str(root / "hub"), HF_HUB_OFFLINE="1",
                          HF_HUB_DISABLE_TELEMETRY="1", XDG_CACHE_HOME=str(root / "cache"))
        from spo_cli import tiny

        for repo, src in tiny.save_repos(root / "repos").items():
            tiny.add_to_cache(root / "hub", repo, src)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)
