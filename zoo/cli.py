"""The ``zoo`` command line: a thin layer that parses arguments and calls the public API.

    zoo list
    zoo card wmh_ensemble --format yaml
    zoo predict wmh_ensemble --input flair=FLAIR.nii.gz --input t1=T1.nii.gz -o out/
    zoo predict wmh_ensemble --variant flair --input-list cohort.csv -o out/ --shard 2/4
    zoo export wmh_ensemble --variant flair --format onnx -o wmh.onnx

Every error a user can cause is printed as one line ``zoo: error: <message>`` on stderr
(exit 2 for usage errors, 1 for everything else); ``--debug`` shows the traceback instead.
Heavy imports (``zoo``, TensorFlow, pandas) happen inside the command functions so that
argument parsing itself stays light. TensorFlow's start-up messages are hidden (its log level is
set before it is imported, :mod:`zoo.terminal`); commands that run a network print one line on
stderr with the device, threads and precision; ``--verbose`` shows the framework's messages.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Sequence

#: Column names accepted for the subject identifier in an ``--input-list`` CSV (first wins).
SUBJECT_COLUMNS = ("subject", "id")
#: Columns of the batch report CSV, in order.
REPORT_COLUMNS = ["subject", "status", "error_type", "error", "outputs", "volumes_ml", "seconds"]


class UsageError(Exception):
    """A command line that cannot be run as given (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises :class:`UsageError` instead of printing usage and exiting."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise UsageError(f"{message} (see '{self.prog} --help')")


# --- argument types ----------------------------------------------------------------------------
def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _option(text: str) -> tuple[str, Any]:
    import yaml

    key, value = _key_value(text)
    try:
        return key, yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as exc:
        problem = " ".join(str(exc).split())
        raise argparse.ArgumentTypeError(f"option {key}: value {value!r} is not valid YAML ({problem})")


def _shard(text: str) -> tuple[int, int]:
    i, sep, n = text.partition("/")
    try:
        i_, n_ = int(i), int(n)
    except ValueError:
        i_ = n_ = 0
    if not sep or not 1 <= i_ <= n_:
        raise argparse.ArgumentTypeError(
            f"expected i/n with 1 <= i <= n (e.g. 2/4 for the second of four shards), got {text!r}")
    return i_, n_


def build_parser() -> argparse.ArgumentParser:
    """The ``zoo`` argument parser (subcommands ``list``, ``card``, ``predict``)."""
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true",
                        help="show full tracebacks (and debug logging) instead of one-line errors")
    common.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's own start-up and log messages (hidden by default)")

    parser = _Parser(prog="zoo", description="Keras 3 model zoo for medical imaging.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("list", parents=[common], help="list the registered entries",
                       description="Print one row per registered entry.")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("card", parents=[common], help="show an entry's model card",
                       description="Print an entry's model card.")
    p.add_argument("name", metavar="NAME", help="entry name (see 'zoo list')")
    p.add_argument("--format", choices=["markdown", "yaml", "json"], default="markdown",
                   help="output format (default: markdown)")
    p.set_defaults(func=cmd_card)

    p = sub.add_parser(
        "predict", parents=[common], help="run an entry on one subject or a cohort",
        description="Predict on one subject (--input) or on every row of a CSV (--input-list).",
        epilog="--input-list CSV: a column 'subject' (or 'id') and one column per input name "
               "(e.g. flair,t1[,brain_mask]); empty cells leave an optional input out; relative "
               "paths are relative to the CSV's folder. Outputs go to OUT_DIR/<subject>/ and a "
               "report CSV is written; the exit status is 1 if any subject failed. --bids: "
               "OUT_DIR is a BIDS-derivative dataset (sub-*/[ses-*/]anat/*_space-orig_desc-*_"
               "mask|probseg.nii.gz with JSON sidecars, dataset_description.json), same report.")
    p.add_argument("name", metavar="NAME", help="entry name (see 'zoo list')")
    p.add_argument("--variant", help="variant (default: the card's default_variant)")
    w = p.add_mutually_exclusive_group()
    w.add_argument("--weights", metavar="PATH_OR_URL",
                   help="weights folder (member0.npz, ...), file or http(s) URL "
                        "(default: the card's weights)")
    w.add_argument("--untrained", action="store_true",
                   help="use the untrained architecture (weights=None)")
    p.add_argument("--option", action="append", type=_option, default=[], metavar="KEY=VALUE",
                   help="card option (value parsed as YAML, e.g. threshold=0.45, "
                        "inplane_spacing_mm=[1.0,1.0]); repeatable")
    p.add_argument("--resample", action="store_true",
                   help="resample inputs on another grid onto the reference input's grid")
    p.add_argument("--backend", choices=["auto", "keras", "onnx"], default=None,
                   help="run the networks with Keras or onnxruntime; auto: onnxruntime when "
                        "installed and the weights are trained (default: $ZOO_BACKEND, else the "
                        "card's inference.backend, else keras)")
    p.add_argument("--profile", metavar="NAME",
                   help="preprocessing profile of the card (default: the one belonging to the weights; "
                        "--weights upstream runs the authors' weights with their reference profile)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", action="append", type=_key_value, default=None,
                     metavar="NAME=PATH", help="one input image (repeatable, e.g. flair=FLAIR.nii.gz)")
    src.add_argument("--input-list", type=Path, metavar="CSV", help="a cohort CSV (see below)")
    src.add_argument("--bids", type=Path, metavar="DATASET_DIR",
                     help="a BIDS dataset: inputs found by subject, session and suffix (FLAIR, "
                          "T1w, T2w); outputs written as BIDS derivatives (pip install 'keras-medzoo[bids]')")
    p.add_argument("--participant-label", nargs="+", metavar="LABEL",
                   help="with --bids: only these subjects (01 or sub-01)")
    p.add_argument("--session", nargs="+", metavar="LABEL",
                   help="with --bids: only these sessions (1 or ses-1)")
    p.add_argument("-o", "--output", "--out-dir", dest="out_dir", type=Path, required=True,
                   metavar="OUT_DIR", help="output folder")
    p.add_argument("--shard", type=_shard, metavar="i/n",
                   help="with --input-list/--bids: process only cases p (0-based) with p %% n == i-1")
    p.add_argument("--report", type=Path, metavar="FILE",
                   help="with --input-list/--bids: report CSV (default OUT_DIR/report.csv, or "
                        "OUT_DIR/report_shard{i}of{n}.csv with --shard)")
    p.set_defaults(func=cmd_predict)

    for command, helptext in (("train", "train an entry's ensemble from its recipe"),
                              ("finetune", "fine-tune an entry starting from trained weights")):
        p = sub.add_parser(command, parents=[common], help=helptext, description=helptext + ".")
        p.add_argument("name", metavar="NAME", help="entry name (see 'zoo list')")
        if command == "finetune":
            p.add_argument("--from", dest="init_from", required=True, metavar="NAME_OR_WEIGHTS",
                           help="an entry name (its weights) or a weights folder/file to start from")
        p.add_argument("--data", required=True, type=Path, metavar="DIR_OR_CSV",
                       help="training data: a folder (layout auto-detected) or a CSV")
        p.add_argument("--layout", default="auto",
                       choices=["auto", "wmh_challenge", "open_ms", "wmh_ms_clinical", "spine_chu", "chu2015", "heads",
                                "lidc_voi", "csv"],
                       help="dataset layout (default: detect)")
        p.add_argument("--recipe", help="recipe YAML (default: the entry's bundled recipe)")
        p.add_argument("--variant", help="card variant (default: the recipe's first)")
        p.add_argument("--out", type=Path, default=None, metavar="DIR",
                       help="run folder (default runs/<name>-<variant>)")
        p.add_argument("--epochs", type=int, help="epochs (default: the recipe's)")
        p.add_argument("--steps-per-epoch", type=int, help="steps per epoch (default: one pass)")
        p.add_argument("--members", type=int, help="ensemble members (default: the recipe's)")
        p.add_argument("--batch-size", type=int, help="global batch size (default: the recipe's)")
        p.add_argument("--strategy", default="auto", choices=["auto", "mirrored", "multiworker", "none"])
        p.add_argument("--mixed-precision", choices=["mixed_float16", "mixed_bfloat16"], default=None)
        p.add_argument("--set", dest="recipe_set", action="append", type=_option, default=[],
                       metavar="KEY=VALUE", help="recipe value by dotted key, parsed as YAML "
                       "(e.g. data.patch_size=104, optimizer.learning_rate=1e-4); repeatable")
        p.add_argument("--val", action="append", default=[], metavar="SUBJECT",
                       help="subject id held out for validation (repeatable)")
        p.add_argument("--split", type=Path, default=None, metavar="MANIFEST",
                       help="split manifest (JSON/YAML): train on its train partition only, validate on its "
                            "val partition (e.g. python -m zoo.training.lung_holdout)")
        p.add_argument("--fold", default=None, metavar="NAME", help="the manifest's fold (default: its only one)")
        p.add_argument("--stop-after", default=None, metavar="PHASE",
                       help="a recipe with phases: stop after this phase (the same command without it resumes)")
        p.add_argument("--option", action="append", type=_option, default=[], metavar="KEY=VALUE",
                       help="card option for preprocessing (e.g. mask_method=nonzero)")
        p.add_argument("--resample", action="store_true",
                       help="resample inputs on another grid onto the reference input's grid")
        p.add_argument("--no-phases", dest="phases", action="store_false",
                       help="a recipe with phases (progressive resizing): one run with the card's own "
                            "options instead of every phase in order")
        p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "demo", parents=[common], help="run an entry on a public sample scan",
        description="Fetch a public sample scan (offline mirror, cache or a checksummed download), "
                    "run the entry on it, and write the outputs, a PNG overlay and summary.json.",
        epilog="Offline: set ZOO_SAMPLES_DIR (or --samples-dir) to a folder laid out like "
               "shared/data or like the upstream repositories.")
    p.add_argument("name", metavar="NAME", nargs="?", default="wmh_ensemble",
                   help="entry name (default: wmh_ensemble)")
    p.add_argument("--variant", help="variant (default: the card's default if it ships weights)")
    p.add_argument("-o", "--output", dest="out_dir", type=Path, default=None, metavar="OUT_DIR",
                   help="output folder (default ./zoo-demo/NAME)")
    p.add_argument("--samples-dir", type=Path, default=None, metavar="DIR",
                   help="offline sample folder (default $ZOO_SAMPLES_DIR)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "export", parents=[common], help="export an entry's networks (ONNX)",
        description="Export an entry's trained members as ONNX graphs (float32, named inputs, "
                    "dynamic batch axis). Needs tf2onnx and onnxruntime (dependencies of the zoo).",
        epilog="One member (or --fused) is written to FILE; several members to "
               "FILE-stem.member0.onnx, FILE-stem.member1.onnx, ... beside FILE.")
    p.add_argument("name", metavar="NAME", help="entry name (see 'zoo list')")
    p.add_argument("--format", choices=["onnx"], default="onnx", help="export format (default: onnx)")
    p.add_argument("--variant", help="variant (default: the card's default_variant)")
    w = p.add_mutually_exclusive_group()
    w.add_argument("--weights", metavar="PATH_OR_URL", help="weights (default: the card's)")
    w.add_argument("--untrained", action="store_true", help="export the untrained architecture")
    p.add_argument("--option", action="append", type=_option, default=[], metavar="KEY=VALUE",
                   help="card option (e.g. n_members=1); repeatable")
    p.add_argument("--fused", action="store_true",
                   help="one graph: the mean of every member's output (slicewise/sliding-window ensembles)")
    p.add_argument("-o", "--output", dest="output", type=Path, required=True, metavar="FILE",
                   help="output .onnx file")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "fetch", parents=[common], help="download and verify an entry's weights",
        description="Fetch an entry's weights into the cache ($ZOO_HOME): the card's own weights, "
                    "or with --upstream the authors' published weights (sha256 recorded on first "
                    "download and checked on every later one, converted to the zoo format, float32).",
        epilog="Offline: --from-dir FOLDER_OR_FILE takes the upstream files from a local copy. "
               "Then zoo.load(NAME, variant=V, weights='upstream') uses the cached conversion.")
    p.add_argument("name", metavar="NAME", help="entry name (see 'zoo list')")
    p.add_argument("--variant", help="variant (default: the card's default_variant)")
    p.add_argument("--upstream", action="store_true", help="the authors' published weights")
    p.add_argument("--from-dir", dest="from_dir", type=Path, metavar="PATH",
                   help="with --upstream: a local folder (or one file) holding the upstream files")
    p.add_argument("--mirror", metavar="URL",
                   help="with --upstream: a URL prefix serving the files under their URL's last part")
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser("evaluate", parents=[common], help="score weights on labelled subjects",
                       description="Predict labelled subjects and score them with the challenge metrics; "
                                   "lung_nodule: nodule- and patient-level ROC AUC, accuracy, precision, recall "
                                   "with patient-bootstrap 95%% intervals and a ROC curve PNG.")
    p.add_argument("name", metavar="NAME", help="entry name (see 'zoo list')")
    p.add_argument("--data", required=True, type=Path, metavar="DIR_OR_CSV")
    p.add_argument("--layout", default="auto", choices=["auto", "wmh_challenge", "open_ms", "wmh_ms_clinical", "spine_chu",
                                                        "chu2015", "heads", "lidc_voi", "csv"])
    p.add_argument("--subject", action="append", default=[], metavar="ID",
                   help="evaluate only these subjects (repeatable; default all)")
    p.add_argument("--manifest", type=Path, default=None, metavar="FILE",
                   help="split manifest: evaluate only the subjects of its --part (e.g. python -m zoo.training.lung_holdout)")
    p.add_argument("--part", default="val", help="the manifest's partition (default val; alias validation)")
    p.add_argument("--fold", default=None, metavar="NAME", help="the manifest's fold (default: its only one)")
    p.add_argument("--bootstrap", type=int, default=2000, metavar="N",
                   help="classification: patient-bootstrap resamples for the 95%% intervals (default 2000)")
    p.add_argument("--seed", type=int, default=42, help="classification: bootstrap seed (default 42)")
    p.add_argument("--variant")
    p.add_argument("--weights", metavar="PATH_OR_URL", help="weights (default: the card's)")
    p.add_argument("--option", action="append", type=_option, default=[], metavar="KEY=VALUE")
    p.add_argument("--save-predictions", action="store_true")
    p.add_argument("--overlays", action="store_true", help="write PNG overlays (needs Pillow)")
    p.add_argument("-o", "--output", "--out", dest="out_dir", type=Path, required=True, metavar="OUT_DIR")
    p.set_defaults(func=cmd_evaluate)
    return parser


