"""Helper of run_gpu_bench.sh: which wheels to fetch, and which of them a node needs.

Standard library only, plus `packaging` (or pip's vendored copy, or the packaging wheel itself), so
it runs on a bare GPU node's Python.

    python benchmarks/wheelplan.py pins [--python-version 3.10] [--extras serve,score,fp8]
        spo-cli's dependency closure (without torch), with the extras the GPU session uses, pinned to
        the versions installed in this Python: what `run_gpu_bench.sh download` fetches. An extra's
        package that is not installed here is fetched unpinned (with a note).
    python benchmarks/wheelplan.py plan WHEELS_DIR [--extras serve,score,fp8]
        the wheels of WHEELS_DIR this Python lacks for spo-cli: every requirement not met by an
        installed distribution is taken from the folder (newest compatible wheel), then every
        installed distribution whose own requirements the new wheels would break is replaced too
        when the folder has it (e.g. transformers 4 next to the huggingface_hub 1.x diffusers needs).
        Prints wheel paths, one a line; the reasons go to stderr. A requirement of an extra that
        neither the node nor the folder has is a warning, not a failure: only the commands that need
        it (e.g. --quantize fp8 without torchao) are refused, each with its own message.

--extras names the optional-dependency groups of pyproject.toml to carry (default: NODE_EXTRAS,
what gpu_session.sh runs: spo serve, eval --paper's parquet reader and scorers, --quantize fp8's
torchao); a group the pyproject does not have is left out with a note.
    python benchmarks/wheelplan.py extract TARGET WHEEL...
        unpack wheels into TARGET without pip (for a Python that has no pip).
"""

from __future__ import annotations

import importlib.metadata as md
import re
import sys
import zipfile
from email.parser import HeaderParser
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Brought by the node's own PyTorch build (CUDA libraries, Triton) and never fetched.
NODE_PROVIDED = re.compile(r"^(torch|triton|nvidia-.*|pytorch-triton.*)$")
# The extras the GPU session's phases need: bench_serve.py (serve), bench_eval.py (score: pyarrow for
# the Pick-a-Pic parquet, ftfy for HPSv2's tokenizer) and the fp8 contender (fp8: torchao).
NODE_EXTRAS = ("serve", "score", "fp8")


def _import_packaging(wheels: Path | None = None):
    """`packaging`'s parts: the installed module, else pip's vendored copy, else the wheel in `wheels`."""
    from types import SimpleNamespace

    def load(prefix: str):
        import importlib

        mods = {m: importlib.import_module(f"{prefix}.{m}") for m in ("requirements", "specifiers", "tags", "utils", "version")}
        return SimpleNamespace(Requirement=mods["requirements"].Requirement, SpecifierSet=mods["specifiers"].SpecifierSet,
                               sys_tags=mods["tags"].sys_tags, canon=mods["utils"].canonicalize_name,
                               parse_wheel_filename=mods["utils"].parse_wheel_filename, Version=mods["version"].Version)

    for prefix in ("packaging", "pip._vendor.packaging"):
        try:
            return load(prefix)
        except ImportError:
            pass
    found = sorted((wheels or Path(".")).glob("packaging-*.whl"))
    if not found:
        sys.exit("wheelplan: needs the `packaging` module (or pip) in this Python")
    sys.path.insert(0, str(found[-1]))  # a pure-Python wheel imports straight from the zip
    return load("packaging")


def project_requirements(extras: tuple[str, ...] = (), pyproject: Path | None = None) -> list[tuple[str, str]]:
    """(requirement, origin) for `[project] dependencies` of the repo's pyproject.toml and for each of
    `extras` in `[project.optional-dependencies]` (origin "spo-cli[extra]"); tomllib where there is one.
    An extra's own "spo-cli[...]" entries (the test extra's) are not followed."""
    text = (pyproject or REPO / "pyproject.toml").read_text()
    try:
        import tomllib

        project = tomllib.loads(text)["project"]
        deps, groups = list(project["dependencies"]), dict(project.get("optional-dependencies", {}))
    except ImportError:
        block = re.search(r"^dependencies\s*=\s*\[(.*?)^\]", text, re.S | re.M)
        deps = re.findall(r'"([^"]+)"', block.group(1)) if block else []
        groups = {}
        section = re.search(r"^\[project\.optional-dependencies\]\s*$(.*?)(?=^\[|\Z)", text, re.S | re.M)
        for name, body in re.findall(r"^([A-Za-z0-9_.-]+)\s*=\s*\[(.*?)\]", section.group(1) if section else "",
                                     re.S | re.M):
            groups[name] = re.findall(r'"([^"]+)"', body)
    out = [(r, "spo-cli") for r in deps]
    for extra in extras:
        if extra not in groups:
            print(f"  note: pyproject.toml has no [{extra}] extra; nothing carried for it", file=sys.stderr)
            continue
        out += [(r, f"spo-cli[{extra}]") for r in groups[extra] if not r.replace(" ", "").startswith("spo-cli[")]
    return out


