"""Issue 20: fuzzing that keeps the refusals honest (property-based, hypothesis).

Model files (attributes, JSON state, array shapes and dtypes, bit flips in chunks, extra and
missing arrays, absurd values) and data-file headers (declared shapes, chunking, axes, dtypes,
bit flips in chunks) are mutated, and the command line is run on each (``apply`` for a
model, ``detect`` for a data file, through :func:`eelsanom.cli.main` in this process). For
every mutation:

- the exit status is 2 (one line on stderr, naming the mutated file, no traceback) or 0 (a
  clean result: the summary written);
- the mutated input is unchanged afterwards (its bytes);
- memory stays bounded (the peak of Python-tracked allocations, numpy's included, under
  :data:`MEMORY_BOUND`).

A fast profile (:data:`FAST` mutations per family) runs in the default test run; the long
profile (:data:`LONG`) is marked ``slow``. Each run prints its outcome counts.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
import tracemalloc
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from eelsanom import cli  # noqa: E402
from eelsanom.detectors import get_detector  # noqa: E402
from eelsanom.simulate import simulate  # noqa: E402

FAST = 8
#: the long profile's mutations per family ($EELSANOM_FUZZ_LONG for a longer hunt)
LONG = int(os.environ.get("EELSANOM_FUZZ_LONG", "60"))
MEMORY_BOUND = 512 << 20


# ----------------------------------------------------------------------------- the seeds
@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("fuzz")
    sim = simulate(shape=(12, 12), seed=3)
    out = {"data": sim.save(d / "data.hspy")}
    for method in ("pca", "rx", "context-pca"):
        kw = {"neighbourhood": 3} if method == "context-pca" else {}
        det = get_detector(method, **kw).fit(sim.si, sim.bulk_mask)
        out[method] = det.save(d / f"{method}.h5")
    return out


def _digest(p: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p.rglob("*")) if p.is_dir() else [p]:
        if f.is_file():
            h.update(f.read_bytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- mutations
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids,
                                                              max_size=4),
    max_leaves=8)
dims = st.integers(0, 300)
dtypes = st.sampled_from(["f4", "f8", "f2", "i4", "u1", "i8", "c8", "?", "S5"])


def model_op():
    return st.one_of(
        st.tuples(st.just("root attr"),
                  st.sampled_from(["format", "format_version", "detector", "params", "state",
                                   "created", "extra"]),
                  json_values),
        st.tuples(st.just("state key"),
                  st.sampled_from(["energy_axis", "noise_variance", "threshold_value",
                                   "pool_excess", "n_components", "logdet", "shrinkage",
                                   "iso_precision", "gain", "calibration", "selection"]),
                  json_values),
        st.tuples(st.just("axis key"), st.sampled_from(["size", "scale", "offset", "units"]),
                  json_values),
        st.tuples(st.just("param"), st.sampled_from(["threshold", "n_components", "pooling",
                                                     "transform", "neighbourhood", "device",
                                                     "unknown_param", "energy_range"]),
                  json_values),
        st.tuples(st.just("array shape"), st.integers(0, 10), st.lists(dims, max_size=3),
                  dtypes),
        st.tuples(st.just("array values"), st.integers(0, 10),
                  st.sampled_from([np.nan, np.inf, -1.0, 0.0, 1e30, -1e30, 1e-300])),
        st.tuples(st.just("bit flip"), st.integers(0, 10), st.floats(0, 1),
                  st.integers(1, 64)),
        st.tuples(st.just("extra array"), st.text("abcdefgh_", min_size=1, max_size=8),
                  st.lists(st.integers(1, 20000), min_size=1, max_size=3), st.booleans()),
        st.tuples(st.just("missing array"), st.integers(0, 10)),
    )


def data_op():
    return st.one_of(
        st.tuples(st.just("axis attr"), st.integers(0, 3),
                  st.sampled_from(["size", "scale", "offset", "units", "navigate", "name",
                                   "_type"]),
                  st.one_of(st.integers(-5, 10**7), st.floats(allow_nan=True),
                            st.text(max_size=6), st.booleans())),
        st.tuples(st.just("drop axis"), st.integers(0, 2)),
        st.tuples(st.just("declared shape"), st.lists(st.integers(1, 5000), min_size=1,
                                                       max_size=4), st.booleans()),
        st.tuples(st.just("chunking"), st.lists(st.integers(1, 40), min_size=3, max_size=3)),
        st.tuples(st.just("dtype"), dtypes),
        st.tuples(st.just("bit flip"), st.floats(0, 1), st.integers(1, 64)),
        st.tuples(st.just("values"), st.sampled_from([np.nan, np.inf, -1.0, 0.0, 1e30])),
    )


def _arrays(f: h5py.File) -> list[str]:
    return sorted(f["arrays"]) if isinstance(f.get("arrays"), h5py.Group) else []


def _flip_chunk_bytes(path: Path, dset: str, where: float, n: int) -> None:
    with h5py.File(path, "r") as f:
        ds = f[dset]
        if ds.chunks is None or ds.id.get_num_chunks() == 0:
            info = (ds.id.get_offset(), ds.id.get_storage_size())
        else:
            c = ds.id.get_chunk_info(int(where * (ds.id.get_num_chunks() - 1)))
            info = (c.byte_offset, c.size)
    off, size = info
    if off is None or not size:
        return
    with open(path, "r+b") as fh:
        fh.seek(off + int(where * max(size - n, 0)))
        fh.write(bytes((b ^ 0xFF) for b in fh.read(min(n, size))[::-1]) or b"\xff")


def mutate_model(path: Path, op: tuple) -> None:
    kind = op[0]
    if kind == "bit flip":
        with h5py.File(path, "r") as f:
            names = _arrays(f)
        if names:
            _flip_chunk_bytes(path, f"arrays/{names[op[1] % len(names)]}", op[2], op[3])
        return
    with h5py.File(path, "r+") as f:
        names = _arrays(f)
        if kind == "root attr":
            v = op[2]
            f.attrs[op[1]] = json.dumps(v) if not isinstance(v, (int, float, str)) or \
                isinstance(v, bool) else v
        elif kind in ("state key", "axis key", "param"):
            attr = "params" if kind == "param" else "state"
            d = json.loads(f.attrs[attr])
            if kind == "axis key":
                d.setdefault("energy_axis", {})[op[1]] = op[2]
            else:
                d[op[1]] = op[2]
            f.attrs[attr] = json.dumps(d)
        elif kind == "array shape" and names:
            name = names[op[1] % len(names)]
            del f["arrays"][name]
            shape, dt = tuple(op[2]), np.dtype(op[3])
            f["arrays"].create_dataset(name, data=np.ones(shape, dtype=dt))
        elif kind == "array values" and names:
            name = names[op[1] % len(names)]
            a = np.array(f["arrays"][name][()], dtype=np.float64)
            if a.size:
                a.flat[0] = op[2]
            del f["arrays"][name]
            f["arrays"].create_dataset(name, data=a)
        elif kind == "extra array":
            name, shape, chunked = op[1], tuple(op[2]), op[3]
            if name not in f["arrays"]:
                f["arrays"].create_dataset(name, shape=shape, dtype="f8",
                                           chunks=tuple(min(s, 64) for s in shape)
                                           if chunked else None,
                                           compression="gzip" if chunked else None)
        elif kind == "missing array" and names:
            del f["arrays"][names[op[1] % len(names)]]


def _group(f: h5py.File) -> h5py.Group:
    exp = f["Experiments"]
    return exp[next(iter(exp))]


def mutate_data(path: Path, op: tuple) -> None:
    kind = op[0]
    if kind == "bit flip":
        with h5py.File(path, "r") as f:
            name = _group(f)["data"].name
        _flip_chunk_bytes(path, name, op[1], op[2])
        return
    with h5py.File(path, "r+") as f:
        g = _group(f)
        if kind == "axis attr":
            ax = g.get(f"axis-{op[1]}")
            if ax is not None:
                ax.attrs[op[2]] = op[3]
        elif kind == "drop axis":
            if f"axis-{op[1]}" in g:
                del g[f"axis-{op[1]}"]
        elif kind == "declared shape":
            del g["data"]
            shape, written = tuple(op[1]), op[2]
            if written and np.prod(shape) <= 2_000_000:
                g.create_dataset("data", data=np.random.default_rng(0).poisson(
                    50, shape).astype("f4"))
            else:  # declared, chunked, never written
                g.create_dataset("data", shape=shape, dtype="f4",
                                 chunks=tuple(min(s, 32) for s in shape), compression="gzip")
        elif kind == "chunking":
            a = g["data"][()]
            del g["data"]
            g.create_dataset("data", data=a, chunks=tuple(min(c, s) for c, s in
                                                          zip(op[1], a.shape)),
                             compression="gzip")
        elif kind == "dtype":
            a = g["data"][()]
            del g["data"]
            dt = np.dtype(op[1])
            g.create_dataset("data", data=a.astype(dt) if dt.kind != "S" else
                             np.full(a.shape, b"x", dtype=dt))
        elif kind == "values":
            a = g["data"][()]
            a.flat[len(a.flat) // 2] = op[1]
            g["data"][...] = a


# ----------------------------------------------------------------------------- the property
def _apply(mutate, target: Path, op: tuple) -> None:
    """Apply one mutation; one that does not fit this file (a JSON value that is no longer an
    object after an earlier mutation, ...) leaves it as it is."""
    with contextlib.suppress(Exception):
        mutate(target, op)


def _run(argv: list[str]) -> tuple[int, str, int]:
    """``cli.main(argv)``: exit status, stderr, peak traced memory (bytes)."""
    err = io.StringIO()
    tracemalloc.start()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                rc = cli.main(argv)
            except SystemExit as exc:  # argparse
                rc = int(exc.code or 0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return rc, err.getvalue(), peak


def _outcome(rc: int, err: str, names: tuple[str, ...], peak: int) -> str:
    lines = err.strip().splitlines()
    if peak > MEMORY_BOUND:
        return f"other: {peak >> 20} MiB peak"
    if rc == 0:
        return "clean result"
    if rc == 2 and len(lines) == 1 and "Traceback" not in err \
            and any(n in lines[0] for n in names):
        return "exit 2"
    return f"other: rc {rc}: {err.strip()[-600:]}"


def _fuzz(kind: str, seeds: dict[str, Path], n: int, counts: Counter) -> None:
    ops = model_op() if kind == "model" else data_op()

    @settings(max_examples=n, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(method=st.sampled_from(["pca", "rx", "context-pca"]),
           mutation=st.lists(ops, min_size=1, max_size=3))
    def one(method: str, mutation: list) -> None:
        with tempfile.TemporaryDirectory(prefix="eelsanom-fuzz-") as tmp:
            tmp_p = Path(tmp)
            if kind == "model":
                target = tmp_p / "mutated.h5"
                shutil.copy(seeds[method], target)
                for op in mutation:
                    _apply(mutate_model, target, op)
                argv = ["apply", str(target), str(seeds["data"]), "--out", str(tmp_p / "o"),
                        "--formats", "hspy", "-q"]
                names = ("mutated.h5", "data.hspy")
            else:
                target = tmp_p / "mutated.hspy"
                shutil.copy(seeds["data"], target)
                for op in mutation:
                    _apply(mutate_data, target, op)
                argv = ["detect", str(target), "--method", method, "--out", str(tmp_p / "o"),
                        "--formats", "hspy", "-q"]
                names = ("mutated.hspy",)
            before = _digest(target)
            rc, err, peak = _run(argv)
            outcome = _outcome(rc, err, names, peak)
            if rc == 0:
                assert (tmp_p / "o" / f"{Path(argv[2] if kind == 'model' else argv[1]).stem}"
                        "_summary.json").is_file()
            assert _digest(target) == before, f"{target.name} changed by {mutation}"
            counts[outcome.split(":")[0]] += 1
            assert not outcome.startswith("other"), (mutation, outcome)

    one()


@pytest.mark.parametrize("kind", ["model", "data"])
def test_fuzz_fast(seeds, kind):
    counts: Counter = Counter()
    _fuzz(kind, seeds, FAST, counts)
    print(f"\nfuzz {kind} (fast): {sum(counts.values())} mutations tried: {dict(counts)}")
    assert counts["other"] == 0 and sum(counts.values()) >= FAST // 2


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["model", "data"])
def test_fuzz_long(seeds, kind):
    counts: Counter = Counter()
    _fuzz(kind, seeds, LONG, counts)
    print(f"\nfuzz {kind} (long): {sum(counts.values())} mutations tried: {dict(counts)}")
    assert counts["other"] == 0 and sum(counts.values()) >= LONG // 2
