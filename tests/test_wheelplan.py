"""benchmarks/wheelplan.py: the extras the GPU session needs (torchao for --quantize fp8) travel as wheels."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import wheelplan  # noqa: E402

PYPROJECT = """
[project]
name = "spo-cli"
dependencies = ["packaging>=1"]

[project.optional-dependencies]
test = ["pytest>=8", "spo-cli[score,fp8]"]
fp8 = ["torchao>=0.18"]
score = ["spo-test-absent-parquet>=1"]
"""


def wheel(folder: Path, name: str, version: str) -> Path:
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}-{version}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return path


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    # Whatever this Python has, the node of the test has no torchao.
    everything = wheelplan.md.distributions
    monkeypatch.setattr(wheelplan.md, "distributions",
                        lambda: [d for d in everything() if (d.metadata["Name"] or "").lower() != "torchao"])
    return tmp_path / "pyproject.toml"


def test_the_fp8_extra_is_read_and_a_missing_extra_named(project, capsys):
    reqs = wheelplan.project_requirements(("fp8", "nope"), project)
    assert reqs == [("packaging>=1", "spo-cli"), ("torchao>=0.18", "spo-cli[fp8]")]
    assert "no [nope] extra" in capsys.readouterr().err
    # the test extra's own spo-cli[...] line is not a package to fetch
    assert ("spo-cli[score,fp8]", "spo-cli[test]") not in wheelplan.project_requirements(("test",), project)
    assert wheelplan.NODE_EXTRAS == ("serve", "score", "fp8")
    assert wheelplan.parse_extras(["plan", "w", "--extras", "fp8"]) == ("fp8",)
    assert wheelplan.parse_extras(["plan", "w"]) == wheelplan.NODE_EXTRAS


def test_plan_carries_torchao_and_only_warns_for_an_extra_it_cannot_carry(project, tmp_path, capsys):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    old, new = wheel(wheels, "torchao", "0.17.0"), wheel(wheels, "torchao", "0.18.0")
    chosen = wheelplan.plan(wheels, ("fp8", "score"), project)
    assert chosen == [new] and old not in chosen
    err = capsys.readouterr().err
    assert "spo-cli[fp8] needs torchao>=0.18" in err
    assert "warning: not on this node and not carried: spo-test-absent-parquet>=1" in err
    # without the extra nothing is carried; a core requirement no one can meet still stops the plan
    assert wheelplan.plan(wheels, (), project) == []
    project.write_text(PYPROJECT.replace('"packaging>=1"', '"spo-test-absent-core>=1"'))
    with pytest.raises(SystemExit, match="spo-cli needs spo-test-absent-core>=1"):
        wheelplan.plan(wheels, ("fp8",), project)
