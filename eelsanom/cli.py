"""The ``eelsanom`` command line: thin over the library.

Subcommands: ``detect``, ``train``, ``apply``, ``simulate``, ``bench``, ``info``, ``gui``.
Refused inputs exit with status 2 and one line on stderr; progress bars go to
stderr and ``--quiet`` silences them.

The work itself is in :mod:`eelsanom.pipeline` (load, fit, score, the run folder)
and the library; this module parses options, checks everything that needs no
data first, and prints. It is long (about 870 lines) only because it holds the
parser of every subcommand; the detector options are built from the parameter
table (:mod:`eelsanom.detectors.params`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from ._cli_checks import (
    _check_run_outputs,
    _check_streamed_outputs,
    _energy_range,
    _planned_outputs,
    _precheck,
    _run_inputs,
    _train_mask,
    check_calibration_region,
    check_simulate_size,
    join_dash_values,
)
from .batch import add_parser as add_batch_parser
from .detectors import DEFAULT_METHOD, get_detector, load_detector
from .detectors.base import check_train_mask
from .detectors.params import HELP, METHODS
from .detectors.params import defaults as detector_defaults
from .errors import Cancelled, InputError
from .io import (
    SCANNED_EXTENSIONS,
    check_outputs,
    list_signals,
    record_outputs,
)
from .io._files import _WRITE_FIX, _writing
from .modelfile import check_threshold_override
from .pipeline import (
    fit_input,
    input_stem,
    load_input,
    run_formats,
    score_input,
    write_run,
)

log = logging.getLogger("eelsanom")

EXIT_INPUT = 2
EXIT_INTERNAL = 1
EXIT_CANCELLED = 130
#: the operating-system failures that are the machine's, not eelsanom's (a full disk, no
#: permission, a read-only disk): the ones io names a fix for
_ENV_ERRNOS = frozenset(_WRITE_FIX)


# ----------------------------------------------------------------------------- helpers
class _Bar:
    """Turn eelsanom ProgressEvents into tqdm bars (one per stage).

    A stage of one step (``fit 1/1``) shows its elapsed time, not a count; the training's
    epochs count in ``epoch`` units; the ``batch`` bar starts again at each epoch, so that its
    rate is this epoch's, not the time summed over every epoch so far.
    """

    #: the unit each stage counts
    UNITS = {"train": "epoch", "batch": "batch", "score": "block", "fit": "step"}

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.bars: dict[str, Any] = {}

    def __call__(self, ev) -> None:
        if self.quiet:
            return None
        from tqdm.auto import tqdm

        bar = self.bars.get(ev.stage)
        counted = bool(ev.total and ev.total > 1)
        if bar is None:
            kw: dict[str, Any] = {} if counted else {
                "bar_format": "{desc}: {elapsed}{postfix}"}  # no useless "1/1"
            bar = tqdm(total=ev.total if counted else None, desc=ev.stage,
                       unit=self.UNITS.get(ev.stage, "step"), file=sys.stderr, leave=False,
                       dynamic_ncols=True, **kw)
            self.bars[ev.stage] = bar
        elif counted and ev.step < bar.n:  # a new round (the next epoch's batches)
            bar.reset(total=ev.total)
        if counted and bar.total != ev.total:
            bar.total = ev.total
        bar.n = ev.step
        if ev.metrics:
            bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v)
                             for k, v in ev.metrics.items()}, refresh=False)
        bar.refresh()
        return None

    def close(self) -> None:
        for b in self.bars.values():
            b.close()
        self.bars.clear()


class _TqdmLogHandler(logging.StreamHandler):
    """Log records written with ``tqdm.write``: a warning gets its own line above the progress
    bars instead of being printed onto a bar's line."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