def parse_extras(args: list[str]) -> tuple[str, ...]:
    """--extras a,b (or --extras '' for none) from argv; NODE_EXTRAS when absent."""
    if "--extras" not in args:
        return NODE_EXTRAS
    i = args.index("--extras")
    value = args[i + 1] if i + 1 < len(args) else ""
    del args[i:i + 2]
    return tuple(e.strip() for e in value.split(",") if e.strip())


def _applies(req, extras=("",), env: dict | None = None) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({**(env or {}), "extra": e}) for e in extras)


def pins(python_version: str | None, extras: tuple[str, ...] = NODE_EXTRAS, pyproject: Path | None = None) -> list[str]:
    pkg = _import_packaging()
    Requirement, canon = pkg.Requirement, pkg.canon
    env = {}
    if python_version:
        env = {"python_version": python_version, "python_full_version": python_version + ".0"}
    seen: dict[str, str | None] = {}  # name → version specifier
    queue = [(Requirement(r), ("",), origin) for r, origin in project_requirements(extras, pyproject)]
    while queue:
        req, wanted, origin = queue.pop()
        name = canon(req.name)
        if not _applies(req, wanted, env) or NODE_PROVIDED.match(name) or name in seen:
            continue
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            if not python_version and origin == "spo-cli":
                sys.exit(f"wheelplan: {req.name} is not installed in this Python ({sys.executable}); run "
                         "`download` with the Python of a working spo-cli environment (pip install -e . there).")
            # Needed only on the node's Python version: let pip pick a version (its dependencies unchecked).
            print(f"  note: {req.name} is not installed here; fetching {req.name}{req.specifier} unpinned",
                  file=sys.stderr)
            seen[name] = str(req.specifier) or None
            continue
        seen[name] = "==" + dist.version
        queue += [(Requirement(r), ("",) + tuple(req.extras), origin) for r in dist.requires or []]
    return [n + (v or "") for n, v in sorted(seen.items())]


def _wheel_meta(path: Path) -> tuple[str, str, list[str], str]:
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
        headers = HeaderParser().parsestr(z.read(meta).decode("utf-8"))
    return headers["Name"], headers["Version"], headers.get_all("Requires-Dist") or [], headers["Requires-Python"] or ""


