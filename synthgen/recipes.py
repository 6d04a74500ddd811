"""`synthgen run RECIPE.yaml`: a list of steps, each an engine call writing into its own folder.

A recipe is data, not a program: each step names a registered task and the
config files / ``key=value`` overrides for it. Tasks are added by the engines as
they land; an unknown task is an error that lists the known ones.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import json
import os
from collections.abc import Callable
from pathlib import Path

from synthgen.config import load_config, save_config, shipped_path
from synthgen.data import PhantomConfig, example_ct, example_dir
from synthgen.drr.job import DRRConfig
from synthgen.drr.job import run as render_views
from synthgen.errors import InputError
from synthgen.expand.demo import DemoConfig, write_demo_dataset
from synthgen.expand.evaluate import EvalConfig
from synthgen.expand.job import ExpandSettings, evaluate_job, expand_job
from synthgen.expand.xray import XRayDatasetConfig, xray_dataset
from synthgen.files.atomic import write_text
from synthgen.files.safepath import safe_name
from synthgen.generate.job import GenerateConfig
from synthgen.generate.job import run as generate_job
from synthgen.generate.phantom import run as phantom_job
from synthgen.io import read, read_pair
from synthgen.io.record import Record
from synthgen.lesions.job import run as insert_lesions_job
from synthgen.lesions.spec import load_specs
from synthgen.report.info import describe
from synthgen.report.montage import montage, save_png


@dataclasses.dataclass
class StepConfig:
    """One step: a registered ``task``, its config files and overrides, and its input files
    (tasks that read a scan take ``inputs: [CT, LABELS]``; none means the example CT).
    An input ``@STEP/ROLE`` is the file or folder an earlier step returned under ROLE."""

    task: str = "???"
    name: str | None = None
    config: list[str] = dataclasses.field(default_factory=list)
    overrides: list[str] = dataclasses.field(default_factory=list)
    inputs: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class RecipeConfig:
    name: str = "???"
    description: str = ""
    steps: list[StepConfig] = dataclasses.field(default_factory=list)


TaskFn = Callable[[StepConfig, Path, bool], dict[str, Path]]
_TASKS: dict[str, TaskFn] = {}
#: Whether the running recipe shows progress bars; long tasks show their own inner bars too.
_SHOW_PROGRESS = contextvars.ContextVar("synthgen_recipe_progress", default=False)


def task(name: str) -> Callable[[TaskFn], TaskFn]:
    """Register a recipe task under ``name``."""

    def deco(fn: TaskFn) -> TaskFn:
        _TASKS[name] = fn
        return fn

    return deco


@task("phantom")
def _phantom_task(step: StepConfig, out: Path, overwrite: bool) -> dict[str, Path]:
    """The procedural phantom: configs/phantom.yaml schema (`synthgen.data.PhantomConfig`)."""

    cfg = load_config(PhantomConfig, paths=step.config, overrides=step.overrides)
    return phantom_job(cfg, out, overwrite=overwrite)


@task("describe_example")
def _describe_example_task(step: StepConfig, out: Path, overwrite: bool) -> dict[str, Path]:
    """Geometry + label summary of the example CT as JSON, and a labelled montage PNG."""

    if step.config or step.overrides:
        raise InputError("task describe_example takes no config or overrides")
    ct, labels = _example()
    info = {"ct": describe(ct), "labels": describe(labels)}
    paths = {"info": out / "example_info.json", "preview": out / "example.png"}
    write_text(paths["info"], json.dumps(info, indent=2) + "\n", overwrite=overwrite)
    save_png(montage(ct, labels), paths["preview"], overwrite=overwrite)
    return paths


@task("drr")
def _drr_task(step: StepConfig, out: Path, overwrite: bool) -> dict[str, Path]:
    """X-ray views of a CT (and its labels): configs/drr.yaml schema (`synthgen.drr.job.DRRConfig`)."""

    cfg = load_config(DRRConfig, paths=step.config, overrides=step.overrides)
    ct, labels, inputs = _scan(step)
    written, config_path = render_views(ct, cfg, out, labels=labels, inputs=inputs, overwrite=overwrite, progress=False)
    paths = {f"{view}_{role}": p for view, ps in written.items() for role, p in ps.items()}
    paths["config"] = config_path
    return paths


@task("lesion")
def _lesion_task(step: StepConfig, out: Path, overwrite: bool) -> dict[str, Path]:
    """Lesions inserted into a scan: ``config`` names lesion-spec YAML files (configs/lesions_*.yaml)."""

    if not step.config or step.overrides:
        raise InputError(f"step {step.name or step.task}: give lesion spec files in config: [...] (no overrides)")
    specs = [s for path in step.config for s in load_specs(path)]
    ct, labels, inputs = _scan(step)
    return insert_lesions_job(ct, labels, specs, out, inputs=inputs, overwrite=overwrite, preview=True)[1]


@task("generate")
def _generate_task(step: StepConfig, out: Path, overwrite: bool) -> dict[str, Path]:
    """A CT + label map from a prompt: configs/generate.yaml schema (`synthgen.generate.job.GenerateConfig`)."""

    cfg = load_config(GenerateConfig, paths=step.config, overrides=step.overrides)
    return generate_job(cfg, out, overwrite=overwrite, progress=False)


@task("xray_dataset")
def _xray_dataset_task(step: StepConfig, out: Path, overwrite: bool) -> dict[str, Path]:
    """A CT segmentation dataset (``inputs: [DATASET]``) as a 2D X-ray (DRR) dataset with projected labels:
    configs/xray_dataset.yaml schema (`synthgen.expand.xray.XRayDatasetConfig`)."""

    if len(step.inputs) != 1:
        raise InputError(f"step {step.name or step.task}: inputs must be [DATASET] (nnU-Net/MSD folder, "
                         f"datalist .json or .csv), got {step.inputs}")
    cfg = load_config(XRayDatasetConfig, paths=step.config, overrides=step.overrides)
    res = xray_dataset(step.inputs[0], out, config=cfg, progress=_SHOW_PROGRESS.get(), overwrite=overwrite)
    return {"dataset": res.root, "manifest": res.manifest, "preview": res.preview}


@task("demo_dataset")
def _demo_dataset_task(step: StepConfig, out: Path, overwrite: bool) -> dict[str, Path]:
    """The shipped demo segmentation set (liver cysts common, tumours rare) built from the example CT:
    configs/demo_dataset.yaml schema (`synthgen.expand.demo.DemoConfig`)."""

    cfg = load_config(DemoConfig, paths=step.config, overrides=step.overrides)
    return {"dataset": write_demo_dataset(out, cfg, overwrite=overwrite, progress=_SHOW_PROGRESS.get())}


@task("expand")
def _expand_task(step: StepConfig, out: Path, overwrite: bool) -> dict[str, Path]:
    """``inputs: [DATASET]`` expanded into a copy in the step's folder (the input is never written):
    `synthgen.expand.job.ExpandSettings` schema (configs/expand.yaml)."""

    if len(step.inputs) != 1:
        raise InputError(f"step {step.name or step.task}: inputs must be [DATASET], got {step.inputs}")
    cfg = load_config(ExpandSettings, paths=step.config, overrides=step.overrides)
    target = out / Path(step.inputs[0]).name
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise InputError(f"{target} already exists; choose another --out or pass --overwrite")
    cfg = dataclasses.replace(cfg, overwrite=cfg.overwrite or overwrite)
    return expand_job(step.inputs[0], cfg, out=target, log=lambda _: None, progress=_SHOW_PROGRESS.get())


@task("evaluate")
def _evaluate_task(step: StepConfig, out: Path, overwrite: bool) -> dict[str, Path]:
    """``inputs: [DATASET, EXPANDED, *DRR_PNGS]``: downstream training per arm and seed, the evaluation
    table and the HTML report: `synthgen.expand.evaluate.EvalConfig` schema (configs/evaluate.yaml)."""

    if len(step.inputs) < 1:
        raise InputError(f"step {step.name or step.task}: inputs must be [DATASET, EXPANDED, ...], got none")
    cfg = load_config(EvalConfig, paths=step.config, overrides=step.overrides)
    expanded = step.inputs[1] if len(step.inputs) > 1 else None
    drr = [Path(p) for p in step.inputs[2:]]
    return evaluate_job(step.inputs[0], cfg, out, expanded=expanded, drr_images=drr or None, overwrite=overwrite,
                        log=lambda _: None, progress=_SHOW_PROGRESS.get())


@functools.lru_cache(maxsize=1)
def _example():
    """The example CT, read once however many steps of a run use it (steps never modify inputs)."""

    return example_ct()


def _scan(step: StepConfig):
    """The (ct, labels, input paths) a step reads: its ``inputs`` or the example CT."""

    if not step.inputs:

        ct, labels = _example()
        return ct, labels, [example_dir() / "cxr.nii.gz", example_dir() / "mask.nii.gz"]
    if len(step.inputs) > 2:
        raise InputError(f"step {step.name or step.task}: inputs are [CT] or [CT, LABELS], got {step.inputs}")
    if len(step.inputs) == 2:
        return (*read_pair(*step.inputs), step.inputs)
    return read(step.inputs[0]), None, step.inputs


def _resolve_input(x: str, results: dict[str, dict[str, Path]], name: str) -> str:
    """``@STEP/ROLE`` -> the path step STEP returned under ROLE; anything else is a path as given."""
    if not x.startswith("@"):
        return x
    ref, _, role = x[1:].partition("/")
    if ref not in results:
        raise InputError(f"step {name}: input {x!r} names no earlier step (earlier: {', '.join(results) or 'none'})")
    if role not in results[ref]:
        raise InputError(f"step {name}: step {ref} has no output {role!r} (outputs: {', '.join(results[ref])})")
    return str(results[ref][role])


def known_tasks() -> list[str]:
    return sorted(_TASKS)


def load_recipe(path: str | os.PathLike) -> RecipeConfig:
    """The recipe at ``path`` (``pipelines/NAME.yaml`` falls back on the shipped one, `shipped_path`)."""

    path = shipped_path(path)
    recipe = load_config(RecipeConfig, paths=[path])
    if not recipe.steps:
        raise InputError(f"{path}: recipe has no steps")
    for i, step in enumerate(recipe.steps):
        if step.task not in _TASKS:
            raise InputError(f"{path}: step {i + 1} has unknown task {step.task!r}; known: {', '.join(known_tasks())}")
    names = [s.name or s.task for s in recipe.steps]
    for n in names:  # each names the step's output folder
        safe_name(n, what=f"{path}: step name")
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise InputError(f"{path}: step names must be unique (give steps a name:), repeated: {', '.join(sorted(dup))}")
    return recipe


def run_recipe(
    path: str | os.PathLike, out: str | os.PathLike, *, overwrite: bool = False, progress: bool = True
) -> dict[str, dict[str, Path]]:
    """Run every step of the recipe at ``path``; step outputs go to ``out/<step name>/``, the resolved
    recipe to ``out/recipe.yaml`` and the run's record to ``out/run.json`` (the recipe and its config
    files by hash, each step's outputs in details)."""
    from tqdm.auto import tqdm

    path = shipped_path(path)
    recipe = load_recipe(path)
    out = Path(out)
    configs: dict[str, list[str]] = {}
    results: dict[str, dict[str, Path]] = {}
    token = _SHOW_PROGRESS.set(progress)
    try:
        for step in tqdm(recipe.steps, desc=f"recipe {recipe.name}", unit="step", disable=not progress):
            name = step.name or step.task
            configs[name] = [str(shipped_path(c)) for c in step.config]  # configs/NAME: the shipped one if need be
            step = dataclasses.replace(step, config=configs[name],
                                       inputs=[_resolve_input(x, results, name) for x in step.inputs])
            results[name] = _TASKS[step.task](step, out / name, overwrite)
    finally:
        _SHOW_PROGRESS.reset(token)
    save_config(recipe, out / "recipe.yaml", overwrite=overwrite)
    steps = {k: {r: str(p.relative_to(out)) for r, p in v.items()} for k, v in results.items()}
    config_files = dict.fromkeys(c for cs in configs.values() for c in cs)  # each once, in order of use
    record = Record.create("synthgen.run", parameters={"recipe": recipe.name, "recipe_file": str(path),
                                                       "configs": configs},
                           inputs=[path, *config_files], outputs=["recipe.yaml", *results], details={"steps": steps})
    record.write(out / "run.json", overwrite=overwrite)
    return results