#: ``detect``/``train`` options that set a detector parameter (option dest -> parameter). Each
#: option's help text, type, choices and defaults come from the one parameter table
#: (:mod:`eelsanom.detectors.params`); an option reaches only the detectors that take it.
_DETECTOR_OPTIONS: dict[str, str] = {
    "components": "n_components", "pooling": "pooling", "device": "device", "seed": "seed",
    "epochs": "epochs", "latent_dim": "latent_dim", "patch": "patch_size", "context": "context",
    "beta": "beta", "lr": "lr", "n_seeds": "n_seeds", "nested_latent": "nested_prefixes",
    "extend_bulk": "extend_bulk",
    "scale": "scale",
}
#: what the command line adds to a parameter's help (its own syntax)
_CLI_NOTES: dict[str, str] = {
    "device": "cuda:N picks one GPU",
    "n_seeds": "seeds SEED..SEED+N-1; the map is their mean, plus a seed-disagreement map",
    "nested_prefixes": "--nested-latent alone: every prefix 1..latent-dim; or comma-separated "
                       "sizes such as 1,2,4,8",
    "pooling": "one shared stage of every detector; see docs/benchmark.md",
}


def _param_methods(name: str) -> list[str]:
    """The methods whose detector takes parameter ``name`` (in :data:`METHODS` order)."""
    return [m for m in METHODS if name in HELP[m]]


def _option_help(name: str) -> str:
    """An option's help from the parameter table: which detectors take it, what it does, its
    range (the defaults are added when the help is shown, see :class:`_DetectorHelp`)."""
    methods = _param_methods(name)
    kind, low, high, _choices, _optional, text = HELP[methods[0]][name]
    who = "" if len(methods) == len(METHODS) else ", ".join(METHODS[m] for m in methods) + ": "
    rng = ""
    if kind == "int" and low is not None:
        rng = f"; {int(low)} to {int(high)}" if high is not None and high < 2**31 - 1 else ""
    elif kind == "float" and low is not None and high is not None:
        rng = f"; {low:g} to {high:g}"
    note = f"; {_CLI_NOTES[name]}" if name in _CLI_NOTES else ""
    return (who + text + rng + note).replace("%", "%%")


def _option_kwargs(dest: str) -> dict[str, Any]:
    """argparse keywords of a detector option: help, type and choices from the table; default
    None (= the detector's own default, read from its class)."""
    name = _DETECTOR_OPTIONS[dest]
    kind, _low, _high, choices, _optional, _text = HELP[_param_methods(name)[0]][name]
    kw: dict[str, Any] = {"default": None, "help": _option_help(name)}
    if name == "nested_prefixes":  # 'all' or a list of sizes: parsed in _detector_params
        kw.update(nargs="?", const="all", metavar="PREFIXES")
    elif name == "device":  # cuda:N too: checked by the detector
        kw["metavar"] = "DEVICE"
    elif kind == "int":
        kw["type"] = int
    elif kind == "float":
        kw["type"] = float
    elif kind == "choice":
        kw["choices"] = list(choices)
    if name == "pooling":
        kw["metavar"] = "SIGMA"
    return kw


def _default_text(name: str) -> str:
    """The defaults of parameter ``name`` as the detectors' signatures give them."""
    def fmt(v: Any) -> str:
        if v is None:
            return "automatic" if name == "n_components" else "none"
        return f"{v:g}" if isinstance(v, float) else str(v)

    try:
        per = {m: fmt(detector_defaults(m)[name]) for m in _param_methods(name)}
    except Exception:  # noqa: BLE001 - a detector that cannot be imported here: say so plainly
        return "the detector's own"
    if len(set(per.values())) == 1:
        return next(iter(per.values()))
    return ", ".join(f"{METHODS[m]} {v}" for m, v in per.items())


class _DetectorHelp(argparse.HelpFormatter):
    """Help of ``detect``/``train``: each detector option's default is read from the detector
    classes (:func:`eelsanom.detectors.params.defaults`) when the help is shown, so building
    the parser imports no detector module (and no torch)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        name = _DETECTOR_OPTIONS.get(action.dest)
        if name is None or text == argparse.SUPPRESS:
            return text
        return f"{text} (default: {_default_text(name)})"


def _nested_prefixes(text: str) -> Any:
    try:
        return ("all" if text.strip().lower() == "all"
                else [int(t) for t in text.split(",") if t.strip()])
    except ValueError:
        raise InputError(f"--nested-latent: expected 'all' or comma-separated prefix sizes such "
                         f"as 1,2,4,8, found {text!r}.") from None


def _detector_params(args: argparse.Namespace) -> dict[str, Any]:
    """The detector's keyword arguments from the options given: each option in
    :data:`_DETECTOR_OPTIONS` that the method's detector takes (an option not given leaves
    the detector's own default)."""
    p: dict[str, Any] = {"energy_range": _energy_range(args.energy_range)}
    if args.threshold is not None:  # else the detector's own default rule
        p["threshold"] = args.threshold
    for dest, name in _DETECTOR_OPTIONS.items():
        v = getattr(args, dest, None)
        if v is None or name not in HELP.get(args.method, {}):
            continue
        p[name] = _nested_prefixes(v) if name == "nested_prefixes" else v
    return p