def plan(wheels: Path, extras: tuple[str, ...] = NODE_EXTRAS, pyproject: Path | None = None) -> list[Path]:
    pkg = _import_packaging(wheels)
    Requirement, canon, Version = pkg.Requirement, pkg.canon, pkg.Version
    supported = set(pkg.sys_tags())
    python = ".".join(map(str, sys.version_info[:3]))

    available: dict[str, list[tuple]] = {}
    for path in sorted(wheels.glob("*.whl")):
        try:
            _, _, _, tags = pkg.parse_wheel_filename(path.name)
        except Exception:
            continue
        if not tags & supported:
            print(f"  (ignoring {path.name}: not for this Python/platform)", file=sys.stderr)
            continue
        name, version, requires, requires_python = _wheel_meta(path)
        if requires_python and not pkg.SpecifierSet(requires_python).contains(python, prereleases=True):
            print(f"  (ignoring {path.name}: needs Python {requires_python})", file=sys.stderr)
            continue
        available.setdefault(canon(name), []).append((Version(version), path, requires))

    installed: dict[str, md.Distribution] = {}
    for dist in md.distributions():
        name = dist.metadata["Name"]
        if name:
            installed.setdefault(canon(name), dist)  # the first on sys.path is the one imported

    chosen: dict[str, tuple] = {}  # name → (version, path, requires)
    why: dict[str, str] = {}
    lacking: list[str] = []  # an extra's requirements the node cannot have: warned, not fatal

    def version_of(name: str):
        if name in chosen:
            return chosen[name][0]
        return Version(installed[name].version) if name in installed else None

    def pick(name: str, spec, reason: str, optional: bool = False) -> None:
        fits = [w for w in available.get(name, []) if spec.contains(w[0], prereleases=True)]
        if not fits and optional:
            lacking.append(f"{name}{spec or ''} ({reason}; no compatible wheel in {wheels})")
            return
        if not fits:
            have = installed[name].version if name in installed else "nothing"
            sys.exit(f"wheelplan: spo-cli needs {name}{spec or ''} ({reason}); this Python has {have} and "
                     f"{wheels} holds no compatible wheel. Run `run_gpu_bench.sh download` for this node's "
                     "Python (-- --python-version X.Y --platform TAG).")
        chosen[name] = max(fits, key=lambda w: w[0])
        why[name] = reason
        for r in chosen[name][2]:
            queue.append((Requirement(r), ("",), f"{name} {chosen[name][0]}"))

    queue = [(Requirement(r), ("",), origin) for r, origin in project_requirements(extras, pyproject)]
    while True:
        while queue:
            req, extras, origin = queue.pop(0)
            name = canon(req.name)
            if not _applies(req, extras):
                continue
            have = version_of(name)
            if have is not None and req.specifier.contains(have, prereleases=True):
                if req.extras and name in installed and name not in chosen:
                    queue += [(Requirement(r), tuple(req.extras), origin) for r in installed[name].requires or []]
                continue
            if name in chosen:
                sys.exit(f"wheelplan: conflict: {origin} needs {req}, but {name} {have} was already chosen")
            if NODE_PROVIDED.match(name) and name not in available:
                sys.exit(f"wheelplan: {origin} needs {req}; this Python has {have or 'no ' + name}. "
                         "Install a CUDA build of PyTorch on the node first.")
            pick(name, req.specifier, f"{origin} needs {req}; found {have or 'none'}", optional=origin.startswith("spo-cli["))
        # Installed distributions that the chosen wheels would break (a shadowing upgrade).
        for name, dist in installed.items():
            if name in chosen:
                continue
            for r in dist.requires or []:
                req = Requirement(r)
                other = canon(req.name)
                if other in chosen and _applies(req) and not req.specifier.contains(chosen[other][0], prereleases=True):
                    if name in available:
                        pick(name, pkg.SpecifierSet(),
                             f"installed {dist.metadata['Name']} {dist.version} needs {req}, "
                             f"but {other} {chosen[other][0]} is installed alongside")
                    else:
                        print(f"  warning: installed {dist.metadata['Name']} {dist.version} needs {req}; "
                              f"{other} {chosen[other][0]} will shadow it", file=sys.stderr)
                    break
        if not queue:
            break

    node = sorted(n for n in installed if n not in chosen)
    print(f"  needed from {wheels}: " + (", ".join(f"{n} {chosen[n][0]}" for n in sorted(chosen)) or "nothing"),
          file=sys.stderr)
    for n in sorted(chosen):
        print(f"    {n}: {why[n]}", file=sys.stderr)
    print(f"  already here: {len(node)} distributions (torch {version_of('torch') or 'MISSING'})", file=sys.stderr)
    for line in lacking:
        print(f"  warning: not on this node and not carried: {line}; the commands that need it will say so",
              file=sys.stderr)
    return [chosen[n][1] for n in sorted(chosen)]


def extract(target: Path, wheels: list[Path]) -> None:
    """Unpack wheels as pip --target would (purelib/platlib data folded in, scripts left out)."""
    import shutil

    target.mkdir(parents=True, exist_ok=True)
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            z.extractall(target)
        for data in target.glob("*.data"):
            for kind in ("purelib", "platlib"):
                if (data / kind).is_dir():
                    for item in (data / kind).iterdir():
                        dest = target / item.name
                        if dest.exists():
                            shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
                        shutil.move(str(item), dest)
            shutil.rmtree(data)


def main() -> None:
    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return
    extras = parse_extras(args)
    if args[0] == "pins":
        pyver = args[args.index("--python-version") + 1] if "--python-version" in args else None
        print("\n".join(pins(pyver, extras)))
    elif args[0] == "plan" and len(args) == 2:
        for path in plan(Path(args[1]), extras):
            print(path)
    elif args[0] == "extract" and len(args) >= 2:
        extract(Path(args[1]), [Path(a) for a in args[2:]])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
