"""The ``synthgen`` command: parses arguments, calls the library, prints.

Errors a user can cause (`synthgen.errors.InputError`) print one line on
stderr and exit with status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence

from synthgen._version import __version__
from synthgen.errors import InputError

EXIT_USAGE = 2


def _cmd_info(args: argparse.Namespace) -> int:
    from synthgen.io import as_label_map, read
    from synthgen.report.info import describe, format_description, looks_like_label_map

    if args.example:
        from synthgen.data import example_ct

        vols = list(example_ct(progress=args.progress))
    elif args.path is None:
        raise InputError("info needs a PATH (or --example)")
    elif args.labels is not None:
        from synthgen.io import read_pair

        vols = list(read_pair(args.path, args.labels, vocab=_vocab(args.vocab), allow_one_slice=True,
                              progress=args.progress))
    else:
        vocab = _vocab(args.vocab)
        vol = read(args.path, kind="label" if args.as_labels else None, vocab=vocab, allow_one_slice=True,
                   progress=args.progress)
        if not args.as_labels and looks_like_label_map(vol):
            vol = as_label_map(vol, vocab=vocab, name=str(args.path))
        vols = [vol]
    infos = [describe(v, voxel=args.voxel) for v in vols]
    if args.json:
        print(json.dumps(infos if len(infos) > 1 else infos[0], indent=2))
    else:
        print("\n\n".join(format_description(i) for i in infos))
    return 0


def _vocab(path: str | None):
    if path is None:
        return None
    from synthgen.vocab import Vocabulary

    return Vocabulary.from_file(path)


def _cmd_convert(args: argparse.Namespace) -> int:
    from synthgen.io.record import Record
    from synthgen.outputs import convert

    out, record_path = convert(args.input, args.output, format=args.format, as_labels=args.as_labels,
                               overwrite=args.overwrite, progress=args.progress)
    print(f"wrote {out} ({Record.read(record_path).parameters['format']}) and {record_path.name}")
    return 0


def _cmd_phantom(args: argparse.Namespace) -> int:
    from synthgen.config import load_config
    from synthgen.data import PhantomConfig
    from synthgen.files.safepath import safe_name
    from synthgen.generate.phantom import run

    safe_name(args.name, what="--name")
    cfg = load_config(PhantomConfig, paths=args.config, overrides=args.overrides)
    paths = run(cfg, args.out, name=args.name, overwrite=args.overwrite)
    for role, p in paths.items():
        print(f"{role:8s} {p}")
    return 0


def _cmd_drr(args: argparse.Namespace) -> int:
    from synthgen.config import load_config
    from synthgen.drr.job import DRRConfig, run
    from synthgen.io import read, read_pair

    overrides = list(args.overrides)
    flags = {
        "views": args.view, "geometry": args.geometry, "size": args.size, "spacing_mm": args.spacing,
        "sdd_mm": args.sdd, "seed": args.seed, "physics.kev": args.kev, "physics.photons_per_pixel": args.dose,
        "physics.method": args.method, "physics.scatter_to_primary": args.scatter,
    }
    if args.kvp is not None:
        flags["physics.kvp"], flags["physics.kev"] = args.kvp, "null"
    for key, value in flags.items():
        if value is not None:
            overrides.append(f"{key}={_dotlist_value(value)}")
    cfg = load_config(DRRConfig, paths=args.config, overrides=overrides)
    if args.labels:
        ct, labels = read_pair(args.ct, args.labels, progress=args.progress)
    else:
        ct, labels = read(args.ct, progress=args.progress), None
    inputs = [args.ct] + ([args.labels] if args.labels else [])
    written, config_path = run(ct, cfg, args.out, labels=labels, inputs=inputs, overwrite=args.overwrite,
                               progress=args.progress)
    for view, paths in written.items():
        print(f"{view}: " + ", ".join(p.name for p in paths.values()))
    print(f"config   {config_path}")
    return 0


def _dotlist_value(value) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_dotlist_value(v) for v in value) + "]"
    return str(value)


def _cmd_lesion_insert(args: argparse.Namespace) -> int:
    from synthgen.lesions.job import run
    from synthgen.lesions.spec import LesionSpec, load_specs

    if args.spec:
        specs = load_specs(args.spec)
    else:
        diameter = None if args.diameter is None else args.diameter[0] if len(args.diameter) == 1 else tuple(args.diameter)
        specs = [LesionSpec(type=args.type, organ=args.organ, diameter_mm=diameter, count=args.count,
                            phase=args.phase, seed=args.seed, margin_mm=args.margin, necrosis=args.necrosis,
                            rim=args.rim, mass_effect_mm=args.mass_effect, shape=args.shape,
                            location=tuple(args.location) if args.location else "auto")]
    from synthgen.io import read_pair

    ct, labels = read_pair(args.ct, args.labels, progress=args.progress)
    result, paths = run(ct, labels, specs, args.out, inputs=[args.ct, args.labels], overwrite=args.overwrite,
                        preview=args.preview)
    for les in result.lesions:
        centre = ", ".join(f"{c:.1f}" for c in les.center_mm)
        origin = (f", LIDC annotation {les.shape['annotation_id']} ({les.shape['patient_id']})"
                  if les.shape.get("source") == "lidc" else "")
        print(f"{les.label} ({les.label_id}): {les.diameter_mm:.1f} mm at ({centre}) mm, "
              f"{les.volume_ml:.2f} ml, mean {les.mean_hu:.0f} HU, {les.phase}{origin}")
    for role, p in paths.items():
        print(f"{role:8s} {p}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from synthgen.recipes import run_recipe

    results = run_recipe(args.recipe, args.out, overwrite=args.overwrite, progress=args.progress)
    for step, paths in results.items():
        for role, p in paths.items():
            print(f"{step}: {role:8s} {p}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from synthgen.config import load_config
    from synthgen.train import TrainConfig, train

    if args.stage == "export":
        from synthgen.pipelines.latent_ct import MaskToCTPipeline

        if not args.to:
            raise InputError("train export needs --to DEST (the pipeline folder to write)")
        dest = MaskToCTPipeline.from_pretrained(args.out).save_pretrained(args.to, half=args.half,
                                                                           overwrite=args.overwrite)
        print(f"exported {args.out} -> {dest}")
        return 0
    if not args.config:
        raise InputError("train needs --config (e.g. configs/train_cpu.yaml)")
    cfg = load_config(TrainConfig, paths=args.config, overrides=args.overrides)
    res = train(args.stage, cfg, args.out, resume=args.resume, progress=args.progress)
    losses = res["losses"]
    if args.stage == "texture":
        print(f"texture: bank cut from the training patients in {res['seconds']:.0f} s")
    elif losses:
        print(f"{args.stage}: {len(losses)} steps in {res['seconds']:.0f} s, loss {losses[0]:.4f} -> "
              f"{sum(losses[-20:]) / len(losses[-20:]):.4f} (mean of last 20)")
    else:
        print(f"{args.stage}: already trained to its last step")
    print(f"weights in {args.out}")
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from synthgen.fidelity import format_check
    from synthgen.files.safepath import safe_name
    from synthgen.generate.job import GenerateConfig, run
    from synthgen.io.record import Record

    if args.stem is not None:
        safe_name(args.stem, what="--stem")
    cfg = GenerateConfig(**_given(args, GenerateConfig))
    labels = None
    if args.labels:
        from synthgen.io import as_label_map, read

        labels = as_label_map(read(args.labels, kind="label"), name=args.labels)
        if args.spacing is not None:  # the label map keeps its grid unless --spacing is given
            labels = labels.resample(cfg.spacing)
    paths = run(cfg, args.out, labels=labels, inputs=[args.labels] if args.labels else [],
                overwrite=args.overwrite, progress=args.progress)
    record = Record.read(paths["record"])
    for w in record.details.get("warnings", []):
        print(f"prompt: {w}", file=sys.stderr)
    if "check" in paths:
        print(format_check(json.loads(paths["check"].read_text(encoding="utf-8"))))
    done = record.parameters
    print(f"generated {'x'.join(map(str, done['shape']))} at {' x '.join(f'{s:g}' for s in done['spacing_mm'])} mm "
          f"in {record.details['seconds']:.1f} s ({done['steps']} {done['scheduler']} steps, seed {record.seed})")
    for role, p in paths.items():
        print(f"{role:8s} {p}")
    return 0


def _given(args: argparse.Namespace, schema) -> dict:
    """The options of ``args`` named like fields of the config dataclass ``schema`` that were given
    (their argparse default is None, so the config's own default stays in one place)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(schema)
            if getattr(args, f.name, None) is not None}