def _version() -> str:
    import zoo

    return zoo.__version__


# --- commands ----------------------------------------------------------------------------------
def cmd_list(args: argparse.Namespace) -> int:
    """``zoo list``: print :func:`zoo.list` as a table."""
    import zoo

    print(zoo.list().to_string(index=False))
    return 0


def cmd_card(args: argparse.Namespace) -> int:
    """``zoo card NAME``: print the card as Markdown, YAML or JSON."""
    import zoo

    card = zoo.card(args.name)
    if args.format == "markdown":
        print(card.to_markdown())
    elif args.format == "yaml":
        import yaml

        print(yaml.safe_dump(card.to_dict(), sort_keys=False, allow_unicode=True), end="")
    else:
        print(json.dumps(card.to_dict(), indent=2, ensure_ascii=False, default=str))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """``zoo predict NAME``: one subject (``--input``) or a cohort (``--input-list``)."""
    options = _unique(args.option, "--option")
    if args.bids is None and (args.participant_label or args.session):
        raise UsageError("--participant-label and --session need --bids (see 'zoo predict --help')")
    if args.input is not None:
        if args.shard is not None or args.report is not None:
            raise UsageError("--shard and --report need --input-list or --bids (see 'zoo predict --help')")
        inputs = _unique(args.input, "--input")
        model = _load(args, options)
        return _predict_one(model, inputs, args)
    if args.bids is not None:
        return _predict_bids(args, options)
    cohort = read_input_list(args.input_list, args.shard)
    model = _load(args, options)
    _check_columns(model, cohort, args.input_list)
    return _predict_batch(model, cohort, args, source=args.input_list)


