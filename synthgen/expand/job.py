"""The expander's jobs, as the CLI and recipes call them: expand a dataset, evaluate it, report.

`expand_job` and `evaluate_job` take plain settings and a ``log`` callable for the lines the
user reads; they return the paths they wrote. The CLI (`synthgen expand`, `synthgen evaluate`)
and the recipe tasks (``expand``, ``evaluate``) are thin wrappers around them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from synthgen.errors import InputError
from synthgen.expand.analysis import analyse, format_table, write_analysis
from synthgen.expand.dataset import read_dataset
from synthgen.expand.evaluate import evaluate
from synthgen.expand.evaluation import SYNTHETIC_ARMS, format_evaluation, write_evaluation
from synthgen.expand.generate import check_out, expand
from synthgen.expand.manifest import MANIFEST, read_manifest
from synthgen.expand.plan import Target, make_plan
from synthgen.expand.report import HTML_NAME, write_report
from synthgen.expand.split import training_part
from synthgen.expand.summary import SUMMARY_FILES, ExpansionSummary, write_expansion_summary
from synthgen.files.atomic import check_writable
from synthgen.train.loop import Dist


@dataclasses.dataclass
class ExpandSettings:
    """`synthgen expand` options (also the ``expand`` recipe step's config)."""

    rare: str = "auto"
    rare_fraction: float = 0.5
    target: str = "balance"
    budget: int | None = None
    size: float | None = None  # one lesion diameter (mm) for every item
    sizes: list[float] | None = None  # diameters (mm) each item draws one of (not with size)
    phase: str = "auto"  # contrast phase of inserted lesions (auto: matched / estimated, see plan.plan_phase)
    seed: int = 0
    hold_out: bool = False
    generator: str = "insert"  # insert (lesion engine into real hosts) | diffusion (whole text -> CT cases)
    dry_run: bool = False
    analyse_only: bool = False
    overwrite: bool = False  # replace files in the output that are not this plan's own journaled outputs
    # (and, with analyse_only, an existing analysis.json / analysis.png)


def expand_job(dataset: str | Path, settings: ExpandSettings, *, out: str | Path | None = None,
               log: Callable[[str], None] = print, progress: bool = True) -> dict[str, Path]:
    if out is not None:
        check_out(out)  # before any reading: an --out that cannot be a folder fails at once
    ds = read_dataset(dataset)
    if ds.problems:
        log(ds.summary())
    a = analyse(ds, rare=settings.rare, fraction=settings.rare_fraction, progress=progress)
    plan_ds = ds
    if settings.hold_out:

        plan_ds = training_part(ds, a)
        log(f"--hold-out: planning on the {len(plan_ds.items)} training-split cases of {len(ds.items)} "
            "(validation/test scans are never hosts)")
        a = analyse(plan_ds, rare=settings.rare, fraction=settings.rare_fraction, progress=progress)
    log(format_table(a))
    out_path = Path(out) if out is not None else None
    if settings.analyse_only:
        return write_analysis(a, out_path or Path(ds.root), overwrite=settings.overwrite)
    plan = make_plan(plan_ds, a, Target.parse(settings.target), budget=settings.budget, seed=settings.seed,
                     size_mm=_sizes(settings), generator=settings.generator, phase=settings.phase)
    log(plan.format(a))
    if settings.dry_run:
        return {}
    dist = Dist(torch.device("cpu"))  # under torchrun: gloo; the ranks split the items
    res = expand(ds, plan, out=out_path, rank=dist.rank, world=dist.world,
                 barrier=dist.barrier if dist.world > 1 else None, progress=progress, overwrite=settings.overwrite)
    paths: dict[str, Path] = {"dataset": res.root}
    if dist.main:
        summary = write_expansion_summary(ExpansionSummary.of(a, plan), res.root)
        log(f"{len(res.written)} synthetic cases written, {len(res.skipped)} already done (journal) in {res.root}")
        paths.update(manifest=res.manifest, index=res.index, **summary)
    return paths


def _sizes(settings: ExpandSettings) -> float | list[float] | None:
    if settings.size is not None and settings.sizes is not None:
        raise InputError("--size and --sizes both given; pass one (--sizes 6,8,12 draws each item's size from a list)")
    return settings.size if settings.size is not None else settings.sizes


def evaluate_job(dataset: str | Path, cfg, out: str | Path, *, expanded: str | Path | None = None,
                 tests: Sequence[str | Path] = (), task: str | None = None, title: str | None = None,
                 drr_images: list[Path] | None = None, overwrite: bool = False, log: Callable[[str], None] = print,
                 progress: bool = True) -> dict[str, Path]:
    """Train the arms, test them on the dataset's test split and on every ``tests`` set, write
    ``evaluation.json`` / ``evaluation.txt`` and the HTML report into ``out`` (``task``, when
    given, must be the dataset's: seg or cls). Under ``torchrun`` the ranks split the (arm, seed)
    runs; rank 0 writes (the other ranks return no paths)."""

    out = Path(out)
    ds = read_dataset(dataset)
    if task is not None and ds.task != task:
        raise InputError(f"--task {task}: {dataset} is a {ds.task} dataset")
    dist = Dist(torch.device("cpu"))  # under torchrun: gloo; the ranks split the runs
    say = log if dist.main else (lambda _: None)
    if ds.problems:
        say(ds.summary())
    root = Path(expanded) if expanded is not None else ds.root
    synthetic = [a for a in cfg.arms if a in SYNTHETIC_ARMS]
    if synthetic and not (root / MANIFEST).exists():
        raise InputError(f"{root}: no {MANIFEST} for the {synthetic[0]} arm; run `synthgen expand` first, pass "
                         "--expanded DIR, or leave the synthetic arms out (--arms real,weighted)")
    if dist.main and not overwrite:  # before hours of training, not after
        for name in ("evaluation.json", "evaluation.txt", HTML_NAME):
            check_writable(out / name, overwrite=False)
    ev = evaluate(ds, expanded=expanded, tests=tests, cfg=cfg, progress=progress and dist.main, rank=dist.rank,
                  world=dist.world, gather=dist.gather_strings if dist.world > 1 else None, log=say)
    if not dist.main:
        return {}
    log(format_evaluation(ev))
    paths = write_evaluation(ev, out, overwrite=overwrite)
    summary_path = root / SUMMARY_FILES[0]
    summary = ExpansionSummary.read(summary_path) if summary_path.exists() else None
    manifest = read_manifest(root) if (root / MANIFEST).exists() else None
    paths["report"] = write_report(out, title=title or f"synthgen expansion of {Path(ds.root).name}",
                                   summary=summary, manifest=manifest, root=root, evaluation=ev,
                                   drr_images=drr_images, overwrite=overwrite)
    log(f"report   {paths['report']}")
    return paths