def _cmd_check(args: argparse.Namespace) -> int:
    from synthgen.fidelity import check, check_phase, format_check
    from synthgen.files.atomic import check_writable
    from synthgen.io import read_pair
    from synthgen.io.record import write_json
    from synthgen.pipelines.latent_ct import MaskToCTPipeline

    check_phase(args.phase)
    if args.out:
        check_writable(args.out, overwrite=args.overwrite)
    ct, labels = read_pair(args.ct, args.labels, progress=args.progress)
    try:  # the weights carry the training thumbnails and the organ segmenter
        pipe = MaskToCTPipeline.from_pretrained(args.weights)
    except InputError:
        if args.weights:
            raise
        pipe = None  # no shipped weights: the check without memorisation or segmenter
    result = pipe.check(ct, labels, phase=args.phase) if pipe is not None else check(ct, labels, phase=args.phase)
    print(format_check(result))
    if args.out:
        print(f"{'check':8s} {write_json(result, args.out, overwrite=args.overwrite)}")
    return 0


def _cmd_expand(args: argparse.Namespace) -> int:
    from synthgen.expand.job import ExpandSettings, expand_job

    settings = ExpandSettings(rare=args.rare, rare_fraction=args.rare_fraction, target=args.target,
                              budget=args.budget, size=args.size, sizes=_numbers(args.sizes, "--sizes"),
                              phase=args.phase, seed=args.seed, hold_out=args.hold_out, generator=args.generator,
                              dry_run=args.dry_run, analyse_only=args.analyse, overwrite=args.overwrite)
    paths = expand_job(args.dataset, settings, out=args.out, progress=args.progress)
    for role, p in paths.items():
        print(f"{role:8s} {p}")
    return 0


