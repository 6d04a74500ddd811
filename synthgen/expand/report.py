"""A static HTML report of a dataset expansion: ``report.html`` + PNGs in ``report_files/``.

Sections (each optional; a missing input is said so in one line on the page):

1. classes before / after (from ``synthgen_expand.json``): table, bar chart, and per rare class a
   histogram of lesion diameters, real vs synthetic (from the manifest, else the plan);
2. the plan: target, counts, notes and its first items;
3. a gallery of synthetic cases (axial | coronal | sagittal through the lesion centre, labels
   outlined) plus any DRR PNGs given;
4. the downstream evaluation (``evaluation.json``): split sizes, what each arm trained on, the
   validation learning curves, and per test set (the dataset's own test split, then every
   external ``--test`` set) the metric tables (mean ± std over seeds), every arm's deltas vs
   ``real`` and ``weighted`` with their seed spreads, the verdict and the flags (another class
   that drops by more than its seed spread when synthetic cases are added).

The page needs no server, no JavaScript and no network: every image is a relative link into
``report_files/``; every text is HTML-escaped.
"""

from __future__ import annotations

import dataclasses
import html
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

import numpy as np

from synthgen._version import __version__
from synthgen.errors import InputError, OverwriteError
from synthgen.expand.evaluation import ArmResult, Deltas, Evaluation, Stat
from synthgen.expand.manifest import ManifestLine
from synthgen.expand.summary import ExpansionSummary
from synthgen.files.atomic import atomic_dir, write_text
from synthgen.io import read_pair
from synthgen.report.charts import bar_chart, histogram, line_chart
from synthgen.report.lesion_preview import WINDOWS, crop_centred
from synthgen.report.montage import label_colors, orthogonal_views, save_png, to_square, window

HTML_NAME = "report.html"
FILES_DIR = "report_files"
#: Plan items listed in the plan table.
PLAN_ROWS = 20
LESION_RGB = (255, 60, 60)

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1150px;
 padding:0 16px;color:#222;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:2px solid #ccd;padding-bottom:3px;margin-top:1.8em}