def _build_detector(args: argparse.Namespace):
    return get_detector(args.method, **_detector_params(args))


def _load_input(args: argparse.Namespace, path: str, on_axes=None):
    """:func:`eelsanom.pipeline.load_input` with ``--signal`` and ``--lazy``/``--no-lazy``."""
    return load_input(path, signal=getattr(args, "signal", None), lazy=getattr(args, "lazy", None),
                      on_axes=on_axes)


def _score(det, si, args: argparse.Namespace, stem: str, bar):
    """:func:`eelsanom.pipeline.score_input` into ``--out`` with ``--formats``."""
    return score_input(det, si, out=args.out, stem=stem, formats=getattr(args, "formats", None),
                       protect=_run_inputs(args), progress=bar)


def _write_outputs(result, si, out: Path, stem: str, args: argparse.Namespace,
                   extra: dict[str, Any]) -> dict[str, Any]:
    """The run folder (:func:`eelsanom.pipeline.write_run`) with the formats and inputs of
    ``args``."""
    return write_run(result, si, out, stem,
                     formats=run_formats(getattr(args, "formats", None), streamed=si.is_lazy),
                     protect=_run_inputs(args), extra=extra)


def _print_summary(summary: dict[str, Any], quiet: bool) -> None:
    if quiet:
        return
    c = summary["counts"]
    line = (f"{summary['method']}: {c['flagged']}/{c['pixels']} pixels flagged "
            f"({100 * c['flagged_fraction']:.2f} %) at NLL > {summary['threshold']['value']:.4g} "
            f"[{summary['threshold']['method']}]")
    m = summary.get("metrics")
    if m:
        line += (f"; ROC-AUC {m['roc_auc']:.3f}, AP {m['average_precision']:.3f}, "
                 f"F1 {m['f1']:.3f}")
    print(line)
    print(f"outputs in {Path(summary['outputs']['summary']).parent}")


# ----------------------------------------------------------------------------- checks first
def _prepare(args: argparse.Namespace, *, outputs: bool):
    """Check everything that needs no data (options, detector parameters, every output path),
    then read the input and check what needs its axes (ROI and mask ranges, the energy range,
    streamed outputs), all before any fitting: ``(det, si, mask)``."""
    _precheck(args)
    det = _build_detector(args)
    det._validate_params()
    stem = input_stem(args.input)
    _check_run_outputs(args, _planned_outputs(args, stem, det.method) if outputs else [])
    def ranges(si) -> np.ndarray | None:  # need the axes only: before the data is read
        mask = _train_mask(args, si)
        if mask is not None:  # too small a region, said in the command line's words
            opt = (f"--train-roi {args.train_roi}" if getattr(args, "train_roi", None)
                   else f"--train-mask {args.train_mask}")
            check_train_mask(mask, si.nav_shape, min_pixels=det.min_train_pixels, what=opt,
                             fix="Give a larger region (--train-roi Y0:Y1,X0:X1 or a mask file "
                                 "with --train-mask), or leave both out to train on all pixels "
                                 "(robustly).")
        check_calibration_region(det, mask)
        er = getattr(det, "energy_range", None)
        if er is not None:
            si.crop_energy(er[0], er[1])  # refuses a window outside the data
        return mask

    si = _load_input(args, args.input, on_axes=ranges)
    if outputs:
        _check_streamed_outputs(args, si, stem, det.method)
    return det, si, ranges(si)


# ----------------------------------------------------------------------------- commands
def _fit(args: argparse.Namespace, *, score: bool):
    """Check, load the input, build the bulk mask and detector, fit (and score):
    ``(si, mask, det, res)``."""
    det, si, mask = _prepare(args, outputs=score)
    bar = _Bar(args.quiet)
    try:
        fit_input(det, si, mask, seed=int(getattr(det, "seed", 0) or 0), progress=bar)
        result = _score(det, si, args, input_stem(args.input), bar) if score else None
    finally:
        bar.close()
    return si, mask, det, result