def _numbers(text: str | None, flag: str) -> list[float] | None:
    """``"6,8,12"`` -> [6.0, 8.0, 12.0]; None stays None."""
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()] or None
    except ValueError:
        raise InputError(f"{flag} takes comma-separated numbers (mm), e.g. 6,8,12; got {text!r}") from None


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from synthgen.config import load_config
    from synthgen.expand.evaluate import EvalConfig
    from synthgen.expand.evaluation import ARMS
    from synthgen.expand.job import evaluate_job

    flags = {"seeds": args.seeds, "steps": args.steps, "rare": args.rare}
    overrides = [f"{k}={v}" for k, v in flags.items() if v is not None] + list(args.overrides)
    cfg = load_config(EvalConfig, paths=args.config, overrides=overrides)
    if args.arms is not None and args.arms.strip() != "all":
        cfg = dataclasses.replace(cfg, arms=[a.strip() for a in args.arms.split(",") if a.strip()])
    elif args.arms is not None:
        cfg = dataclasses.replace(cfg, arms=list(ARMS))
    paths = evaluate_job(args.dataset, cfg, args.out, expanded=args.expanded, tests=args.test, task=args.task,
                         overwrite=args.overwrite, progress=args.progress)
    for role, p in paths.items():
        print(f"{role:10s} {p}")
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from synthgen.data.sources import SOURCES, describe_sources, fetch

    if args.data_command == "list":
        print(describe_sources())
        return 0
    names = list(SOURCES) if args.names == ["all"] else args.names
    failed = []
    for name in names:
        try:
            fetch(name)
        except InputError as e:
            if len(names) == 1:
                raise
            failed.append(name)
            print(f"synthgen data: {e}", file=sys.stderr)
    return EXIT_USAGE if failed else 0


def _add_common(parser: argparse.ArgumentParser, default) -> None:
    parser.add_argument("--debug", action="store_true", default=default, help="show full tracebacks on errors")
    parser.add_argument("--quiet", "-q", action="store_true", default=default, help="no progress bars")


def _subparser_class(common: argparse.ArgumentParser):
    class SubParser(argparse.ArgumentParser):
        def __init__(self, *a, **kw):
            kw.setdefault("parents", [common])
            super().__init__(*a, **kw)

    return SubParser


def _generate_config():
    from synthgen.generate.job import GenerateConfig

    return GenerateConfig


