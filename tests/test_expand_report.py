"""synthgen.expand.report: the static HTML report of an expansion, checked as files and in Chromium."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from synthgen.errors import InputError
from synthgen.expand.evaluation import EvalConfig, Evaluation
from synthgen.expand.report import write_report
from tests.conftest import write_toy_dataset

ARMS = ("real", "weighted", "real+synthetic")


@pytest.fixture(scope="module")
def expanded(tmp_path_factory):
    """A 4-case nnU-Net dataset with one tumour, expanded to 3 tumour cases: (root, summary, manifest)."""
    from synthgen.expand.analysis import analyse
    from synthgen.expand.dataset import read_dataset
    from synthgen.expand.generate import expand
    from synthgen.expand.manifest import read_manifest
    from synthgen.expand.plan import Target, make_plan
    from synthgen.expand.summary import ExpansionSummary, write_expansion_summary

    root = tmp_path_factory.mktemp("ds") / "Dataset042_Toy"
    write_toy_dataset(root, 4)
    ds = read_dataset(root)
    a = analyse(ds)
    plan = make_plan(ds, a, Target.parse("count=3"), seed=1)
    res = expand(ds, plan, progress=False)
    write_expansion_summary(ExpansionSummary.of(a, plan), root)
    summary = ExpansionSummary.read(root / "synthgen_expand.json")  # what the report reads: the file written
    manifest = read_manifest(root)
    assert [json.loads(json.dumps(m.to_dict())) for m in manifest] == [
        json.loads(x) for x in res.manifest.read_text().splitlines()]
    return root, summary, manifest


def example_evaluation() -> Evaluation:
    """An evaluation.json as synthgen.expand.evaluate writes it: 3 arms x 3 seeds, curves, deltas."""
    rng = np.random.default_rng(0)
    classes, seeds = ["liver", "kidney", "liver_tumor"], [0, 1, 2]
    base = {"real": 0.2, "weighted": 0.3, "real+synthetic": 0.5}
    arms = {}
    for arm, level in base.items():
        per_seed = []
        for s in seeds:
            metrics = {c: {m: round(float(np.clip((0.8 if c != "liver_tumor" else level) + rng.normal(0, 0.04), 0, 1)), 3)
                           for m in ("dice", "recall", "f1")} for c in classes}
            curve = []
            for st in (25, 50, 100, 150, 200):
                val = {"liver_tumor": round(level * st / 200 + float(rng.normal(0, 0.02)), 3),
                       "liver": round(0.8 * st / 200, 3)}
                curve.append({"step": st, "loss": round(1.0 / (1 + st / 50), 3),
                              "val_mean": round(float(np.mean(list(val.values()))), 3), "val": val})
            per_seed.append({"seed": s, "metrics": metrics, "curve": curve})
        summary = {c: {m: {"mean": float(np.mean([p["metrics"][c][m] for p in per_seed])),
                           "std": float(np.std([p["metrics"][c][m] for p in per_seed]))}
                       for m in ("dice", "recall", "f1")} for c in classes}
        arms[arm] = {"n_train": 24 if arm != "real+synthetic" else 42, "per_seed": per_seed, "summary": summary}
    deltas = {f"real+synthetic - {other}": {c: {m: round(arms["real+synthetic"]["summary"][c][m]["mean"]
                                                          - arms[other]["summary"][c][m]["mean"], 3)
                                                  for m in ("dice", "recall", "f1")} for c in ["liver_tumor"]}
              for other in ("real", "weighted")}
    return Evaluation.from_dict({
        "task": "seg", "dataset": "demo", "expanded": None, "resolution": "3.0 mm, 32x32x32 patches",
        "seeds": seeds, "classes": classes, "rare": ["liver_tumor"],
        "split": {"train": 24, "val": 6, "test": 12, "synthetic": 18, "synthetic_dropped": 2, "split_seed": 0},
        "split_ids": {"train": [], "val": [], "test": []}, "config": dataclasses.asdict(EvalConfig()),
        "arms": arms, "deltas": deltas,
        "verdict": "real+synthetic beats both arms on liver_tumor Dice by more than the seed spread",
        "seconds": 312.0})


@pytest.fixture(scope="module")
def report(expanded, tmp_path_factory):
    root, summary, manifest = expanded
    drr = tmp_path_factory.mktemp("drr") / "ap view.png"
    from synthgen.report.montage import save_png

    save_png(np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (48, 1)), drr)
    out = tmp_path_factory.mktemp("report")
    page = write_report(out, title="Toy <expansion> & report", summary=summary, manifest=manifest, root=root,
                        evaluation=example_evaluation(), drr_images=[drr], max_gallery=2)
    return page


def _img_srcs(text: str) -> list[str]:
    return re.findall(r'<img [^>]*src="([^"]+)"', text)


def test_report_files_sections_and_tables(report):
    out = report.parent
    assert report == out / "report.html"
    text = report.read_text()
    srcs = _img_srcs(text)
    # bar chart, 1 diameter histogram, 2 gallery cases, 1 DRR, 1 learning curve
    assert len(srcs) == 6
    from urllib.parse import unquote

    for s in srcs:
        assert not s.startswith(("/", "http:", "https:", "file:")) and ".." not in s
        p = (out / unquote(s)).resolve()
        assert p.is_file() and p.is_relative_to(out.resolve())
    assert not re.search(r"https?://", text) and "<script" not in text
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report_files"]
    for anchor in ("classes", "plan", "gallery", "evaluation"):
        assert f'id="{anchor}"' in text
    assert "Toy &lt;expansion&gt; &amp; report" in text  # escaped title
    assert re.search(r'<tr class="rare"><td>liver_tumor <span class="tag">RARE</span>', text)
    assert re.search(r"<td>(<b>)?0\.\d{3} ± 0\.\d{3}(</b>)?</td>", text)
    assert text.count("<h4>dice (mean ± std") == 1 and "<h4>recall" in text and "<h4>f1" in text
    assert "real+synthetic - weighted" in text and "beats both arms" in text
    assert "synth_liver_tumor_0000" in text and "host toy_" in text  # plan table + gallery caption
    assert "synthetic_dropped" in text and "32x32x32 patches" in text


def test_gallery_montage_outlines_the_lesion(expanded, tmp_path):
    from synthgen.expand.report import case_montage

    root, _, manifest = expanded
    img = case_montage(manifest[0], root, label_value=3)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    red = np.all(img == (255, 60, 60), axis=-1)
    assert red.sum() > 20  # the lesion outline, in the top row and the zoom row
    assert red[: img.shape[0] // 2].any() and red[img.shape[0] // 2:].any()


def test_sections_are_optional_and_inputs_checked(expanded, tmp_path):
    _, summary, manifest = expanded
    page = write_report(tmp_path / "empty", title="nothing")
    text = page.read_text()
    assert text.count('class="skip"') >= 4 and not _img_srcs(text)
    # no manifest: the histogram falls back to the planned sizes; the gallery says it has nothing
    text = write_report(tmp_path / "summary_only", title="s", summary=summary).read_text()
    assert "synthetic (planned)" in text or "planned ones" in text
    assert "No manifest" in text
    # a classification evaluation: other metrics, two arms, no curves or deltas
    doc = example_evaluation().to_dict()
    doc.update(task="cls", classes=["normal", "tumour"], rare=["tumour"], seeds=[0], deltas={},
               arms={a: {"n_train": 10, "per_seed": [{"seed": 0, "metrics": {}, "curve": [
                   {"step": st, "loss": 0.5, "val_mean": 0.4, "val": {"normal": 0.9, "tumour": st / 100}}
                   for st in (10, 20, 30)]}],
                   "summary": {"tumour": {"recall": {"mean": 0.5, "std": 0.0},
                                          "precision": {"mean": 0.25, "std": 0.1}}}} for a in ("real", "weighted")})
    text = write_report(tmp_path / "cls", title="c", evaluation=Evaluation.from_dict(doc)).read_text()
    assert "<h4>precision (mean" in text and "0.250 ± 0.100" in text
    assert "Validation recall of tumour" in text and len(_img_srcs(text)) == 1  # curves keyed "val" also drawn
    assert "No deltas: the evaluation has no arm to compare" in text and "<td>normal</td><td>–</td>" in text
    with pytest.raises(InputError, match="already exists; refusing to overwrite"):
        write_report(tmp_path / "empty", title="again")
    assert write_report(tmp_path / "empty", title="again", summary=summary, overwrite=True).read_text().count(
        "<img") == 2
    with pytest.raises(InputError, match="pass root="):
        write_report(tmp_path / "r1", title="t", manifest=manifest)
    with pytest.raises(InputError, match="summary must be an ExpansionSummary"):
        write_report(tmp_path / "r2", title="t", summary={"plan": {}})
    with pytest.raises(InputError, match="evaluation must be an Evaluation"):
        write_report(tmp_path / "r3", title="t", evaluation={"task": "seg"})
    # a malformed file is one line naming the file and the key, when it is read
    (tmp_path / "evaluation.json").write_text(json.dumps({**example_evaluation().to_dict(), "split": {"train": 1}}))
    with pytest.raises(InputError, match=r"evaluation.json: split: missing val, test, synthetic"):
        Evaluation.read(tmp_path / "evaluation.json")
    with pytest.raises(InputError, match="DRR image not found"):
        write_report(tmp_path / "r4", title="t", drr_images=[tmp_path / "nope.png"])
    (tmp_path / "fake.png").write_text("not a png")
    with pytest.raises(InputError, match="not a PNG"):
        write_report(tmp_path / "r5", title="t", drr_images=[tmp_path / "fake.png"])
    with pytest.raises(InputError, match="max_gallery"):
        write_report(tmp_path / "r6", title="t", max_gallery=-1)
    assert not any((tmp_path / f"r{k}").exists() for k in range(1, 7))  # nothing written on bad input


# ------------------------------------------------------------------ in a real browser
CHECK = """<script>window.onload = function () {
  var imgs = Array.from(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var pre = document.createElement("pre"); pre.id = "result";
  pre.textContent = "RESULT all=" + (ok === imgs.length) + " loaded=" + ok + " total=" + imgs.length;
  document.body.appendChild(pre);
};</script>"""


def _browser_check(page: Path, tmp_path: Path) -> tuple[bool, int, int]:
    """Load a copy of ``page`` (same folder, so relative links hold) with CHECK injected; parse its verdict."""
    probe = page.with_name("_probe_" + page.name)
    probe.write_text(page.read_text().replace("</head>", CHECK + "</head>", 1))
    try:
        proc = subprocess.run(
            [shutil.which("chromium"), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=10000", "--dump-dom",
             probe.resolve().as_uri()], capture_output=True, text=True, timeout=120, check=False)
    finally:
        probe.unlink()
    m = re.search(r"RESULT all=(true|false) loaded=(\d+) total=(\d+)", proc.stdout)
    assert m, f"no result from chromium (rc {proc.returncode}): {proc.stderr[-1500:]}"
    return m.group(1) == "true", int(m.group(2)), int(m.group(3))


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="chromium not installed; run .ci/run (it installs it) or apt-get install chromium")
def test_every_image_loads_in_headless_chromium(report, tmp_path):
    ok, loaded, total = _browser_check(report, tmp_path)
    assert (ok, loaded, total) == (True, 6, 6)
    # the check can fail: the same page with one PNG missing reports it
    broken = report.with_name("broken.html")
    src = _img_srcs(report.read_text())[0]
    broken.write_text(report.read_text().replace(f'src="{src}"', 'src="report_files/missing.png"', 1))
    try:
        ok, loaded, total = _browser_check(broken, tmp_path)
    finally:
        broken.unlink()
    assert (ok, loaded, total) == (False, 5, 6)