def _save_model(det, args: argparse.Namespace) -> Path:
    with _writing(Path(args.model_out)):
        path = det.save(args.model_out)
    record_outputs([path])
    return path


def cmd_detect(args: argparse.Namespace) -> int:
    """``eelsanom detect``: train on a bulk region, score the same file and write the maps."""
    si, mask, det, result = _fit(args, score=True)
    out = Path(args.out)
    extra: dict[str, Any] = {"train_pixels": int(mask.sum()) if mask is not None else "all (robust)"}
    if args.model_out:
        extra["model"] = str(_save_model(det, args))
    summary = _write_outputs(result, si, out, input_stem(args.input), args, extra)
    _print_summary(summary, args.quiet)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """``eelsanom train``: train a detector and save the model file."""
    _, mask, det, _ = _fit(args, score=False)
    path = _save_model(det, args)
    if not args.quiet:
        print(f"{det.method} model trained on {int(mask.sum()) if mask is not None else 'all'} "
              f"pixels in {det.fit_seconds_:.1f} s, energy axis {det.energy_axis_.describe()}; "
              f"saved to {path}")
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    """``eelsanom apply``: score files with a saved model (exit 2 when any file fails)."""
    stems = [input_stem(p) for p in args.inputs]
    dup = {s for s in stems if stems.count(s) > 1}
    if dup:
        raise InputError(f"inputs share the output name(s) {sorted(dup)}; score them into "
                         "separate --out folders.")
    _precheck(args)
    det = load_detector(args.model)  # the whole model file is checked before any data is read
    check_threshold_override(args.model, args.threshold, getattr(det, "calibration_", None)
                             is not None)
    if args.threshold is not None:
        det.threshold = args.threshold
    if args.device is not None and "device" in det.get_params():
        det.set_params(device=args.device)
    _check_run_outputs(args, [p for stem in stems for p in _planned_outputs(args, stem,
                                                                             det.method)])
    out = Path(args.out)
    failures = 0
    for path, stem in zip(args.inputs, stems):
        try:
            si = _load_input(args, path)
            _check_streamed_outputs(args, si, stem, det.method)
            bar = _Bar(args.quiet)
            try:
                result = _score(det, si, args, stem, bar)
            finally:
                bar.close()
            summary = _write_outputs(result, si, out, stem, args, {"model": str(args.model)})
            _print_summary(summary, args.quiet)
        except InputError as exc:
            failures += 1
            print(f"eelsanom: error: {path}: {exc}", file=sys.stderr)
    return EXIT_INPUT if failures else 0


def cmd_simulate(args: argparse.Namespace) -> int:
    """``eelsanom simulate``: write a simulated spectrum image with its ground truth."""
    from .simulate import simulate  # scipy: imported when simulating, not for every command

    thickness = None
    if args.thickness is not None:
        parts = args.thickness.split(":")
        try:
            if len(parts) != 2:
                raise ValueError
            thickness = (float(parts[0]), float(parts[1]))
        except ValueError:
            raise InputError(f"--thickness: expected T_MIN:T_MAX (t/lambda), found "
                             f"{args.thickness!r}. Use e.g. --thickness 0.2:1.0.") from None
    (path,) = check_outputs([args.out], overwrite=args.overwrite, what="--out")
    check_simulate_size(args.shape, args.window)
    sim = simulate(shape=tuple(args.shape), window=args.window, anomaly=args.anomaly,
                   magnitude=args.magnitude, anomaly_shape=args.anomaly_shape,
                   concentration=args.concentration, dose=args.dose, seed=args.seed,
                   nuisances=not args.no_nuisances, read_noise=args.read_noise,
                   drift=args.drift, drift_pattern=args.drift_pattern,
                   valence_gradient=args.valence_gradient, thickness=thickness,
                   gain=args.gain, dark_offset=args.dark_offset)
    path = sim.save(path, overwrite=args.overwrite)  # a simulated file is data: never replaced
    if not args.quiet:
        print(f"simulated {sim.si.shape} ({sim.params.get('window')} window, "
              f"{int(sim.truth.sum())} anomalous pixels) -> {path}; ground truth and bulk mask are "
              "in its metadata (eelsanom.ground_truth, eelsanom.bulk_mask)")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """``eelsanom bench``: run the detection benchmark, or the speed benchmark (``--speed``)."""
    from .bench import run_benchmark, run_speed  # imports torch: only for this command

    methods = [m.strip() for m in (args.methods or "").split(",") if m.strip()] or None
    if args.speed:
        run_speed(Path(args.out), methods=methods, device=args.device, quick=args.quick,
                  quiet=args.quiet, seed=args.seed, large=args.large)
    else:
        run_benchmark(Path(args.out), quick=args.quick, methods=methods, device=args.device,
                      quiet=args.quiet, seed=args.seed, suite=args.suite)
    return 0