def _config_defaults_help(schema: Callable[[], type]) -> type[argparse.HelpFormatter]:
    """A help formatter that adds ``(default X)`` to each option left None in argparse, X being the
    default of the field of that name in the config dataclass ``schema()``: the default lives in
    the config alone, and ``schema`` (a job module: torch) is imported only when help is shown."""

    class ConfigDefaultsHelp(argparse.HelpFormatter):
        def _get_help_string(self, action: argparse.Action) -> str:
            text = action.help or ""
            field = {f.name: f for f in dataclasses.fields(schema())}.get(action.dest)
            if field is None or action.default is not None or action.nargs == 0:
                return text
            if field.default is not dataclasses.MISSING:
                value = field.default
            elif field.default_factory is not dataclasses.MISSING:
                value = field.default_factory()
            else:  # a required field
                return text
            if value is None:
                return text
            shown = " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
            return f"{text} (default {shown.replace('%', '%%')})".strip()

    return ConfigDefaultsHelp


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="synthgen",
        description="Synthetic data engine for medical imaging: labelled CT, lesions, DRRs, dataset expansion.",
    )
    parser.add_argument("--version", action="version", version=f"synthgen {__version__}")
    _add_common(parser, False)
    # The same options after the command name; SUPPRESS keeps the top-level value unless given.
    common = argparse.ArgumentParser(add_help=False)
    _add_common(common, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_subparser_class(common))

    p = sub.add_parser("info", help="describe a volume: geometry, HU range, label summary")
    p.add_argument("path", nargs="?", help="NIfTI/NRRD/MHA/MHD file, DICOM file or DICOM series folder")
    p.add_argument("--example", action="store_true", help="describe the example CT and its label map")
    p.add_argument("--labels", metavar="L", help="label map of PATH (checked to share its grid) to summarise")
    p.add_argument("--as-labels", action="store_true", help="read PATH itself as a label map")
    p.add_argument("--vocab", help="label vocabulary file (JSON or CSV) for label maps")
    p.add_argument("--voxel", nargs=3, type=int, metavar=("I", "J", "K"), help="also print this voxel's world position")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("convert", help="convert between NIfTI, NRRD, MHA/MHD and DICOM")
    p.add_argument("input", help="input file or DICOM series folder")
    p.add_argument("output", help="output path: its extension picks the format; a folder means a DICOM series")
    p.add_argument("--format", choices=["nifti", "nrrd", "mha", "dicom"], help="force the output format")
    p.add_argument("--as-labels", action="store_true", help="the input is a label map (integer ids)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("phantom", help="write a procedural torso phantom CT + label map")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--name", default="phantom", help="file name stem (default: phantom)")
    p.add_argument("--config", action="append", default=[], help="YAML config; repeat to merge overrides in order")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. seed=3 spacing=[2,2,2]")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.set_defaults(func=_cmd_phantom)

    p = sub.add_parser("drr", help="render X-ray images (DRRs) from a CT, with projected labels")
    p.add_argument("ct", help="CT volume in HU (any format synthgen reads)")
    p.add_argument("--labels", metavar="L", help="label map on the CT's grid: projected to masks per structure")
    p.add_argument("--view", action="append", help="PA, AP, LAT, RLAT or C-arm angles (LAO30, RAO20_CAU10); repeatable")
    p.add_argument("--geometry", action="append", help="explicit geometry JSON (schema in README); repeatable")
    p.add_argument("--size", type=int, nargs="+", metavar="N", help="detector pixels: N or ROWS COLS (default 512)")
    p.add_argument("--spacing", type=float, help="detector pixel spacing in mm (default: fit the volume)")
    p.add_argument("--sdd", type=float, help="source-to-detector distance in mm (default 1020)")
    energy = p.add_mutually_exclusive_group()
    energy.add_argument("--kvp", type=float, help="polyenergetic tungsten spectrum at this tube voltage (default 120)")
    energy.add_argument("--kev", type=float, help="monoenergetic beam at this energy in keV")
    p.add_argument("--dose", type=float, help="photons per pixel before attenuation: adds quantum noise")
    p.add_argument("--scatter", type=float, help="scatter-to-primary ratio of the scatter approximation")
    p.add_argument("--method", choices=["joseph", "siddon"], help="ray casting: joseph (fast) or siddon (exact)")
    p.add_argument("--seed", type=int, help="noise seed (view k uses seed + k)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--config", action="append", default=[], help="YAML config (configs/drr.yaml); repeatable")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. physics.filtration_mm_al=3")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.set_defaults(func=_cmd_drr)

    p = sub.add_parser("lesion", help="synthetic lesions in real scans")
    lesion_sub = p.add_subparsers(dest="lesion_command", metavar="ACTION", required=True,
                                  parser_class=_subparser_class(common))
    p = lesion_sub.add_parser("insert", help="insert tumours, cysts, metastases, nodules, haemorrhages into a CT")
    p.add_argument("ct", help="CT in HU")
    p.add_argument("--labels", required=True, metavar="L", help="its label map (the host organ must be in it)")
    p.add_argument("--organ", default="liver", help="host organ: a vocabulary name or group (liver, kidney, lung, ...)")
    p.add_argument("--type", default="tumor", help="tumor, cyst, metastasis, nodule_solid, nodule_ground_glass, "
                   "nodule_part_solid, hemorrhage")
    p.add_argument("--diameter", type=float, nargs="+", metavar="MM",
                   help="sphere-equivalent diameter in mm, or MIN MAX to sample (default: 20 mm; "
                        "LIDC nodule shapes: the real sizes of the type)")
    p.add_argument("--shape", default="auto", help="auto, procedural or lidc (real nodule outlines; auto: lidc "
                   "for nodules when that data source is installed)")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--phase", default="auto", help="non_contrast, arterial, portal_venous, delayed or auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--margin", type=float, default=3.0, help="mm from the organ surface and other lesions")
    p.add_argument("--necrosis", type=float, default=0.0, help="necrotic core as a fraction of the radius (0-0.8)")
    rim = p.add_mutually_exclusive_group()
    rim.add_argument("--rim", dest="rim", action="store_true", default=None, help="force an enhancing rim")
    rim.add_argument("--no-rim", dest="rim", action="store_false", help="no rim")
    p.add_argument("--mass-effect", type=float, default=0.0, metavar="MM", help="push surrounding tissue by up to MM")
    p.add_argument("--location", type=float, nargs=3, metavar=("X", "Y", "Z"), help="world RAS mm centre of the first lesion")
    p.add_argument("--spec", help="YAML list of lesion specs (replaces the options above)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--preview", action="store_true", help="write a PNG through each lesion with its outline")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.set_defaults(func=_cmd_lesion_insert)

    p = sub.add_parser("train", help="train the latent diffusion stack: vae, then ldm, then controlnet")
    p.add_argument("stage", help="vae | ldm | controlnet | segmenter | texture, or export (a run folder -> a pipeline folder)")
    p.add_argument("--config", action="append", default=[],
                   help="training config YAML (configs/train_cpu.yaml); repeat to merge")
    p.add_argument("--to", help="export: destination pipeline folder")
    p.add_argument("--half", action="store_true", help="export: store the weights as float16")
    p.add_argument("--overwrite", action="store_true", help="export: replace an existing destination")
    p.add_argument("--out", required=True, help="run folder: cache, checkpoints, previews, weights")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint of this stage")
    p.add_argument("overrides", nargs="*", help="config overrides key=value (e.g. vae_stage.steps=500)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("generate", help="generate a CT + label map from a prompt (and optionally a label map)",
                       formatter_class=_config_defaults_help(_generate_config))
    p.add_argument("prompt", help='e.g. "chest CT, 3 cm tumour in the liver"')
    p.add_argument("--labels", metavar="L", help="your label map (skips building one from the prompt)")
    p.add_argument("--size", type=int, nargs=3, metavar=("I", "J", "K"), help="voxels of the generated volume")
    p.add_argument("--spacing", type=float,
                   help="isotropic voxel size in mm (given with --labels: resample them to it, else they keep theirs)")
    p.add_argument("--steps", type=int, help="denoising steps")
    p.add_argument("--scheduler", help="ddim | dpm (DPM-Solver++, good at 10-20 steps); default: the weights' own")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (1 = none)")
    p.add_argument("--seed", type=int, help="seed of the initial noise and of the label map built from the prompt")
    p.add_argument("--format", choices=["nifti", "dicom"], help="CT output format")
    p.add_argument("--out", default="generated", help="output folder (default ./generated)")
    p.add_argument("--stem", help="file name stem")
    p.add_argument("--weights", help="pipeline folder (default: the shipped CPU weights)")
    p.add_argument("--check", action="store_true", default=None, help="run the fidelity check on the result")
    p.add_argument("--no-texture", dest="texture", action="store_false", default=None,
                   help="leave out the real-CT detail from the weights' texture bank (the model's output as decoded)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("check", help="fidelity check of a CT against its label map (HU, Dice, memorisation)")
    p.add_argument("ct")
    p.add_argument("labels")
    p.add_argument("--phase", default=None, help="contrast phase (default: estimated from the CT)")
    p.add_argument("--weights", default=None,
                   help="pipeline folder whose training thumbnails and segmenter to use (default: the shipped one)")
    p.add_argument("--out", default=None, help="also write the result as JSON here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("expand", help="find a dataset's rare classes and add synthetic cases for them")
    p.add_argument("dataset", help="nnU-Net/MSD folder, MONAI datalist .json or .csv of image,label / image,mask")
    p.add_argument("--analyse", "--analyze", action="store_true", help="only write the class analysis (JSON + PNG)")
    p.add_argument("--rare", default="auto", help="auto, or comma-separated class names")
    p.add_argument("--rare-fraction", type=float, default=0.5,
                   help="auto: rare = present in fewer cases than this fraction of the most common class")
    p.add_argument("--target", default="balance", help="balance | fraction=F | count=N (default balance)")
    p.add_argument("--budget", type=int, default=None, help="at most this many synthetic cases")
    p.add_argument("--size", type=float, default=None, metavar="MM",
                   help="one lesion diameter for every item (default: matched to the real lesions of the class, "
                        "or the lesion spec's default for a class no case contains)")
    p.add_argument("--sizes", default=None, metavar="MM,MM,...",
                   help="lesion diameters each item draws one of, e.g. 6,8,12 (instead of --size)")
    p.add_argument("--phase", default="auto",
                   help="contrast phase of inserted lesions: auto (matched to the real lesions, else estimated "
                        "per host), non_contrast, arterial, portal_venous or delayed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--generator", choices=["insert", "diffusion"], default="insert",
                   help="insert: lesion engine into real host scans (default); diffusion: whole new cases "
                        "from a prompt by the shipped text -> CT weights (segmentation sets)")
    p.add_argument("--hold-out", action="store_true",
                   help="plan on the fixed training split only, so `synthgen evaluate`'s val/test scans host nothing")
    p.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    p.add_argument("--out", default=None, help="write an expanded copy here (default: into the dataset folder)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing files that are not this run's own journaled outputs")
    p.set_defaults(func=_cmd_expand)

    p = sub.add_parser("evaluate", help="train a downstream model with and without the synthetic cases; report")
    p.add_argument("dataset", help="the real dataset (as for expand)")
    p.add_argument("--expanded", default=None,
                   help="folder holding the synthetic cases and synthetic_manifest.jsonl (default: the dataset)")
    p.add_argument("--test", action="append", default=[], metavar="OTHER",
                   help="an external test set (any layout expand reads; classes matched by name), never trained or "
                        "validated on; repeat for several. The dataset's own test split is still reported")
    p.add_argument("--arms", default=None,
                   help="comma-separated arms to train (default all): real, weighted, real+synthetic, "
                        "weighted+synthetic, synthetic-only-positives")
    p.add_argument("--task", choices=["seg", "cls"], default=None, help="check the dataset is this kind of task")
    p.add_argument("--seeds", type=int, default=None, help="seeds per arm (default 3)")
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default: the config's)")
    p.add_argument("--rare", default=None, help="auto, or comma-separated class names to judge")
    p.add_argument("--config", action="append", default=[], help="EvalConfig YAML (configs/evaluate.yaml)")
    p.add_argument("--out", default="synthgen_evaluation", help="output folder (evaluation.json, report.html)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing evaluation in --out")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the config, e.g. arms=[real,weighted]")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("data", help="the sources of real CT: list them, fetch them (the one download step)")
    data_sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True,
                                parser_class=_subparser_class(common))
    p = data_sub.add_parser("list", help="each source: installed or not, where, its patients")
    p.set_defaults(func=_cmd_data)
    p = data_sub.add_parser("fetch", help="download / install sources and check their hashes")
    p.add_argument("names", nargs="+", metavar="NAME", help="source names (see `synthgen data list`), or all")
    p.set_defaults(func=_cmd_data)

    p = sub.add_parser("run", help="run a recipe (pipelines/*.yaml): a list of engine steps")
    p.add_argument("recipe", help="recipe YAML, e.g. pipelines/quickstart.yaml")
    p.add_argument("--out", required=True, help="output folder (one sub-folder per step)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.set_defaults(func=_cmd_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come anywhere, also after options (argparse alone needs them last).
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    args.progress = not args.quiet
    try:
        return int(args.func(args) or 0)
    except InputError as e:
        if args.debug:
            raise
        print(f"synthgen {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("synthgen: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
