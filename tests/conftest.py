"""Test set-up: tiny random SDXL repos under the real repo ids, in a private offline HF cache.

The environment is fixed before huggingface_hub is imported anywhere (it reads HF_* variables at
import), so in-process tests and `spo` subprocesses resolve models through the same code path a
user's machine takes, with no network.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# Test modules import their helpers both as `conftest` (beside them) and as `tests.conftest` (from the
# repository root): one module under both names, or the second import would run this file again, point
# HF_HUB_CACHE at a second, empty cache, and leave a subprocess environment taken before it on the first.
if __name__ == "conftest":
    sys.modules.setdefault("tests.conftest", sys.modules[__name__])

# Under pytest-xdist each worker gets its share of the cores; spo subprocesses inherit the setting.
# torch's default is all of them, and OpenMP threads that outnumber the cores spin-wait on each
# other: two workers of two threads on two cores ran the pipeline tests 10 times slower. Set
# unconditionally: a worker inherits the controller's environment, which may already have a value.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
if _WORKERS:
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = str(max(1, (os.cpu_count() or 1) // _WORKERS))

_ROOT = Path(tempfile.mkdtemp(prefix="spo-tests-"))
os.environ.update(
    HF_HOME=str(_ROOT / "hf-home"),  # no user token, no user config
    HF_HUB_CACHE=str(_ROOT / "hub"),
    HF_HUB_OFFLINE="1",
    HF_ENDPOINT="http://127.0.0.1:9",  # a closed port: any request that slips through fails fast
    HF_HUB_DISABLE_TELEMETRY="1",
    TOKENIZERS_PARALLELISM="false",
    COLUMNS="200",  # rich wraps long paths otherwise
    TORCHINDUCTOR_CACHE_DIR=str(_ROOT / "torch-compile"),  # --fast tests: never the user's cache
    XDG_CACHE_HOME=str(_ROOT / "cache"),  # spo's own cache (single-file hashes): never the user's
    XDG_CONFIG_HOME=str(_ROOT / "config"),  # spo's local signing certificate (--sign): never the user's
)
os.environ.pop("HF_TOKEN", None)

SPO_CLI = [sys.executable, "-m", "spo_cli"]
# Only a guard against a hung test run, never a measure of speed: a busy machine is slow, not broken.
HANG = 3600


def pytest_collection_modifyitems(config, items):
    # xdist (loadgroup) hands out each xdist_group whole, the largest first, then every other test
    # one by one in collection order. So the longest tests go first, then the rest of the slow ones,
    # and the two thousand sub-second fast ones last, where they fill in until both workers finish
    # together (within 0.1 s on 2026-12-02), not one idling while the other ends on a pipeline
    # test of many seconds (stable sort).
    items.sort(key=lambda item: (item.get_closest_marker("early") is None, item.get_closest_marker("slow") is None))


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_ROOT, ignore_errors=True)


@pytest.fixture(autouse=True)
def _signal_handlers():
    """Each test starts and ends with the process's own SIGINT/SIGTERM handlers. A batch stopped
    in-process (CliRunner) leaves SIGINT ignored, as a real `spo batch` on its way out should; a
    child started later inherits SIG_IGN across exec, and a Ctrl-C test's `spo` then ignores it."""
    import signal

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.fixture(scope="session")
def repos() -> dict[str, Path]:
    """Source folders of the tiny repos, by real repo id."""
    from spo_cli import tiny

    return tiny.save_repos(_ROOT / "repos")


@pytest.fixture(scope="session")
def hub_cache(repos) -> dict[str, str]:
    """The tiny repos installed in the session's HF cache; returns their commits by repo id."""
    from spo_cli import tiny

    return {repo: tiny.add_to_cache(Path(os.environ["HF_HUB_CACHE"]), repo, src) for repo, src in repos.items()}


@pytest.fixture
def out(tmp_path) -> Path:
    return tmp_path / "out"


def base_copy(repos: dict[str, Path], folder: Path, **index_changes) -> Path:
    """A copy of tiny SDXL base at `folder`, with `index_changes` written into its model_index.json."""
    import json

    from spo_cli import presets

    shutil.copytree(repos[presets.SDXL_BASE], folder)
    index = json.loads((folder / "model_index.json").read_text())
    index.update(index_changes)
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def run_spo(*args: str, env: dict | None = None, timeout: float = HANG, **kw) -> subprocess.CompletedProcess:
    """Run the real `spo` entry point in a subprocess."""
    return subprocess.run(
        [*SPO_CLI, *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})}, **kw,
    )


TINY = ["--width", "64", "--height", "64", "--steps", "3"]


# Runs `spo` command lines one after another in one fresh interpreter, and says after each what it
# exited with and which heavy libraries were imported by then: bad input must be refused before torch.
_PROBE = """
import json, sys
from spo_cli.cli import app
for i, args in enumerate(json.loads(sys.argv[1])):
    print(f"CASE:{i}", file=sys.stderr, flush=True)
    code = 0
    try:
        app(args)
    except SystemExit as e:
        code = e.code
    heavy = sorted(m for m in ("torch", "diffusers", "transformers") if m in sys.modules)
    print(f"EXIT:{code}:HEAVY:{','.join(heavy)}", file=sys.stderr, flush=True)
"""


def probe_cli(cases: dict[str, list[str]]) -> dict[str, str]:
    """{case: what `spo <args>` printed on stderr, ending with its line `EXIT:<code>:HEAVY:<modules>`}."""
    import json

    proc = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(list(cases.values()))], capture_output=True,
                          text=True, timeout=HANG, input="", env={**os.environ, "COLUMNS": "400"})
    parts = proc.stderr.split("CASE:")[1:]
    assert len(parts) == len(cases), proc.stderr[-2000:]
    return {name: part.split("\n", 1)[1] for name, part in zip(cases, parts)}