def _predict_bids(args: argparse.Namespace, options: dict[str, Any]) -> int:
    """``--bids``: cases from the dataset's layout, outputs as BIDS derivatives."""
    from zoo import bids_io, registry

    bids_io.require()  # before loading anything: a missing extra is a one-line error
    bids_io.check_destination(args.out_dir, args.bids)
    card = registry.card(args.name).with_options(options)
    cases = _take_shard(bids_io.find_cases(args.bids, card, args.variant, args.participant_label,
                                           args.session), args.shard)
    model = _load(args, options)
    writer = bids_io.DerivativeWriter(args.out_dir, args.bids, model, options, args.resample)
    writer.write_description()
    cohort = [(c.id, c.inputs) for c in cases]
    problems = {c.id: c.problem for c in cases if c.problem is not None}
    by_id = {c.id: c for c in cases}
    return _predict_batch(model, cohort, args, source=args.bids, problems=problems,
                          save=lambda case_id, pred: writer.save(by_id[case_id], pred))


def _take_shard(items: list, shard: tuple[int, int] | None) -> list:
    """Items at 0-based positions ``p`` with ``p % n == i - 1`` for ``shard=(i, n)``; all for None."""
    if shard is None:
        return list(items)
    return [x for pos, x in enumerate(items) if pos % shard[1] == shard[0] - 1]


