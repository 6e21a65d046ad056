"""The model-file schema of each detector: what its ``validate_model_file`` checks.

Each detector class's ``validate_model_file`` classmethod calls one function here (found
through the class by :func:`eelsanom._registry.model_validator`, never by a name switch).
Each receives a :class:`eelsanom.modelfile.ModelCheck` before any array is read: it checks
the fitted state, names every array its detector reads with the declared shape it must have
(:meth:`~eelsanom.modelfile.ModelCheck.expect`), and refuses the rest
(:meth:`~eelsanom.modelfile.ModelCheck.bad`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..modelfile import MAX_MEMBERS, ModelCheck, _int, _num, _short

#: 3D-CVAE architecture keys and their allowed integer ranges (``raw_init``: any finite number)
CVAE_ARCH = {"n_energy": (1, 1 << 20), "latent_dim": (1, 4096), "width": (1, 4096),
             "levels": (0, 16), "spatial_layers": (0, 64), "hidden": (1, 16384)}
#: architecture keys only some models have: the blind-spot context radius (pixels)
CVAE_ARCH_OPTIONAL = {"context_radius": (0, 64)}
#: largest magnitude of a trained network weight (trained weights are of order 1; a bias of
#: 1e30 is damage and scores every pixel NaN/inf)
MAX_WEIGHT = 1e6


def _pool_excess(m: ModelCheck) -> None:
    pe = m.state.get("pool_excess")
    if pe is not None and not (isinstance(pe, list) and len(pe) == 2 and all(map(_num, pe))):
        raise m.bad("pool_excess: two finite numbers", _short(pe))


def pca(m: ModelCheck) -> None:
    """PCA and context PCA: mean (D,), components (D, q), explained variance (q,) > 0, a
    positive noise variance."""
    D = m.n_energy
    shape = m.shapes.get("components")
    q = shape[1] if shape is not None and len(shape) == 2 else 1
    if not 1 <= q <= D:
        raise m.bad(f"1..{D} PCA components", str(q))
    m.expect("mean", (D,))
    m.expect("components", (D, q))
    m.expect("explained_variance", (q,), positive=True)
    m.number("noise_variance", positive=True)
    _pool_excess(m)
    _scale(m, D)


def _scale(m: ModelCheck, D: int) -> None:
    """The per-pixel scale's fitted state: ``scale="free"`` a unit direction (D,) (files from
    before the option hold none and load as ``"fixed"``), ``"sum"`` a positive total."""
    scale = m.params.get("scale", "fixed")
    if scale not in ("fixed", "free", "sum"):
        raise m.bad("scale: 'fixed', 'free' or 'sum'", _short(scale))
    if "scale_direction" in m.shapes or scale == "free":
        if scale != "free":
            raise m.bad(f"no /arrays/scale_direction with scale={scale!r}", "one")
        m.expect("scale_direction", (D,), limit=1.0 + 1e-6)
    if scale == "sum":
        m.number("scale_total", positive=True)


def context_pca(m: ModelCheck) -> None:
    """Context PCA: the PCA arrays, and with ``code_variance="bulk"`` the learnt code
    variances (q,) > 0 and the per-code 'fitted on the pixel' flags (q,) as 0/1."""
    pca(m)
    q = m.shapes["components"][1]
    if "code_var" in m.shapes or "code_local" in m.shapes:
        m.expect("code_var", (q,), positive=True)
        m.expect("code_local", (q,), limit=1.0)


def bulk_context(m: ModelCheck) -> None:
    """Bulk + context PCA: context PCA's arrays, the global evidence's pool excess (two
    finite numbers) and, per pooling width, the calibration statistics (four finite numbers:
    median and spread of the global and the local evidence)."""
    context_pca(m)
    ge = m.state.get("global_excess")
    if not (isinstance(ge, list) and len(ge) == 2 and all(map(_num, ge))):
        raise m.bad("global_excess: two finite numbers", _short(ge))
    ext = m.state.get("extended_pixels", 0)
    if not (isinstance(ext, int) and not isinstance(ext, bool) and 0 <= ext <= 10**9):
        raise m.bad("extended_pixels: a count of pixels >= 0", _short(ext))
    cs = m.state.get("calibration_stats")
    if not (isinstance(cs, dict) and 1 <= len(cs) <= MAX_MEMBERS):
        raise m.bad("calibration_stats: a table of pooling widths", _short(cs))
    for k, v in cs.items():
        try:
            ok = float(k) >= 0.0
        except (TypeError, ValueError):
            ok = False
        if not (ok and isinstance(v, list) and len(v) == 4 and all(map(_num, v))
                and v[1] > 0 and v[3] > 0):
            raise m.bad("calibration_stats: per pooling width (a number >= 0) four finite "
                        "numbers with positive spreads", f"{_short(k)}: {_short(v)}")


def rx(m: ModelCheck) -> None:
    """RX: mean (D,), whitener (D, r) (with a basis (D, r) when r < D), channel variances > 0,
    finite logdet and shrinkage."""
    D = m.n_energy
    wh = m.shapes.get("whitener")
    r = wh[1] if wh is not None and len(wh) == 2 else D
    if not 1 <= r <= D:
        raise m.bad(f"1..{D} whitened directions", str(r))
    m.expect("mean", (D,))
    m.expect("whitener", (D, r))
    if "basis" in m.shapes:  # fitted on fewer pixels than channels (Woodbury form)
        m.expect("basis", (D, r))
        m.number("iso_precision", positive=True)
    elif r != D:
        raise m.bad(f"/arrays/whitener of shape ({D}, {D}) or an /arrays/basis",
                    f"shape {tuple(wh)} and no basis")
    m.expect("var", (D,), positive=True)
    m.number("logdet")
    m.number("shrinkage")
    _pool_excess(m)


def cvae(m: ModelCheck) -> None:
    """3D-CVAE: a known, bounded architecture, the scaler, and every network weight's shape
    from the architecture (built on the meta device: nothing allocated)."""
    D, state = m.n_energy, m.state
    arch = state.get("arch")
    required = set(CVAE_ARCH) | {"raw_init"}
    if not isinstance(arch, dict) or not required <= set(arch) \
            or set(arch) - required - set(CVAE_ARCH_OPTIONAL):
        raise m.bad(f"a CVAE architecture with the keys {sorted(required)} (optionally "
                    f"{sorted(CVAE_ARCH_OPTIONAL)})", _short(arch))
    for k, (lo, hi) in {**CVAE_ARCH, **CVAE_ARCH_OPTIONAL}.items():
        if k in arch and not _int(arch[k], lo, hi):
            raise m.bad(f"arch.{k} an integer in {lo}..{hi}", _short(arch[k]))
    if arch.get("context_radius", 0) and arch["spatial_layers"]:
        raise m.bad("arch.spatial_layers 0 in a context (blind-spot) model",
                    str(arch["spatial_layers"]))
    if not (_num(arch["raw_init"]) and abs(arch["raw_init"]) <= MAX_WEIGHT):
        raise m.bad(f"arch.raw_init a finite number of magnitude at most {MAX_WEIGHT:g}",
                    _short(arch["raw_init"]))
    if arch["n_energy"] != D:
        raise m.bad(f"arch.n_energy equal to the energy axis size {D}", str(arch["n_energy"]))
    sc = state.get("scaler")
    if not isinstance(sc, dict) or not all(_num(sc.get(k)) and abs(sc[k]) <= 1e15
                                           for k in ("scale", "noise", "floor")) \
            or sc["scale"] <= 0 or sc["floor"] <= 0 or sc["noise"] < 0:
        raise m.bad("a scaler with finite scale > 0, noise >= 0 and floor > 0 (at most 1e15)",
                    _short(sc))
    m.expect("scaler_mean", (D,))
    v = state.get("excess_stats")
    if v is not None and not (isinstance(v, list) and len(v) == 2 and all(map(_num, v))):
        raise m.bad("excess_stats: two finite numbers", _short(v))
    members = state.get("members", [])
    if not isinstance(members, list) or len(members) > MAX_MEMBERS or not all(
            isinstance(e, dict) and isinstance(e.get("excess_stats"), list)
            and len(e["excess_stats"]) == 2 and all(map(_num, e["excess_stats"]))
            for e in members):
        raise m.bad(f"members: a list of at most {MAX_MEMBERS} objects with two finite "
                    "excess_stats", _short(members))
    nested = state.get("nested_prefixes")
    if nested is not None and not (isinstance(nested, list) and nested and all(
            _int(p, 1, arch["latent_dim"]) for p in nested)):
        raise m.bad(f"nested_prefixes: sizes in 1..{arch['latent_dim']}", _short(nested))
    want = _cvae_weights(arch)
    prefixes = ["net."] + [f"member{i}.net." for i in range(1, len(members) + 1)]
    expected = {p + k: s for p in prefixes for k, s in want.items()}
    found = {k: s for k, s in m.shapes.items() if k not in ("scaler_mean", "calibration_scores")}
    if set(found) != set(expected):
        missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
        raise m.bad("the network weights of its architecture",
                    f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, unexpected "
                    f"{extra[:3]}{'...' if len(extra) > 3 else ''}")
    for k, s in expected.items():
        # batch-norm running variances and counters grow with the data: a looser bound
        m.expect(k, s, limit=MAX_WEIGHT if "running" not in k and "num_batches" not in k
                 else 1e15)


def _cvae_weights(arch: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    import torch

    from ..nn.model import CVAE3D

    with torch.device("meta"):  # shapes only: nothing is allocated
        return {k: tuple(v.shape) for k, v in CVAE3D(**arch).state_dict().items()}


def validator(schema: Callable[[ModelCheck], None]) -> classmethod:
    """A detector class's ``validate_model_file`` classmethod running ``schema``
    (``validate_model_file = _schemas.validator(_schemas.pca)`` in the class body)."""
    def validate_model_file(cls: type, check: ModelCheck) -> None:
        schema(check)

    validate_model_file.__doc__ = f"""Check a model file of this detector before its arrays are read.

        The detector's model-file schema, :func:`eelsanom.detectors._schemas.{schema.__name__}`
        (found through the class by :func:`eelsanom._registry.model_validator`).

        Parameters
        ----------
        check : eelsanom.modelfile.ModelCheck
            The file's hyperparameters, state and declared array shapes; the arrays this
            detector reads are named on it.

        Raises
        ------
        InputError
            "model file M: expected ..., found ..." for the first violation.
        """
    return classmethod(validate_model_file)