def _info_table(name: str, rows: list[dict[str, Any]]) -> str:
    """The signals of a file as an aligned text table (``eelsanom info`` without ``--json``)."""
    def num(v: Any) -> str:
        return f"{float(v):.6g}"

    table = [("#", "title", "type", "navigation", "channels", "energy axis", "dtype",
              "spectrum image?")]
    for r in rows:
        nav = " x ".join(str(n) for n in r.get("nav_shape") or []) or "-"
        sig = " x ".join(str(n) for n in r.get("signal_shape") or []) or "-"
        if r.get("energy_offset") is not None:
            units = r.get("energy_units") or ""
            energy = (f"{num(r['energy_offset'])} to {num(r['energy_end'])} {units}, "
                      f"{num(r['energy_scale'])} {units}/channel")
        else:
            energy = "-"
        title = str(r.get("title") or "")
        table.append((str(r.get("index", "")), title if len(title) <= 40 else title[:39] + "…",
                      str(r.get("signal_type") or "-"), nav, sig, energy, str(r.get("dtype", "")),
                      "yes" if r.get("is_candidate") else "no"))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = [f"{name}: {len(rows)} signal{'s' if len(rows) != 1 else ''}"]
    for j, row in enumerate(table):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def cmd_info(args: argparse.Namespace) -> int:
    """``eelsanom info``: a table of the signals in the file (``--json``: one JSON line each)."""
    rows = list_signals(args.input)
    if args.json:
        for r in rows:
            print(json.dumps(r, default=str))
    else:
        print(_info_table(Path(args.input).name, rows))
    return 0


def cmd_latent(args: argparse.Namespace) -> int:
    """``eelsanom latent``: write the latent-space report of a run (or compare two runs)."""
    from .latent import write_report  # the latent toolkit: its imports only for this command

    report = write_report(args.run_dir, args.run_dir_b, args.out, stem_a=args.stem,
                          stem_b=args.stem_b, k=args.k, k_local=args.k_local,
                          dse_points=args.dse_points, quantization=not args.no_quantization,
                          seed=args.seed)
    if not args.quiet:
        print(f"latent-space report: {report}")
    return 0


def cmd_gui(args: argparse.Namespace) -> int:
    """napari with the eelsanom panels docked and FILE (or the sample) loaded."""
    try:  # Qt and napari are imported inside launch(), never by the core library
        from eelsanom_napari._launch import launch
    except ImportError as exc:
        raise InputError(f"eelsanom gui needs the napari plugin: pip install 'eelsanom[napari]' "
                         f"(import failed: {exc}).") from exc
    launch(args.input)
    return 0


# ----------------------------------------------------------------------------- parser
def _add_common_io(p: argparse.ArgumentParser) -> None:
    p.add_argument("--signal", type=int, default=None, metavar="INDEX",
                   help="which signal to use in a file holding several (see `eelsanom info FILE`)")
    p.add_argument("--lazy", action=argparse.BooleanOptionalAction, default=None,
                   help="stream the file block by block (read lazily with dask; memory bounded "
                        "by the block, not the file). Default: streams when the cube is larger "
                        "than a quarter of the available memory (or $EELSANOM_STREAM_BYTES "
                        "bytes); --no-lazy always loads it whole")