def cmd_train(args: argparse.Namespace) -> int:
    """``zoo train`` / ``zoo finetune``: train from a recipe and print where the weights are."""
    _framework(args)
    _announce(args, precision=args.mixed_precision or "float32")
    from zoo.training.run import train_entry

    record = train_entry(
        args.name, args.data, layout=args.layout, recipe=args.recipe, variant=args.variant,
        out_dir=args.out, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
        members=args.members, batch_size=args.batch_size, strategy=args.strategy,
        mixed_precision=args.mixed_precision, val_ids=args.val,
        options=_unique(args.option, "--option"), resample=args.resample,
        init_from=getattr(args, "init_from", None), recipe_set=_unique(args.recipe_set, "--set"),
        command="zoo " + " ".join(args.argv), phases=args.phases, split=args.split, split_fold=args.fold,
        stop_after=args.stop_after)
    for m in record["members"]:
        print(f"member{m['member']}: {m['epochs']} epoch(s), final loss "
              f"{m['history']['loss'][-1]:.4f}, weights {record['out_dir']}/{m['weights']['file']} "
              f"(sha256 {m['weights']['sha256']})")
    for ph in record.get("phases", []):
        print(f"phase {ph['name']}: options {ph['options']}, {ph['epochs']} epoch(s), {ph['seconds']:.0f} s")
    print(f"run record: {record['out_dir']}/run_record.json")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``zoo demo [NAME]``: the entry on its public sample scan; prints volumes and file paths."""
    _framework(args)
    _announce(args, _default_backend(args.name))
    from zoo.demo import run_demo

    summary = run_demo(args.name, args.out_dir, variant=args.variant, mirror=args.samples_dir)
    print(f"{summary['entry']} ({summary['variant']}) on sample {summary['sample']['sample']}: "
          f"{summary['note']}")
    _print_volumes(summary["volumes_ml"])
    for name, path in summary["outputs"].items():
        print(f"{name}: {path}")
    if summary["overlay"]:
        print(f"overlay: {summary['overlay']}")
    print(f"summary: {summary['summary']}")
    print(f"sample licence: {summary['sample']['licence']}; cite: {summary['sample']['attribution']}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """``zoo export NAME --format onnx -o FILE``: write the members as ONNX and print the paths."""
    from zoo import onnx_backend

    if not args.output.name.lower().endswith(".onnx"):
        raise UsageError(f"-o {args.output}: the output file must end in .onnx")
    onnx_backend.require()  # before loading anything
    model = _load(args, _unique(args.option, "--option"), announce=False)  # converts, runs nothing
    for path in onnx_backend.export(model, args.output, fused=args.fused):
        print(path)
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    """``zoo fetch NAME [--variant V] [--upstream [--from-dir PATH] [--mirror URL]]``: put the
    weights into the cache and print their paths and sha256 (and any digest recorded)."""
    from zoo import presets, registry, weights as weights_mod

    if not args.upstream and (args.from_dir is not None or args.mirror):
        raise UsageError("--from-dir and --mirror need --upstream")
    if args.upstream:
        paths, digests = presets.fetch(args.name, args.variant, args.from_dir, mirror=args.mirror,
                                       say=print)
    else:
        card = registry.card(args.name)
        variant = args.variant or card["default_variant"]
        records = card.variant(variant)["weights"]
        paths = weights_mod.resolve(records, card.id, variant)
        digests = [r["sha256"] for r in records]
    for path, digest in zip(paths, digests):
        print(f"{path} sha256 {digest}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``zoo evaluate``: per-case metrics and their summary for labelled subjects."""
    _framework(args)
    _announce(args, _default_backend(args.name))
    from zoo import registry
    from zoo.training import run
    from zoo.training.evaluate import evaluate

    layout = run.detect_layout(args.data) if args.layout == "auto" else args.layout
    options = {**run.LAYOUT_OPTIONS.get(layout, {}), **_unique(args.option, "--option")}
    inputs = registry.card(args.name).variant(args.variant)["inputs"]
    subjects = run.load_subjects(args.data, layout, inputs)
    if args.manifest is not None:
        from zoo.training import datasets

        subjects = datasets.select(subjects, datasets.manifest_part(args.manifest, args.part, args.fold))
    if args.subject:
        missing = set(args.subject) - {s.id for s in subjects}
        if missing:
            raise UsageError(f"subjects not found in {args.data}: {sorted(missing)}")
        subjects = [s for s in subjects if s.id in set(args.subject)]
    if not args.weights:  # the card weights: say when they trained on these subjects
        from zoo import trained_on

        card = registry.card(args.name)
        variant = args.variant or card["default_variant"]
        seen = trained_on.overlap(card.variant(variant).get("trained_on"), args.data, [s.id for s in subjects])
        if seen:
            print(trained_on.warning(args.name, variant, seen, len(subjects)), file=sys.stderr)
    if registry.card(args.name)["task"] == "classification":
        return _evaluate_classification(args, subjects, options)
    result = evaluate(args.name, subjects, args.out_dir, variant=args.variant,
                      weights=args.weights or "default", options=options,
                      save_predictions=args.save_predictions, overlays=args.overlays)
    shown = [c for c in result["columns"] if not c.startswith("volume_ml_")]  # per-level volumes: in the CSV
    for case in result["cases"]:
        print(case["subject"] + ": " + ", ".join(f"{c} {case[c]:.4f}" for c in shown))
    for name, stats in result.get("agreement", {}).items():
        print(f"{name}: " + ", ".join(f"{k} {v:.4g}" for k, v in stats.items()))
    print(f"metrics: {args.out_dir}/metrics.csv, summary: {args.out_dir}/summary.json")
    return 0


