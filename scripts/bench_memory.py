"""Peak memory of streamed scoring on a spectrum image larger than memory (issue 6).

Writes a synthetic EELS cube (default 2048 x 2048 x 256 float32 = 4.3 GB) as a
chunked ``.zspy`` under /tmp, block by block (generation itself stays bounded in
memory), then measures, each in a fresh subprocess, peak resident memory
(``ru_maxrss``) and wall time of:

- ``pca-fit``: PCA trained on a bulk band of rows, read lazily (``fit_streaming``);
- ``pca-score``: PCA scoring of the whole cube streamed (``score_streaming``),
  the NLL map, mask and latent codes written block by block to ``.zspy``;
- ``cvae-fit``: a small 3D-CVAE trained on a bulk window read lazily;
- ``cvae-score``: 3D-CVAE scoring streamed over the first ``--cvae-blocks``
  blocks (the whole cube takes hours on 2 CPU cores), time extrapolated to the
  whole cube; memory does not grow with the number of blocks (each block is
  read, scored and dropped), which the row ``cvae-score (1/2 blocks)`` checks.

It prints a table: cube size, peak RSS, RSS / cube, time; plus the RSS of a
process that only imports eelsanom, torch and HyperSpy and reads a tiny file
(the floor under every row). Target: peak RSS below a quarter of the cube. Delete the cube with
``--cleanup`` (default on).

Usage::

    python scripts/bench_memory.py                     # 4.3 GB cube, the table
    python scripts/bench_memory.py --shape 256 256 256 # a quick run (64 MB)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

E0, DE = 690.0, 0.35  # energy axis (eV): Fe L3 near 708, L2 near 721


def _spectra(yy: np.ndarray, xx: np.ndarray, ne: int, rng: np.random.Generator,
             anomalous: np.ndarray) -> np.ndarray:
    """Poisson counts (h, w, ne) of a power-law background and two white lines."""
    e = E0 + DE * np.arange(ne, dtype=np.float32)
    t = 1.0 + 0.3 * np.sin(yy / 97.0)[:, None] * np.cos(xx / 131.0)[None, :]  # thickness
    shift = np.where(anomalous, 1.5, 0.0).astype(np.float32)[..., None]
    bg = 400.0 * (e / E0) ** -3.0
    edge = 1.0 / (1.0 + np.exp(-(e - 708.0 - shift) / 0.8))
    l3 = 180.0 * np.exp(-0.5 * ((e - 709.0 - shift) / 1.2) ** 2)
    l2 = 90.0 * np.exp(-0.5 * ((e - 722.0 - shift) / 1.4) ** 2)
    lam = t[..., None].astype(np.float32) * (bg + 60.0 * edge + l3 + l2)
    return rng.poisson(lam).astype(np.float32)


def generate(path: Path, shape: tuple[int, int, int], chunk: int) -> float:
    """Write the cube as .zspy chunk by chunk (dask computes one chunk per task); seconds."""
    import dask.array as da
    import hyperspy.api as hs

    ny, nx, ne = shape

    def block(block_info=None):
        (y0, y1), (x0, x1), _ = block_info[None]["array-location"]
        yy, xx = np.arange(y0, y1), np.arange(x0, x1)
        # anomalies: 12 x 12 px squares on a 200-px grid
        anom = ((yy[:, None] % 200) < 12) & ((xx[None, :] % 200) < 12) & (yy[:, None] > 300)
        rng = np.random.default_rng([y0, x0])
        return _spectra(yy.astype(np.float32), xx.astype(np.float32), ne, rng, anom)

    data = da.map_blocks(block, chunks=((chunk,) * (ny // chunk), (chunk,) * (nx // chunk),
                                        (ne,)), dtype=np.float32)
    s = hs.signals.Signal1D(data).as_lazy()
    s.set_signal_type("EELS")
    ax = s.axes_manager
    ax[0].name, ax[0].scale, ax[0].units = "x", 0.5, "nm"
    ax[1].name, ax[1].scale, ax[1].units = "y", 0.5, "nm"
    ax[2].name, ax[2].scale, ax[2].offset, ax[2].units = "Energy loss", DE, E0, "eV"
    s.metadata.General.title = "bench cube"
    t0 = time.perf_counter()
    s.save(path, overwrite=True, show_progressbar=False)
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- workers
def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _worker(args: argparse.Namespace) -> dict:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.INFO, format="  %(name)s: %(message)s", stream=sys.stderr)
    import hyperspy.api  # noqa: F401 - part of the floor
    import torch

    from eelsanom.detectors import get_detector, load_detector
    from eelsanom.io import load_spectrum_image
    from eelsanom.stream import fit_streaming, score_streaming

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    out: dict = {"task": args.task}
    if args.task == "floor":  # imports, and HyperSpy's readers loaded on a tiny file
        tiny = Path(args.work) / "tiny.zspy"
        sig = hyperspy.api.signals.Signal1D(np.ones((2, 3, 8), np.float32))
        sig.axes_manager[-1].units = "eV"
        sig.save(tiny, overwrite=True)
        load_spectrum_image(tiny, lazy=True)
        out.update(seconds=0.0, rss_mb=_rss_mb())
        return out
    si = load_spectrum_image(args.cube, lazy=True)
    ny, nx, ne = si.shape
    t0 = time.perf_counter()
    work = Path(args.work)
    if args.task == "pca-fit":
        mask = np.zeros((ny, nx), bool)
        mask[:256] = True  # the bulk band (anomalies start at row 300)
        det = fit_streaming(get_detector("pca", device="cpu"), si, mask)
        det.save(work / "pca.h5")
        out["train_pixels"] = int(det.n_train_)
    elif args.task == "pca-score":
        det = load_detector(work / "pca.h5")
        res = score_streaming(det, si, out=work / "pca_out", stem="cube",
                              protect=[args.cube])
        out.update(blocks=res.info["streaming"]["blocks"], flagged=int(res.mask.sum()))
    elif args.task == "cvae-fit":
        mask = np.zeros((ny, nx), bool)
        mask[32:96, 32:96] = True  # a 64 x 64 bulk window
        det = get_detector("cvae", device="cpu", epochs=args.cvae_epochs, seed=0)
        fit_streaming(det, si, mask)
        det.save(work / "cvae.h5")
        out["train_pixels"] = int(mask.sum())
    elif args.task == "cvae-score":
        from eelsanom.stream import plan_blocks

        det = load_detector(work / "cvae.h5")
        det.set_params(tile_size=args.cvae_tile)
        siw = det.window(si)
        bh, bw, blocks = plan_blocks((ny, nx), ne, chunk_pixels=args.cvae_block ** 2,
                                     chunks=siw.data.chunks, context=det.score_context)
        print(f"  blocks of {bh} x {bw} px, tile {args.cvae_tile}", file=sys.stderr)
        # the streamed loop of score_streaming, over the first n blocks only
        n = min(args.n_blocks, len(blocks))
        for region in blocks[:n]:
            det.score_block(siw, region)
        out.update(blocks=n, of_blocks=len(blocks),
                   pixels=int(sum((b[1] - b[0]) * (b[3] - b[2]) for b in blocks[:n])))
    out.update(seconds=time.perf_counter() - t0, rss_mb=_rss_mb())
    return out


def _run(task: str, args: argparse.Namespace, **extra: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", task, "--cube", str(args.cube), "--work",
           str(args.work), "--cvae-epochs", str(args.cvae_epochs), "--cvae-tile",
           str(args.cvae_tile), "--cvae-block", str(args.cvae_block)]
    for k, v in extra.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.stderr.write(r.stderr)
        raise SystemExit(f"{task} failed")
    log = [ln for ln in r.stderr.splitlines()
           if "stream" in ln or "fitted" in ln or "blocks of" in ln]
    for ln in log[:4]:
        print(ln, file=sys.stderr)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[2048, 2048, 256],
                    metavar=("NY", "NX", "NE"))
    ap.add_argument("--chunk", type=int, default=64, help="spatial chunk side of the .zspy")
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="where the cube goes")
    ap.add_argument("--keep", action="store_true", help="keep the cube (and reuse it)")
    ap.add_argument("--cvae-epochs", type=int, default=3)
    ap.add_argument("--cvae-tile", type=int, default=32, help="3D-CVAE tile_size when scoring")
    ap.add_argument("--cvae-block", type=int, default=128, help="3D-CVAE block side (pixels)")
    ap.add_argument("--cvae-blocks", type=int, default=4, help="3D-CVAE blocks to score")
    ap.add_argument("--tasks", default="pca-fit,pca-score,cvae-fit,cvae-score",
                    help="which rows to run (a kept cube and models are reused)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--cube", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--work", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--n-blocks", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        args.task = args.worker
        print(json.dumps(_worker(args)))
        return
    ny, nx, ne = args.shape
    root = Path(args.dir) / f"eelsanom_bench_{ny}x{nx}x{ne}"
    root.mkdir(parents=True, exist_ok=True)
    args.cube = root / "cube.zspy"
    args.work = root
    cube_gb = 4.0 * ny * nx * ne / 1e9
    try:
        if not args.cube.exists():
            print(f"writing a {ny} x {nx} x {ne} float32 cube ({cube_gb:.2f} GB) to {args.cube}",
                  file=sys.stderr)
            gen_s = generate(args.cube, (ny, nx, ne), args.chunk)
            print(f"  written in {gen_s:.0f} s", file=sys.stderr)
        disk = sum(f.stat().st_size for f in args.cube.rglob("*") if f.is_file()) / 1e9
        rows = [("floor (imports, readers)", _run("floor", args))]
        tasks = [t.strip() for t in args.tasks.split(",")]
        for task in ("pca-fit", "pca-score", "cvae-fit"):
            if task in tasks:
                print(f"running {task} ...", file=sys.stderr)
                rows.append((task, _run(task, args)))
        half = max(1, args.cvae_blocks // 2)
        for n in (half, args.cvae_blocks) if "cvae-score" in tasks else ():
            print(f"running cvae-score over {n} block(s) ...", file=sys.stderr)
            rows.append((f"cvae-score ({n} blocks)", _run("cvae-score", args, n_blocks=n)))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\ncube: {ny} x {nx} x {ne} float32 = {cube_gb:.2f} GB in memory, {disk:.2f} GB on "
          f"disk (.zspy, {args.chunk} x {args.chunk} px chunks); target peak RSS < "
          f"{cube_gb / 4:.2f} GB; threads {os.environ.get('BENCH_THREADS', '2')}")
    print(f"{'run':<26} {'peak RSS (GB)':>14} {'RSS / cube':>11} {'time (s)':>10}  notes")
    for name, r in rows:
        rss = r["rss_mb"] / 1024.0 * 1.073741824  # MiB -> GB
        note = ""
        if "blocks" in r and "of_blocks" in r:
            full = r["seconds"] * r["of_blocks"] / r["blocks"]
            note = (f"{r['blocks']} of {r['of_blocks']} blocks ({r['pixels']} px); whole cube "
                    f"~{full / 3600:.1f} h extrapolated")
        elif "blocks" in r:
            note = f"{r['blocks']} blocks, {r['flagged']} px flagged"
        elif "train_pixels" in r:
            note = f"{r['train_pixels']} training px"
        print(f"{name:<26} {rss:>14.2f} {rss / cube_gb:>11.3f} {r['seconds']:>10.1f}  {note}")


if __name__ == "__main__":
    main()