h3{margin-bottom:.3em}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:.92em}
th,td{border:1px solid #bbb;padding:3px 9px;text-align:right}th{background:#eef0f6}
td:first-child,th:first-child{text-align:left}
tr.rare td{background:#fff3f0}.tag{color:#c0282d;font-weight:600;font-size:.85em}
.skip{color:#777;font-style:italic}.pos{color:#1a7f37}.neg{color:#c0282d}
.verdict{border-left:4px solid #3c64b4;background:#f2f5fb;padding:6px 12px;margin:.6em 0}
.flags{border-left:4px solid #c0282d;background:#fff3f0;padding:6px 12px 6px 28px;margin:.6em 0}
figure{display:inline-block;margin:8px 14px 14px 0;vertical-align:top}
figcaption{font-size:.85em;color:#444;max-width:760px}img{max-width:100%;border:1px solid #ddd}
nav a{margin-right:14px}code{background:#f3f3f3;padding:0 3px}
"""


def write_report(
    out_dir: str | Path,
    *,
    title: str,
    summary: ExpansionSummary | None = None,
    manifest: list[ManifestLine] | None = None,
    root: str | Path | None = None,
    evaluation: Evaluation | None = None,
    drr_images: Sequence[str | Path] | None = None,
    max_gallery: int = 6,
    overwrite: bool = False,
) -> Path:
    """Write ``out_dir/report.html`` (and its PNGs in ``out_dir/report_files/``); returns the html path.

    Args:
        summary: the expansion summary (``synthgen_expand.json``, `ExpansionSummary.read`).
        manifest: the synthetic items (``synthetic_manifest.jsonl``, `read_manifest`); their output
            paths are relative to ``root``.
        root: the expanded dataset folder (needed for the gallery unless ``max_gallery`` is 0).
        evaluation: the downstream evaluation (``evaluation.json``, `Evaluation.read`).
        drr_images: existing PNG files, copied into the report and shown.
        max_gallery: synthetic cases shown in the gallery (round-robin over classes).
        overwrite: replace an existing report; otherwise an existing one is an error.

    Raises:
        InputError: inputs of the wrong type, a missing file, or an existing report without ``overwrite``.
    """

    drr = _check_inputs(title, summary, manifest, root, evaluation, drr_images, max_gallery)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder; expected the report's output folder")
    page, files = out / HTML_NAME, out / FILES_DIR
    if not overwrite:
        for p in (page, files):
            if p.exists() and (p.is_file() or any(p.iterdir())):
                raise OverwriteError(f"{p}: already exists; refusing to overwrite the report (pass overwrite=True)")
    with atomic_dir(files, overwrite=overwrite) as tmp:
        body = [_classes_section(summary, manifest, tmp), _plan_section(summary),
                _gallery_section(manifest, root, summary, drr, max_gallery, tmp), _evaluation_section(evaluation, tmp)]
        doc = _page(title, body)
    write_text(page, doc, overwrite=True)  # the existence check above already honoured `overwrite`
    return page


# ------------------------------------------------------------------ inputs
def _check_inputs(title, summary, manifest, root, evaluation, drr_images, max_gallery) -> list[Path]:
    if not isinstance(title, str):
        raise InputError(f"title must be a string, got {type(title).__name__}")
    if isinstance(max_gallery, bool) or not isinstance(max_gallery, int) or max_gallery < 0:
        raise InputError(f"max_gallery must be an integer >= 0, got {max_gallery!r}")
    if summary is not None and not isinstance(summary, ExpansionSummary):
        raise InputError("summary must be an ExpansionSummary (synthgen_expand.json, read by ExpansionSummary.read), "
                         f"got {type(summary).__name__}")
    if manifest is not None:
        if not isinstance(manifest, list) or not all(isinstance(m, ManifestLine) for m in manifest):
            raise InputError("manifest must be a list of ManifestLine (synthetic_manifest.jsonl, read by "
                             "read_manifest)")
        relative = any(not Path(m.outputs.image).is_absolute() for m in manifest)
        if max_gallery and manifest and relative and root is None:
            raise InputError("the manifest's image paths are relative to the expanded dataset folder: pass root= "
                             "(or max_gallery=0 for no gallery)")
    if evaluation is not None and not isinstance(evaluation, Evaluation):
        raise InputError("evaluation must be an Evaluation (evaluation.json, read by Evaluation.read), "
                         f"got {type(evaluation).__name__}")
    drr = [Path(p) for p in drr_images or []]
    for p in drr:
        if not p.is_file():
            raise InputError(f"{p}: DRR image not found")
        with open(p, "rb") as f:
            if f.read(8) != b"\x89PNG\r\n\x1a\n":
                raise InputError(f"{p}: not a PNG file; DRR images must be PNGs")
    return drr


# ------------------------------------------------------------------ html helpers
def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _skip(what: str) -> str:
    return f'<p class="skip">{_e(what)}</p>'


def _img(name: str, alt: str) -> str:
    return f'<img src="{_e(FILES_DIR + "/" + quote(name))}" alt="{_e(alt)}">'


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], rare_rows: Sequence[bool] = ()) -> str:
    """Rows are already-escaped HTML cells; ``rare_rows`` marks rows with class ``rare``."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for k, r in enumerate(rows):
        cls = ' class="rare"' if k < len(rare_rows) and rare_rows[k] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _name_cell(name: str, rare: bool) -> str:
    return _e(name) + (' <span class="tag">RARE</span>' if rare else "")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", str(text))[:60] or "x"


def _page(title: str, sections: list[str]) -> str:
    nav = " ".join(f'<a href="#{a}">{_e(t)}</a>' for a, t in (("classes", "Classes"), ("plan", "Plan"),
                                                               ("gallery", "Gallery"), ("evaluation", "Evaluation")))
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{_e(title)}</title>'
            f"<style>{_STYLE}</style></head>\n<body>\n<h1>{_e(title)}</h1>\n"
            f'<p>Dataset expansion report, written by synthgen {_e(__version__)}. Synthetic cases are marked as '
            f"such in their files and in the manifest.</p>\n<nav>{nav}</nav>\n" + "\n".join(sections)
            + "\n</body></html>\n")


# ------------------------------------------------------------------ 1. classes
def _classes_section(summary: ExpansionSummary | None, manifest: list[ManifestLine] | None, files: Path) -> str:
    out = ['<h2 id="classes">Classes before / after</h2>']
    if summary is None:
        return "\n".join(out + [_skip("No expansion summary (synthgen_expand.json) given; section skipped.")])
    before = summary.before
    rare = set(before.rare)
    after = summary.cases_after
    out.append(f"<p>{_e(before.n_items)} real items, task <code>{_e(before.task)}</code>; "
               f"rare rule: {_e(before.rule)}.</p>")
    rows, marks = [], []
    for c in before.classes:
        n0, n1 = c.n_cases, after[c.name]
        d = c.lesion_diameters_mm
        size = f"{np.median(d):.0f} ({min(d):.0f}–{max(d):.0f})" if d else "–"
        rows.append([_name_cell(c.name, c.name in rare), _e("–" if c.value is None else c.value), str(n0),
                     f"+{n1 - n0}", str(n1), str(len(d)) if d else "–", _e(size), f"{c.volume_ml:.1f}"])
        marks.append(c.name in rare)
    out.append(_table(["class", "label", "cases before", "synthetic", "cases after", "real lesions",
                       "diameter mm: median (range)", "volume ml"], rows, marks))
    chart = bar_chart({c.name: [c.n_cases, after[c.name]] for c in before.classes},
                      series=["before", "after"], highlight=sorted(rare),
                      title="cases per class before / after expansion (rare classes in red)")
    save_png(chart, files / "classes_before_after.png")
    out.append(f"<figure>{_img('classes_before_after.png', 'cases per class before and after')}"
               "<figcaption>Cases containing each class, before and after expansion.</figcaption></figure>")
    out.append("<h3>Lesion diameters of the rare classes, real vs synthetic</h3>")
    out += _diameter_figures(summary, manifest, files)
    return "\n".join(out)


def _synthetic_diameters(name: str, summary: ExpansionSummary,
                         manifest: list[ManifestLine] | None) -> tuple[list[float], str]:
    """The synthetic lesions' diameters of class ``name``: as inserted (manifest), else as planned."""
    if manifest is not None:
        return [m.lesion.diameter_mm for m in manifest if m.class_name == name], "synthetic"
    return [i.diameter_mm for i in summary.plan.items if i.class_name == name and i.diameter_mm is not None], \
        "synthetic (planned)"


def _diameter_figures(summary: ExpansionSummary, manifest: list[ManifestLine] | None, files: Path) -> list[str]:
    out = []
    before = summary.before
    if before.task != "seg":
        return [_skip("Classification dataset: no lesion sizes to compare.")]
    if not before.rare:
        return [_skip("No rare class in this dataset.")]
    for k, c in enumerate(c for c in before.classes if c.name in before.rare):
        real = c.lesion_diameters_mm
        synth, label = _synthetic_diameters(c.name, summary, manifest)
        if not real and not synth:
            out.append(_skip(f"{c.name}: no real or synthetic lesion sizes recorded."))
            continue
        name = f"diameters_{k}_{_slug(c.name)}.png"
        save_png(histogram({f"real (n={len(real)})": real, f"{label} (n={len(synth)})": synth},
                           title=f"{c.name}: lesion diameter", xlabel="diameter (mm)"), files / name)
        note = "" if manifest is not None else " No manifest given: synthetic sizes are the planned ones."
        out.append(f"<figure>{_img(name, c.name + ' lesion diameters')}<figcaption>{_e(c.name)}: "
                   f"sphere-equivalent diameters of the real lesions vs the synthetic ones.{_e(note)}</figcaption>"
                   "</figure>")
    return out


# ------------------------------------------------------------------ 2. plan
def _plan_section(summary: ExpansionSummary | None) -> str:
    out = ['<h2 id="plan">Plan</h2>']
    if summary is None:
        return "\n".join(out + [_skip("No plan given (no expansion summary); section skipped.")])
    plan = summary.plan
    t = plan.target
    target = t.kind + ("" if t.kind == "balance" else f"={t.value:g}")
    budget = "yes: counts were scaled down to the budget" if plan.budget_limited else "no"
    out.append(f"<p>Target <code>{_e(target)}</code>, {len(plan.items)} synthetic items, run seed "
               f"{_e(plan.seed)}; budget-limited: {_e(budget)}.</p>")
    have = {c.name: c.n_cases for c in summary.before.classes}
    rows = [[_e(k), str(have[k]), f"+{v}", str(have[k] + v)] for k, v in plan.counts.items()]
    out.append(_table(["rare class", "cases before", "synthetic", "cases after"], rows))
    if plan.notes:
        out.append("<ul>" + "".join(f"<li>{_e(n)}</li>" for n in plan.notes) + "</ul>")
    rows = [[_e(i.name), _e(i.class_name), _e(i.generator), _e(i.host),
             "spec default" if i.diameter_mm is None else f"{i.diameter_mm:.1f}", _e(i.seed)]
            for i in plan.items[:PLAN_ROWS]]
    if rows:
        out.append(_table(["item", "class", "generator", "host", "diameter mm", "seed"], rows))
    if len(plan.items) > PLAN_ROWS:
        out.append(f"<p>… and {len(plan.items) - PLAN_ROWS} more items (see the summary JSON).</p>")
    return "\n".join(out)


# ------------------------------------------------------------------ 3. gallery
def _gallery_section(manifest: list[ManifestLine] | None, root, summary: ExpansionSummary | None, drr: list[Path],
                     max_gallery: int, files: Path) -> str:
    out = ['<h2 id="gallery">Gallery</h2>']
    if manifest is None:
        out.append(_skip("No manifest (synthetic_manifest.jsonl) given; no synthetic cases shown."))
    elif not manifest or max_gallery == 0:
        out.append(_skip("No synthetic cases to show (empty manifest or max_gallery=0)."))
    else:
        values = {c.name: c.value for c in summary.before.classes} if summary is not None else {}
        for k, m in enumerate(_pick(manifest, max_gallery)):
            name = f"case_{k}_{_slug(m.name)}.png"
            save_png(case_montage(m, root, label_value=values.get(m.class_name)), files / name)
            cap = (f"{m.name} — class {m.class_name}, host {m.host}, diameter {m.lesion.diameter_mm:.1f} mm, "
                   f"seed {m.seed}")
            out.append(f"<figure>{_img(name, m.name)}<figcaption>{_e(cap)}</figcaption></figure>")
        out.append("<p>Each case: axial | coronal | sagittal through the lesion centre (patient right on the "
                   "image left), every label outlined, the lesion in red. Top: whole slices; bottom: a field of view "
                   "four lesion diameters wide.</p>")
    if drr:
        out.append("<h3>DRRs</h3>")
        for k, p in enumerate(drr):
            name = f"drr_{k}_{_slug(p.stem)}.png"
            shutil.copyfile(p, files / name)
            out.append(f"<figure>{_img(name, p.name)}<figcaption>{_e(p.name)}</figcaption></figure>")
    else:
        out.append(_skip("No DRR images given."))
    return "\n".join(out)


def _pick(manifest: list[ManifestLine], n: int) -> list[ManifestLine]:
    """Up to ``n`` lines, round-robin over classes (manifest order within a class)."""
    by_class: dict[str, list[ManifestLine]] = {}
    for m in manifest:
        by_class.setdefault(m.class_name, []).append(m)
    out: list[ManifestLine] = []
    queues = list(by_class.values())
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop(0))
    return out


def outline_rgb(rgb: np.ndarray, ids: np.ndarray, *, colors: np.ndarray, highlight: int | None = None) -> np.ndarray:
    """Draw the boundary of every non-zero region of the (H, W) id image ``ids`` onto ``rgb`` (H, W, 3):
    a pixel is on a boundary when one of its 4 neighbours has another id. The boundary of region
    ``highlight`` is drawn in red, two pixels wide (its edge and its neighbours' edge)."""
    pad = np.pad(ids, 1, mode="edge")
    edge = np.zeros(ids.shape, bool)
    for dr, dc in ((0, 1), (2, 1), (1, 0), (1, 2)):
        edge |= pad[dr:dr + ids.shape[0], dc:dc + ids.shape[1]] != ids
    edge &= ids > 0
    out = rgb.copy()
    out[edge] = colors[np.clip(ids[edge], 0, len(colors) - 1)]
    if highlight is not None:  # 2 px: the lesion's own boundary and the ring just outside it
        m = np.pad(ids == highlight, 1)
        near = m[:-2, 1:-1] | m[2:, 1:-1] | m[1:-1, :-2] | m[1:-1, 2:] | m[1:-1, 1:-1]
        out[edge & near] = LESION_RGB
    return out


def case_montage(line: ManifestLine, root: str | Path | None, *, label_value: int | None = None,
                 height: int = 220) -> np.ndarray:
    """RGB uint8 montage of one manifest line: axial | coronal | sagittal through the lesion centre, whole
    slices (top row) over a field of view four lesion diameters wide (bottom row); labels outlined."""

    base = Path(root) if root is not None else Path("/")  # absolute paths stay as they are
    ct, lab = read_pair(base / line.outputs.image, base / line.outputs.label)
    cct, clab = ct.to_canonical(), lab.to_canonical()
    les = line.lesion
    centre = np.clip(np.rint(cct.world_to_voxel(les.center_mm)).astype(int), 0, np.asarray(cct.shape) - 1)
    if label_value is None:
        label_value = int(clab.numpy()[tuple(centre)])
    win = WINDOWS["lung" if les.organ.startswith("lung") else "default"]
    views = list(zip(orthogonal_views(cct, centre), orthogonal_views(clab, centre)))
    n = np.asarray(cct.shape) - 1
    # the centre's (row, col) in each view, after the display flips of `orthogonal_views`
    rcs = [(n[1] - centre[1], n[0] - centre[0]), (n[2] - centre[2], n[0] - centre[0]),
           (n[2] - centre[2], n[1] - centre[1])]
    colors = label_colors(int(clab.numpy().max()) + 1)
    top = _tile_row(views, None, win, colors, label_value, height)
    zoom = _tile_row(views, [(rc, [2.0 * les.diameter_mm / p for p in pix]) for rc, ((_, pix), _) in zip(rcs, views)],
                     win, colors, label_value, height)
    width = max(top.shape[1], zoom.shape[1])
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in (top, zoom)]
    return np.concatenate([rows[0], np.full((4, width, 3), 255, np.uint8), rows[1]], axis=0)


def _tile_row(views, crops, win, colors, highlight: int, height: int) -> np.ndarray:
    """One row of tiles: each view windowed, resampled to square pixels, labels outlined; ``crops`` gives
    per view ((row, col) centre, (row, col) half-size in pixels) or None for whole slices."""

    tiles = []
    for k, ((img, pix), (ids, _)) in enumerate(views):
        if crops is not None:
            img, ids = (crop_centred(a, *crops[k]) for a in (img, ids))
        gray = to_square(window(img, center=win[0], width=win[1]), pix, nearest=False, height=height)
        rgb = np.repeat((gray * 255).astype(np.uint8)[..., None], 3, axis=2)
        sq = to_square(ids.astype(np.int32), pix, nearest=True, height=height).astype(np.int64)
        tiles += [outline_rgb(rgb, sq, colors=colors, highlight=highlight), np.full((height, 3, 3), 255, np.uint8)]
    return np.concatenate(tiles[:-1], axis=1)


# ------------------------------------------------------------------ 4. evaluation
def _evaluation_section(ev: Evaluation | None, files: Path) -> str:
    out = ['<h2 id="evaluation">Evaluation</h2>']
    if ev is None:
        return "\n".join(out + [_skip("No evaluation (evaluation.json) given; section skipped.")])
    rare = set(ev.rare)
    out.append(f"<p>Task <code>{_e(ev.task)}</code> on <code>{_e(ev.dataset)}</code>, {_e(ev.resolution)}; "
               f"{len(ev.seeds)} seeds ({_e(', '.join(str(s) for s in ev.seeds))}), {ev.seconds:.0f} s.</p>")
    split = dataclasses.asdict(ev.split)
    out.append(_table(["split", *split], [["items", *(_e(v) for v in split.values())]]))
    out.append(_arms_table(ev))
    out += _curves(ev, files)
    for k, (name, what, _, arms, deltas, verdict, flags) in enumerate(ev.results()):
        out.append(f'<h3 id="test-{k}">Test set {_e(name)}: {_e(what)}</h3>')
        out += _metric_tables(arms, ev.classes, rare)
        out.append(_deltas(arms, deltas, rare))
        out.append(f'<p class="verdict"><b>Verdict:</b> {_e(verdict)}</p>')
        if flags:
            out.append('<ul class="flags">' + "".join(f"<li>{_e(f)}</li>" for f in flags) + "</ul>")
        elif len(ev.seeds) < 2:
            out.append(_skip("One seed: no seed spread to judge another class's drop against."))
        else:
            out.append("<p>No other class drops by more than its seed spread when synthetic cases are added.</p>")
    return "\n".join(out)


def _arms_table(ev: Evaluation) -> str:
    """What each arm trained on: training items, how many synthetic, the loss's class weights."""
    synthetic = [sum(i.startswith("synth_") for i in a.train_ids) if a.train_ids else None for a in ev.arms.values()]
    weights = ["–" if a.class_weights is None else _e(", ".join(f"{k} {v:g}" for k, v in a.class_weights.items()))
               for a in ev.arms.values()]
    rows = [["training items", *(_e(a.n_train) for a in ev.arms.values())],
            ["of them synthetic", *("–" if n is None else _e(n) for n in synthetic)],
            ["loss class weights", *weights]]
    return _table(["arm", *ev.arms], rows)


def _metric_tables(arms: dict[str, ArmResult], classes: list[str], rare: set[str]) -> list[str]:
    out = []
    metrics = list(dict.fromkeys(m for a in arms.values() for c in a.summary.values() for m in c))
    for metric in metrics:
        out.append(f"<h4>{_e(metric)} (mean ± std over seeds; best arm in bold)</h4>")
        rows = []
        for c in classes:
            cells = [a.summary.get(c, {}).get(metric) for a in arms.values()]  # organs have Dice only
            means = [x.mean for x in cells if x is not None and x.mean is not None]
            rows.append([_name_cell(c, c in rare), *(_stat_cell(x, best=bool(means) and x is not None
                                                                and x.mean == max(means)) for x in cells)])
        out.append(_table(["class", *arms], rows, [c in rare for c in classes]))
    return out


def _stat_cell(x: Stat | None, *, best: bool) -> str:
    if x is None or x.mean is None:
        return "–"
    text = f"{x.mean:.3f} ± {x.std:.3f}"
    return f"<b>{_e(text)}</b>" if best else _e(text)


def _spread(arms: dict[str, ArmResult], comparison: str, name: str, metric: str) -> float | None:
    """The seed spread of ``"A - B"`` for one class and metric: the sum of the two arms' stds."""
    a, _, b = comparison.partition(" - ")
    stats = [arms[x].summary.get(name, {}).get(metric) if x in arms else None for x in (a, b)]
    return None if any(s is None for s in stats) else stats[0].std + stats[1].std


def _delta_cell(v: float | None, spread: float | None) -> str:
    if v is None:
        return "–"
    cls = "pos" if v > 0 else "neg" if v < 0 else ""
    text = f"{v:+.3f}" + ("" if spread is None else f" (spread {spread:.3f})")
    if spread is not None and abs(v) > spread:
        text = f"<b>{_e(text)}</b>"
    return f'<span class="{cls}">{text}</span>'


def _deltas(arms: dict[str, ArmResult], deltas: Deltas, rare: set[str]) -> str:
    out = [("<h4>Differences vs real and weighted (difference of means; the seed spread, the sum of the two "
            "stds, in brackets; bold where the difference is larger)</h4>")]
    if not deltas:
        out.append(_skip("No deltas: the evaluation has no arm to compare with real or weighted."))
        return "\n".join(out)
    metrics = list(dict.fromkeys(m for d in deltas.values() for c in d.values() for m in c))
    rows, marks = [], []
    for comp, per_class in deltas.items():
        for c, vals in per_class.items():
            cells = [_delta_cell(vals.get(m), _spread(arms, comp, c, m)) for m in metrics]  # organs have Dice only
            rows.append([_e(comp), _name_cell(c, c in rare), *cells])
            marks.append(c in rare)
    out.append(_table(["comparison", "class", *metrics], rows, marks))
    return "\n".join(out)


def _curves(ev: Evaluation, files: Path) -> list[str]:
    """Per rare class (else the last class) the validation score over training steps, per arm and seed."""
    out = ["<h3>Validation learning curves</h3>"]
    metric = {"seg": "dice", "cls": "recall"}[ev.task]
    drawn = False
    for k, c in enumerate(ev.rare or ev.classes[-1:]):
        series = {}
        for arm, a in ev.arms.items():
            for run in a.per_seed:
                pts = [(float(p.step), p.val[c]) for p in run.curve if np.isfinite(p.val.get(c, np.nan))]
                if pts:
                    series.setdefault(arm, []).append(pts)
        if not series:
            continue
        name = f"curve_{k}_{_slug(c)}.png"
        save_png(line_chart(series, title=f"validation {metric} of {c}", xlabel="training step", ylabel=metric),
                 files / name)
        out.append(f"<figure>{_img(name, 'learning curve ' + c)}<figcaption>Validation {_e(metric)} of "
                   f"{_e(c)} during training: thin lines one per seed, thick line the mean over seeds."
                   "</figcaption></figure>")
        drawn = True
    if not drawn:
        out.append(_skip("No learning curves recorded for the rare classes."))
    return out