def _add_training(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", choices=["bulk-context", "context-pca", "cvae", "pca", "rx"],
                   default=DEFAULT_METHOD,
                   help="detector (default: bulk-context, the larger of the bulk PPCA's and the "
                        "neighbourhood's evidence, each calibrated on the bulk, pooled: never "
                        "far from the best detector on the paper, realistic and general suites, "
                        "see docs/benchmark.md; context-pca: the neighbourhood alone; cvae: the "
                        "3D convolutional VAE, --context blind-spot for its neighbourhood mode; "
                        "pca; rx)")
    p.add_argument("--train-roi", metavar="Y0:Y1,X0:X1",
                   help="bulk (defect-free) rectangle in pixel indices, stop exclusive")
    p.add_argument("--train-mask", metavar="MASK",
                   help="bulk mask file (.npy/.npz/.png/.tif/.hspy, nonzero = bulk), or 'file' to "
                        "use the bulk mask stored in a simulated file. Without --train-roi/"
                        "--train-mask all pixels are used, robustly")
    p.add_argument("--energy-range", metavar="START:STOP", help="energy window in eV")
    p.add_argument("--threshold", default=None,
                   help="robust[:K] (median + K robust sigmas, K=4) | otsu | gmm | PERCENT of "
                        "pixels to flag | value:X | calibrated[:ALPHA] (false-positive rate "
                        "ALPHA, default 0.001, on held-out bulk pixels; needs a bulk region; "
                        "saved with the model) (default: the detector's own rule, robust)")
    for dest in _DETECTOR_OPTIONS:  # help, type and defaults from the parameter table
        p.add_argument("--" + dest.replace("_", "-"), dest=dest, **_option_kwargs(dest))


def _add_global(p: argparse.ArgumentParser, default: Any) -> None:
    p.add_argument("-q", "--quiet", action="store_true", default=default,
                   help="no progress bars or summaries")
    p.add_argument("-v", "--verbose", action="store_true", default=default, help="log details")
    p.add_argument("--debug", action="store_true", default=default, help="show tracebacks")


