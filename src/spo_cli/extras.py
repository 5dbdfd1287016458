"""Optional extras (`spo-cli[serve]`, `spo-cli[score]`): whether a feature's libraries are installed,
asked before anything is loaded, so that a missing one is a one-line instruction, not an ImportError."""

from __future__ import annotations

import importlib.util

from spo_cli.errors import UsageError


def missing(*modules: str) -> list[str]:
    gone = []
    for name in modules:
        try:
            if importlib.util.find_spec(name) is None:
                gone.append(name)
        except (ImportError, ValueError):  # a parent package missing, or an import blocked in sys.modules
            gone.append(name)
    return gone


def require(extra: str, what: str, *modules: str) -> None:
    gone = missing(*modules)
    if gone:
        raise UsageError(f"{what} needs {' and '.join(gone)}, which {'is' if len(gone) == 1 else 'are'} not installed.",
                         f'Install the extra: pip install "spo-cli[{extra}]".')
