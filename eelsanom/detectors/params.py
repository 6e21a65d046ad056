"""One source of every detector parameter's default, type, range and help text.

The defaults are **read** from the detector classes' ``__init__`` signatures (with
:mod:`inspect`), so they cannot drift from the library; the type, the range and the
one-line help live here, once, for every front end: the napari panels build their
fields from :func:`detector_params` (the command line can do the same).

>>> from eelsanom.detectors.params import defaults, detector_params
>>> defaults("cvae")["epochs"] == __import__("eelsanom.detectors.cvae3d",
...     fromlist=["x"]).CVAE3DDetector().epochs
True
>>> detector_params("pca")["n_components"].help  # doctest: +ELLIPSIS
'principal components...'
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from .. import _registry
from ..errors import InputError

__all__ = ["Param", "HELP", "GUI_FIELDS", "METHODS", "detector_params", "defaults",
           "gui_params"]

#: Method keys with their display names, in the order front ends list them (kept in the
#: registry, which imports nothing, so that eelsanom.cautions can read it without a cycle).
METHODS: dict[str, str] = _registry.METHODS


@dataclass(frozen=True)
class Param:
    """One tunable parameter of a detector.

    Attributes
    ----------
    name : str
        The ``__init__`` keyword.
    default : object
        Its default, read from the detector's ``__init__`` signature.
    kind : str
        ``"int"``, ``"float"``, ``"choice"``, ``"bool"``, ``"str"``, ``"window"``
        (an energy range ``(start, stop)`` in eV or None) or ``"any"``.
    help : str
        One line saying what it does (tooltips, ``--help``).
    low, high : float or None
        Allowed range of a number (inclusive; None: unbounded).
    choices : tuple
        Allowed values of a ``"choice"`` (empty otherwise).
    optional : bool
        None is allowed (meaning "automatic").
    """

    name: str
    default: Any
    kind: str
    help: str
    low: float | None = None
    high: float | None = None
    choices: tuple = ()
    optional: bool = False


# (kind, low, high, choices, optional, help) per parameter; the defaults are NOT here.
_COMMON: dict[str, tuple] = {
    "energy_range": ("window", None, None, (), True,
                     "energy window to model, (start, stop) in eV; empty: the whole axis"),
    "threshold": ("any", None, None, (), False,
                  "automatic threshold of the NLL map: robust, robust:K, gmm, otsu, a top "
                  "percentage, or value:X"),
    "transform": ("choice", None, None, ("anscombe", "none"), False,
                  "variance stabilisation of the counts (none for data that are not counts)"),
    "robust_fraction": ("any", None, None, (), False,
                        "with no bulk region: 'auto' (trim what the scores say, 5-45 %) or the "
                        "fraction of worst-explained pixels left out of the fit"),
    "pooling": ("float", 0.0, 8.0, (), False,
                "neighbourhood evidence pooling: Gaussian sigma (px) of the neighbourhood "
                "whose mean deviation is also scored; 0: each pixel alone"),
    "gain": ("any", None, None, (), False,
             "data units per electron: 'auto' (estimated from the channel-to-channel noise) "
             "or a number; divided out before the Anscombe transform"),
    "robust_iter": ("int", 0, 100, (), False,
                    "most trimmed refits when training on all pixels (0: one plain fit)"),
    "device": ("choice", None, None, ("auto", "cpu", "cuda", "mps"), False,
               "where to compute: auto (CUDA, then MPS, then CPU), cpu, cuda, mps"),
    "seed": ("int", 0, 2**31 - 1, (), False,
             "random seed (initialisation, crops, validation split): same seed, same model"),
}

#: PCA's parameters (context PCA shares them)
_PCA: dict[str, tuple] = {
    **{k: _COMMON[k] for k in ("energy_range", "threshold", "transform", "robust_fraction",
                               "robust_iter", "device", "seed", "pooling", "gain")},
    "n_components": ("int", 1, 500, (), True,
                     "principal components of the bulk model; empty/0: chosen automatically "
                     "on held-out pixels"),
    "score_kind": ("choice", None, None, ("nll", "reconstruction"), False,
                   "score: PPCA negative log-likelihood or the reconstruction error"),
    "max_components": ("int", 1, 500, (), False,
                       "largest number of components the automatic choice considers"),
    "validation_fraction": ("float", 0.0, 0.9, (), False,
                            "fraction of training pixels held out to choose the components"),
    "scale": ("choice", None, None, ("fixed", "free", "sum"), False,
              "each pixel's intensity (beam current, thickness): free = fitted per pixel, "
              "not scored; sum = counts normalised to one total first; fixed = neither"),
}

#: Type, range and help of every parameter, per method (defaults come from the classes).
HELP: dict[str, dict[str, tuple]] = {
    "cvae": {
        **{k: _COMMON[k] for k in ("energy_range", "threshold", "transform", "device", "seed")},
        "robust_fraction": _COMMON["robust_fraction"],
        "latent_dim": ("int", 1, 256, (), False,
                       "size of each pixel's latent code (small: a bulk manifold, not a copy)"),
        "nested_prefixes": ("any", None, None, (), True,
                            "Matryoshka training: latent prefix sizes averaged in the loss "
                            "(e.g. (1, 2, 4, 8) or 'all'); empty: ordinary loss"),
        "width": ("int", 1, 256, (), False,
                  "channels of the finest energy level (coarser levels use twice as many)"),
        "spatial_layers": ("int", 0, 16, (), False,
                           "3x3x3 convolutions at coarse energy: pixels of context on each side"),
        "pooling": _COMMON["pooling"],
        "context": ("choice", None, None, ("pixel", "blind-spot"), False,
                    "pixel: encode each pixel from its own spectrum; blind-spot: predict it "
                    "from its neighbours only (robust to drift and gradients)"),
        "context_radius": ("int", 1, 32, (), False,
                           "blind-spot: radius (px) of the neighbourhood that predicts a pixel"),
        "patch_size": ("int", 1, 4096, (), False, "side of the square training crops (pixels)"),
        "epochs": ("int", 1, 100_000, (), False,
                   "maximum epochs (each visits every training pixel about once); early "
                   "stopping may end sooner"),
        "batch_size": ("int", 1, 1_000_000, (), True,
                       "crops per step; empty: automatic (~768 px per step on CPU, ~4096 on GPU)"),
        "lr": ("float", 1e-7, 1.0, (), False, "peak learning rate of the one-cycle schedule (Adam)"),
        "beta": ("float", 0.0, 100.0, (), False,
                 "weight of the KL term in the training loss (1 = the ELBO)"),
        "beta_nll": ("float", 0.0, 1.0, (), False,
                     "beta-NLL exponent (Seitzer et al.; 0 = plain Gaussian NLL)"),
        "sigma_floor": ("float", 1e-6, 10.0, (), False,
                        "smallest predicted sigma, as a fraction of the estimated noise level"),
        "val_fraction": ("float", 0.0, 0.5, (), False,
                         "fraction of training pixels held out (blocks) for early stopping"),
        "patience": ("any", None, None, (), False,
                     "epochs without a better validation NLL before training stops; 'auto': "
                     "skipped when the PPCA start is at the noise floor, else a third of the "
                     "steps up to the best check (6 steps or half an epoch to 8 epochs), keeping the "
                     "last check of the plateau within half a standard error of the best"),
        "max_time": ("float", 0.0, None, (), True,
                     "most seconds of training (the best check within it is kept); empty: "
                     "no limit"),
        "scoring": ("choice", None, None, ("elbo", "recon"), False,
                    "score: negative ELBO (NLL + KL of the code) or the reconstruction NLL alone"),
        "amp": ("any", None, None, (), False,
                "bf16 autocast on CUDA: auto (CUDA only), True, False"),
        "tile_size": ("int", 1, 1_000_000, (), True,
                      "side of the tiles scored at once; empty: fits the device's memory"),
        "n_seeds": ("int", 1, 64, (), False,
                    "seed-ensemble members (1: one network; 3-5 give a disagreement map)"),
        "checkpoint": ("str", None, None, (), True,
                       "resumable training checkpoint file; empty: none"),
    },
    "pca": _PCA,
    "context-pca": {
        **_PCA,  # fitted exactly as PCA; what differs is how a pixel is scored
        "neighbourhood": ("int", 3, 99, (), False,
                          "odd side (px) of the square whose codes predict the centre pixel"),
        "score_kind": ("choice", None, None, ("nll", "reconstruction"), False,
                       "score: NLL under the neighbourhood's prediction, or its squared error"),
        "code_variance": ("choice", None, None, ("noise", "spread", "bulk"), False,
                          "how sure the neighbourhood's code prediction is: noise (sharp), "
                          "the codes' spread in the window, or learnt on the bulk region"),
    },
    "bulk-context": {
        **{k: v for k, v in _PCA.items() if k != "score_kind"},
        "neighbourhood": ("int", 3, 99, (), False,
                          "odd side (px) of the square whose codes predict the centre pixel"),
        "extend_bulk": ("choice", None, None, ("smooth", "off"), False,
                        "with a bulk region: smooth = also learn the parts of the image that "
                        "join it without an edge (a drift or thickness gradient beyond the "
                        "region); off = the region as drawn"),
    },
    "rx": {
        **{k: _COMMON[k] for k in ("energy_range", "threshold", "transform", "robust_fraction",
                                   "robust_iter", "seed", "pooling", "gain")},
        "shrinkage": ("choice", None, None, ("ledoit-wolf", "oas"), False,
                      "covariance shrinkage: Ledoit-Wolf or OAS (or a number in [0, 1] in "
                      "other parameters)"),
    },
}

#: The parameters the GUI shows as fields, per method (the others: "other parameters").
GUI_FIELDS: dict[str, tuple[str, ...]] = {
    "cvae": ("context", "pooling", "epochs", "latent_dim", "width", "patch_size", "lr", "beta",
             "n_seeds"),
    "pca": ("n_components", "pooling"),
    "context-pca": ("neighbourhood", "pooling", "n_components"),
    "bulk-context": ("neighbourhood", "pooling", "n_components"),
    "rx": ("shrinkage", "pooling"),
}


def _method(method: str) -> str:
    """The canonical method name (the detector class's ``method``) of any accepted spelling."""
    # inside: the package may import this table, so importing it back at load is a cycle
    from . import detector_class

    try:
        key = detector_class(method).method
    except InputError:
        key = str(method)
    if key not in HELP:
        raise InputError(f"detector parameters: unknown method {method!r}; expected one of "
                         f"{sorted(HELP)}.")
    return key


def detector_params(method: str) -> dict[str, Param]:
    """Every ``__init__`` parameter of ``method``'s detector, in signature order.

    Parameters
    ----------
    method : str
        ``"cvae"``, ``"pca"`` or ``"rx"`` (as :func:`~eelsanom.detectors.detector_class`).

    Returns
    -------
    dict of str -> Param
        Default read from the class's ``__init__``; kind, range and help from :data:`HELP`.

    Raises
    ------
    InputError
        When ``method`` is unknown.
    """
    # inside: the package may import this table (a cycle at load); imports the detector on demand
    from . import detector_class

    key = _method(method)
    sig = inspect.signature(detector_class(key).__init__)
    out: dict[str, Param] = {}
    for p in sig.parameters.values():
        if p.name == "self" or p.kind not in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD):
            continue
        kind, low, high, choices, optional, text = HELP[key].get(
            p.name, ("any", None, None, (), True, "(no help text yet)"))
        default = None if p.default is inspect.Parameter.empty else p.default
        out[p.name] = Param(p.name, default, kind, text, low, high, tuple(choices), optional)
    return out


def defaults(method: str) -> dict[str, Any]:
    """The library's default of every parameter of ``method``'s detector.

    Parameters
    ----------
    method : str
        ``"cvae"``, ``"pca"`` or ``"rx"``.

    Returns
    -------
    dict of str -> object
        ``{name: default}`` as in the detector's ``__init__`` signature.

    Raises
    ------
    InputError
        When ``method`` is unknown.
    """
    return {k: p.default for k, p in detector_params(method).items()}


def gui_params(method: str) -> list[Param]:
    """The parameters a GUI shows as fields for ``method`` (:data:`GUI_FIELDS`).

    Parameters
    ----------
    method : str
        ``"cvae"``, ``"pca"`` or ``"rx"``.

    Returns
    -------
    list of Param
        In :data:`GUI_FIELDS` order.

    Raises
    ------
    InputError
        When ``method`` is unknown.
    """
    ps = detector_params(method)
    return [ps[name] for name in GUI_FIELDS[_method(method)]]