def build_parser() -> argparse.ArgumentParser:
    """The ``eelsanom`` argument parser with every subcommand.

    ``-q/--quiet``, ``-v/--verbose`` and ``--debug`` are accepted before or after the
    subcommand; each subparser's ``func`` default is its ``cmd_*`` handler.

    Returns
    -------
    argparse.ArgumentParser
        Subcommands ``detect``, ``train``, ``apply``, ``simulate``, ``bench``, ``info``,
        ``latent``, ``gui`` and ``batch``.
    """
    ap = argparse.ArgumentParser(
        prog="eelsanom", description="Find where in an EELS spectrum image something is "
        "different: per-pixel NLL maps from a 3D-CVAE, PCA or RX bulk model.")
    ap.add_argument("--version", action="version", version=f"eelsanom {__version__}")
    _add_global(ap, False)
    # the same switches after the subcommand (``eelsanom detect ... --quiet``)
    common = argparse.ArgumentParser(add_help=False)
    _add_global(common, argparse.SUPPRESS)
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    _add_parser = sub.add_parser

    def add_parser(name: str, **kw: Any) -> argparse.ArgumentParser:
        return _add_parser(name, parents=[common], **kw)

    sub.add_parser = add_parser  # type: ignore[method-assign]

    p = sub.add_parser("detect", help="train on a bulk region and score the same file",
                       formatter_class=_DetectorHelp)
    p.add_argument("input", help=f"spectrum image ({'/'.join(SCANNED_EXTENSIONS)}/...)")
    _add_common_io(p)
    _add_training(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--model-out", help="also save the trained model here (.h5)")
    p.add_argument("--overwrite", action="store_true",
                   help="also replace existing files that eelsanom did not write (its own "
                        "earlier outputs are replaced without it; inputs never are)")
    p.add_argument("--formats", default=None,
                   help="map formats, comma-separated from hspy,zspy,tiff,png (default: "
                        "hspy,png; zspy,hspy,png when the file is streamed)")
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("train", help="train a detector and save the model",
                       formatter_class=_DetectorHelp)
    p.add_argument("input")
    _add_common_io(p)
    _add_training(p)
    p.add_argument("--model-out", required=True, help="model file to write (.h5)")
    p.add_argument("--overwrite", action="store_true",
                   help="also replace existing files that eelsanom did not write (its own "
                        "earlier outputs are replaced without it; inputs never are)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("apply", help="score files with a saved model")
    p.add_argument("model", help="model file from `eelsanom train`/`detect --model-out`")
    p.add_argument("inputs", nargs="+")
    _add_common_io(p)
    p.add_argument("--threshold", default=None,
                   help="override the model's threshold rule (robust[:K] | otsu | gmm | "
                        "PERCENT | value:X)")
    p.add_argument("--device", default=None,
                   help="auto | cpu | cuda | cuda:N | mps (default: as saved, or auto)")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true",
                   help="also replace existing files that eelsanom did not write (its own "
                        "earlier outputs are replaced without it; inputs never are)")
    p.add_argument("--formats", default=None,
                   help="map formats, comma-separated from hspy,zspy,tiff,png (default: "
                        "hspy,png; zspy,hspy,png when the file is streamed)")
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser("simulate", help="write a simulated spectrum image with ground truth")
    p.add_argument("--out", required=True, help="output .hspy or .zspy")
    p.add_argument("--shape", type=int, nargs=2, default=[64, 64], metavar=("NY", "NX"))
    p.add_argument("--window", default="fe-l", choices=["fe-l", "bfo"])
    p.add_argument("--anomaly", default="shift", choices=["shift", "ratio", "impurity"])
    p.add_argument("--magnitude", type=float, default=None,
                   help="shift in eV / L3:L2 ratio factor / impurity strength")
    p.add_argument("--anomaly-shape", default="clusters", choices=["clusters", "pixels", "line"])
    p.add_argument("--concentration", type=float, default=0.02, help="fraction of pixels")
    p.add_argument("--dose", type=float, default=200.0,
                   help="electrons (= counts at gain 1) at the Fe L3 maximum")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-nuisances", action="store_true")
    p.add_argument("--drift", type=float, default=0.0,
                   help="energy drift of the whole spectrum, eV (0-2; default 0)")
    p.add_argument("--drift-pattern", default="field", choices=["field", "ramp"],
                   help="field: smooth random 2-D field; ramp: linear along y (default field)")
    p.add_argument("--valence-gradient", type=float, default=0.0,
                   help="Fe L2,3 onset change across x (tanh), eV (0-3; default 0)")
    p.add_argument("--thickness", default=None, metavar="T_MIN:T_MAX",
                   help="t/lambda range (each 0.05-2) with plural scattering, e.g. 0.2:1.0")
    p.add_argument("--gain", type=float, default=1.0, help="detector counts per electron")
    p.add_argument("--dark-offset", type=float, default=0.0, help="counts added (dark level)")
    p.add_argument("--read-noise", type=float, default=1.0,
                   help="Gaussian read noise, detector counts (default 1)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("bench", help="the detection benchmark (docs/benchmark.md)")
    p.add_argument("--suite", choices=("paper", "realistic", "general"), default="paper",
                   help="paper: the paper's shift sweep on a simple bulk; realistic: shifts "
                        "under energy drift, valence gradient, thickness and detector response; "
                        "general: a second spectral family, rough nuisances, large regions, "
                        "changes that must not be flagged, with and without a bulk region")
    p.add_argument("--quick", action="store_true", help="CPU-sized subset (64x64, fe-l)")
    p.add_argument("--speed", action="store_true", help="time fit and score on fixed sizes")
    p.add_argument("--large", action="store_true",
                   help="with --speed on the CPU: also every detector (default, pooled PCA, PCA, "
                        "RX, 3D-CVAE) vs HyperSpy on 192x192x1334")
    p.add_argument("--out", required=True)
    p.add_argument("--methods", default=None,
                   help="comma-separated detectors (default: cvae,cvae-ctx,pca,context-pca,bulk-context,rx,"
                        "hyperspy for the detection benchmark, cvae,pca,rx,hyperspy for --speed)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("info", help="list the signals a file holds")
    p.add_argument("input")
    p.add_argument("--json", action="store_true", help="one JSON line per signal")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("latent", help="latent-space report of a run (or comparison of two runs)")
    p.add_argument("run_dir", help="run folder written by `eelsanom detect --out` (cvae or pca)")
    p.add_argument("run_dir_b", nargs="?", default=None,
                   help="second run of the same image: adds the comparison")
    p.add_argument("--out", required=True, help="report folder (Markdown, PNG figures, JSON)")
    p.add_argument("--stem", default=None, help="which run, when RUN_DIR holds several")
    p.add_argument("--stem-b", default=None, help="which run, when RUN_DIR_B holds several")
    p.add_argument("--k", type=int, default=10, help="neighbours for the k-NN comparisons")
    p.add_argument("--k-local", type=int, default=50,
                   help="neighbours of the local intrinsic-dimension map")
    p.add_argument("--dse-points", type=int, default=1500,
                   help="random pixels for the diffusion spectral entropy")
    p.add_argument("--no-quantization", action="store_true", help="skip the storage table")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_latent)

    p = sub.add_parser("gui", help="open napari with the eelsanom panels and FILE (or the sample)")
    p.add_argument("input", nargs="?", default=None,
                   help="spectrum image to open (default: the bundled simulated sample)")
    p.set_defaults(func=cmd_gui)

    add_batch_parser(sub)  # ``batch``: many files on Dask
    return ap


def _run(args: argparse.Namespace) -> int:
    """Run the parsed command; every failure becomes its exit status (see :func:`main`)."""
    t0 = time.perf_counter()
    try:
        rc = args.func(args)
    except InputError as exc:
        if args.debug:
            raise
        print(f"eelsanom: error: {exc}", file=sys.stderr)
        if getattr(exc, "hdf5_left_open", False):  # a disk that filled inside an HDF5 write:
            sys.stdout.flush()  # HDF5 would crash flushing that file at exit (the partial file
            sys.stderr.flush()  # is already removed), so end here, with the refusal's status
            os._exit(EXIT_INPUT)
        return EXIT_INPUT
    except OSError as exc:  # the environment (a full disk, no permission), or a damaged file
        if args.debug:
            raise
        where = f" {exc.filename}" if exc.filename else ""
        if exc.errno in _ENV_ERRNOS:
            print(f"eelsanom: error: could not write{where}: {exc.strerror or exc}; free some "
                  "disk space, or choose an output folder you can write (--out)", file=sys.stderr)
            return EXIT_INPUT
        msg = " ".join(str(exc.strerror or exc).split())
        print(f"eelsanom: error: could not read or write{where}: {msg}; expected complete, "
              "readable input files and a writable output folder (rerun with --debug for the "
              "traceback)", file=sys.stderr)
        return EXIT_INPUT if exc.filename else EXIT_INTERNAL
    except Cancelled as exc:
        print(f"eelsanom: cancelled: {exc}", file=sys.stderr)
        return EXIT_CANCELLED
    except KeyboardInterrupt:
        print("eelsanom: interrupted; finished outputs are complete, nothing half-written was "
              "left under its final name", file=sys.stderr)
        return EXIT_CANCELLED
    except Exception as exc:
        if args.debug:
            raise
        print(f"eelsanom: internal error: {type(exc).__name__}: {exc} (rerun with --debug for "
              "the traceback)", file=sys.stderr)
        return EXIT_INTERNAL
    log.info("done in %.1f s", time.perf_counter() - t0)
    return rc


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``eelsanom`` command line; return its exit status (0, 1, 2 or 130).

    0: success; 1: an internal error, or some ``batch`` files failed; 2: bad input
    (an :class:`~eelsanom.errors.InputError`, or no subcommand); 130: cancelled or
    interrupted.
    """
    ap = build_parser()
    args = ap.parse_args(join_dash_values(sys.argv[1:] if argv is None else list(argv)))
    if not getattr(args, "command", None):
        ap.print_help()
        return EXIT_INPUT
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", handlers=[_TqdmLogHandler()])
    if not args.debug:
        import warnings

        warnings.filterwarnings("ignore")
    # tqdm reads TQDM_DISABLE: set for this call only (an in-process caller, such as a test or
    # a notebook running main() with --quiet, must not silence every later bar and subprocess)
    prior = os.environ.get("TQDM_DISABLE")
    os.environ.setdefault("TQDM_DISABLE", "1" if args.quiet else "")
    try:
        return _run(args)
    finally:
        if prior is None:
            os.environ.pop("TQDM_DISABLE", None)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