def _evaluate_classification(args: argparse.Namespace, subjects: list, options: dict[str, Any]) -> int:
    """``zoo evaluate`` of a classification entry (lung_nodule): zoo.training.evaluate_nodules."""
    from zoo.training.evaluate_nodules import evaluate_nodules, summary_lines

    summary = evaluate_nodules(args.name, subjects, args.out_dir, variant=args.variant,
                               weights=args.weights or "default", options=options or None,
                               n_resamples=args.bootstrap, seed=args.seed, data=str(args.data),
                               manifest=None if args.manifest is None else str(args.manifest),
                               part=None if args.manifest is None else args.part,
                               command="zoo " + " ".join(args.argv))
    print(f"weights: {summary['weights']}; frame {summary['frame']}; "
          f"{summary['bootstrap']['n_resamples']} patient-bootstrap resamples (seed {summary['bootstrap']['seed']})")
    for line in summary_lines(summary):
        print(line)
    print(f"nodules: {args.out_dir}/nodules.csv, summary: {args.out_dir}/summary.json, ROC: {summary['roc_png']}")
    return 0


def _unique(pairs: list[tuple[str, Any]], flag: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise UsageError(f"{flag} {key} is given twice (see 'zoo predict --help')")
        out[key] = value
    return out


def _load(args: argparse.Namespace, options: dict[str, Any], announce: bool = True):
    """``zoo.load`` from the command's arguments; with ``announce``, the device line after it."""
    import zoo
    from zoo.registry import DEFAULT

    weights = None if args.untrained else (args.weights if args.weights is not None else DEFAULT)
    backend = getattr(args, "backend", None)
    extra = {} if backend is None else {"backend": backend}
    if getattr(args, "profile", None):
        extra["profile"] = args.profile
    _framework(args)
    model = zoo.load(args.name, variant=args.variant, weights=weights, options=options or None, **extra)
    if announce:
        _announce(args, getattr(model, "backend", "keras"))
    return model


def _framework(args: argparse.Namespace) -> None:
    """Import TensorFlow now, its start-up messages hidden unless ``--verbose``."""
    from zoo import terminal

    terminal.import_framework(args.verbose)


def _default_backend(name: str) -> str:
    """The backend ``zoo.load(name)`` resolves to with trained weights (for the device line)."""
    from zoo import registry

    return registry.resolve_backend(registry.card(name), None, trained=True)


def _announce(args: argparse.Namespace, backend: str = "keras", precision: str | None = None) -> None:
    """Print the one line with device, threads and precision (stderr; stdout stays for results)."""
    from zoo import terminal

    print(f"zoo: {terminal.device_line(backend, precision)}", file=sys.stderr)


def _predict_one(model, inputs: dict[str, str], args: argparse.Namespace) -> int:
    pred = model.predict(inputs, resample=args.resample)
    written = pred.save(args.out_dir)
    for path in written.values():
        print(path)
    if getattr(pred, "table", None) is not None:  # per-object results (e.g. one row per nodule)
        print(pred.table.to_string(index=False))
    _print_volumes(pred.volumes_ml)
    return 0


def _print_volumes(volumes_ml: dict[str, float], prefix: str = "") -> None:
    for name, ml in volumes_ml.items():
        print(f"{prefix}{name}: {ml:.3f} mL")


# --- batch -------------------------------------------------------------------------------------
def read_input_list(csv_path: Path, shard: tuple[int, int] | None = None) -> list[tuple[str, dict[str, str]]]:
    """Read a cohort CSV into ``[(subject, {input name: path}), ...]`` in file order.

    The CSV has a column ``subject`` (or ``id``) and one column per input name; relative paths
    are taken relative to the CSV's folder and empty cells are left out. With ``shard=(i, n)``
    only rows at 0-based positions ``p`` with ``p % n == i - 1`` are returned.

    Raises:
        InputNotFoundError: the CSV does not exist.
        InputError: the CSV is unreadable, has no subject column, or has empty, duplicate or
            path-like subject names.
    """
    import pandas as pd

    from zoo import errors

    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise errors.InputNotFoundError(f"input list {csv_path} not found; give a CSV file")
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise errors.InputError(f"input list {csv_path} is not a readable CSV: {_one_line(exc)}") from None
    table.columns = [str(c).strip() for c in table.columns]
    id_cols = [c for c in SUBJECT_COLUMNS if c in table.columns]
    if len(id_cols) != 1:
        found = "both 'subject' and 'id'" if id_cols else f"columns {list(table.columns)}"
        raise errors.InputError(
            f"input list {csv_path} has {found}; expected exactly one subject column "
            f"('subject' or 'id') plus one column per input (e.g. subject,flair,t1)")
    id_col = id_cols[0]
    subjects = [s.strip() for s in table[id_col]]
    for pos, s in enumerate(subjects):
        if not s or s in (".", "..") or Path(s).name != s or "\\" in s:
            raise errors.InputError(
                f"input list {csv_path}, row {pos + 2}: subject {s!r} cannot be used as a folder "
                f"name; use a plain name without '/'")
    dup = sorted({s for s in subjects if subjects.count(s) > 1})
    if dup:
        raise errors.InputError(f"input list {csv_path}: subjects {dup} appear more than once; "
                                f"each subject's outputs go to OUT_DIR/<subject>/")
    base = csv_path.resolve().parent
    rows = []
    for subject, (_, row) in _take_shard(list(zip(subjects, table.iterrows())), shard):
        inputs = {}
        for col in table.columns:
            value = str(row[col]).strip()
            if col != id_col and value:
                p = Path(value).expanduser()
                inputs[col] = str(p if p.is_absolute() else base / p)
        rows.append((subject, inputs))
    return rows


def _check_columns(model, cohort: list[tuple[str, dict[str, str]]], csv_path: Path) -> None:
    """Refuse a cohort whose columns name unknown inputs or lack a required one (before any run)."""
    from zoo import errors

    given = {k for _, inputs in cohort for k in inputs}
    unknown = sorted(given - set(model.input_names) - set(model.optional_inputs))
    missing = [k for k in model.input_names if k not in given] if cohort else []
    if model.card.variant(model.variant).get("any_subset") and given & set(model.input_names):
        missing = []  # e.g. diamondgan: any non-empty subset of the sources
    if unknown or missing:
        found = (f"has columns {unknown} that are not inputs of" if unknown
                 else f"gives no paths in the required column(s) {missing} of")
        raise errors.MissingModalityError(
            f"input list {csv_path} {found} {model.card.id} ({model.variant}); it takes "
            f"{model.input_names} (required) and {model.optional_inputs} (optional) plus "
            f"a subject column")


def _report_path(args: argparse.Namespace) -> Path:
    if args.report is not None:
        return args.report
    name = "report.csv" if args.shard is None else f"report_shard{args.shard[0]}of{args.shard[1]}.csv"
    return args.out_dir / name


def _predict_batch(model, cohort: list[tuple[str, dict[str, str]]], args: argparse.Namespace, *,
                   source: Path, problems: dict[str, Exception] | None = None, save=None) -> int:
    """Predict every case of ``cohort`` (``[(case id, {input name: path})]``), one report row per
    case; a failing case never stops the batch.

    ``source``: the CSV or dataset the cohort came from (never overwritten by the report);
    ``problems``: case id -> the error found while collecting its inputs (reported as its
    failure); ``save(case_id, pred) -> folder``: how outputs are written (default
    ``pred.save(OUT_DIR/<case id>)``).
    """
    from tqdm import tqdm

    from zoo import errors

    problems = problems or {}
    if save is None:
        def save(case_id, pred):
            pred.save(args.out_dir / case_id)
            return args.out_dir / case_id
    report = _report_path(args)
    protected = {Path(source).resolve()} | {Path(p).resolve() for _, i in cohort for p in i.values()}
    if report.resolve() in protected:
        raise errors.OutputError(f"refusing to overwrite the input {report} with the report; "
                                 f"choose another --report file")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    bar = tqdm(cohort, desc=f"zoo predict {model.card.id}", unit="subject", file=sys.stderr,
               disable=None)
    for subject, inputs in bar:
        bar.set_postfix_str(subject)
        t0 = time.perf_counter()
        record = {"subject": subject, "status": "ok", "error_type": "", "error": "",
                  "outputs": "", "volumes_ml": "", "seconds": 0.0}
        try:
            if subject in problems:
                raise problems[subject]
            pred = model.predict(inputs, resample=args.resample)
            record["outputs"] = str(save(subject, pred))
            record["volumes_ml"] = json.dumps(pred.volumes_ml, sort_keys=True, default=float)
        except Exception as exc:  # a failing subject never stops the batch
            record.update(status="failed", error_type=type(exc).__name__, error=_one_line(exc))
            tqdm.write(f"zoo: {subject} failed: {record['error_type']}: {record['error']}",
                       file=sys.stderr)
            if args.debug:
                traceback.print_exc(file=sys.stderr)
        record["seconds"] = round(time.perf_counter() - t0, 3)
        records.append(record)
        write_report(records, report)  # rewritten after each subject: a killed job keeps its report
    bar.close()
    write_report(records, report)
    n_failed = sum(r["status"] == "failed" for r in records)
    print(f"report: {report}")
    print(f"{len(records) - n_failed} ok, {n_failed} failed")
    return 1 if n_failed else 0


def write_report(records: list[dict[str, Any]], path: Path) -> None:
    """Write the batch report CSV atomically (temporary file in the same folder + rename)."""
    import pandas as pd

    from zoo.io import atomic_write_text

    atomic_write_text(path, pd.DataFrame(records, columns=REPORT_COLUMNS).to_csv(index=False))


def _one_line(exc: BaseException | str) -> str:
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    if not text and isinstance(exc, BaseException):
        text = type(exc).__name__
    return text


# --- entry point -------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``zoo`` command line with ``argv`` (default ``sys.argv[1:]``); return the exit status.

    Usage errors print one line and return 2; any :class:`zoo.errors.ZooError` prints its
    message as one line and returns 1; any other exception prints its type and message and
    returns 1. With ``--debug`` the exception is re-raised (full traceback).
    """
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
        args.argv = argv  # recorded by commands that write a run record
    except UsageError as exc:
        print(f"zoo: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help / --version
        return exc.code if isinstance(exc.code, int) else 0
    from zoo import terminal

    terminal.configure(args.verbose)  # before anything imports TensorFlow
    logging.basicConfig(format="zoo: %(levelname)s: %(message)s", level=logging.WARNING)
    if args.debug:
        logging.getLogger("zoo").setLevel(logging.DEBUG)
    try:
        return args.func(args)
    except UsageError as exc:
        if args.debug:
            raise
        print(f"zoo: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("zoo: error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        from zoo.errors import ZooError

        if isinstance(exc, ZooError):
            print(f"zoo: error: {_one_line(exc)}", file=sys.stderr)
        else:
            print(f"zoo: error: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
