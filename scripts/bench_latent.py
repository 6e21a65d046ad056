"""Time each per-pixel map tool of eelsanom.latent on a 192 x 192 image of random codes.

Not a test (nothing is asserted); prints one line per tool. Usage::

    python scripts/bench_latent.py [--d 8 16] [--size 192] [--seed 0]

Random Gaussian codes are the worst case for the k-NN searches (their intrinsic
dimension equals d); real latents, which lie near a low-dimensional set, are
faster with the k-d tree used for d <= 8.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def bench(z: np.ndarray, zb: np.ndarray, mask: np.ndarray) -> None:
    """Print wall and CPU seconds of each tool on codes ``z`` (and ``zb`` for two-space tools)."""
    from eelsanom import latent

    tools = [
        ("mutual_knn_map (k=10)", lambda: latent.mutual_knn_map(z, zb, k=10)),
        ("cknna (k=10)", lambda: latent.cknna(z, zb, k=10)),
        ("local_dimension_map (k=50)", lambda: latent.local_dimension_map(z, k=50)),
        ("relative_agreement (32 k-means anchors)",
         lambda: latent.relative_agreement(z, zb, n_anchors=32)),
        ("procrustes residual map", lambda: latent.procrustes(z, zb)),
        ("latent_anomaly_score", lambda: latent.latent_anomaly_score(z)),
        ("twonn", lambda: latent.twonn(z)),
        ("mle_dimension (k=10)", lambda: latent.mle_dimension(z)),
        ("linear_cka (biased + unbiased)",
         lambda: (latent.linear_cka(z, zb), latent.linear_cka(z, zb, unbiased=True))),
        ("cca_alignment (4000 px)", lambda: latent.cca_alignment(z, zb)),
        ("diffusion_spectral_entropy (1500 px)", lambda: latent.diffusion_spectral_entropy(z)),
        ("DSMI with a mask (1500 px per class)",
         lambda: latent.diffusion_spectral_mutual_information(z, mask)),
        ("rate_reduction (mask)", lambda: latent.rate_reduction(z, mask)),
        ("quantization_report (2000 queries)", lambda: latent.quantization_report(z)),
        ("summarize (all single-space tools)", lambda: latent.summarize(z, mask=mask)),
        ("compare (all two-space tools)", lambda: latent.compare(z, zb)),
    ]
    print(f"  {'tool':42s} {'wall s':>7s} {'CPU s':>7s}")
    for name, fn in tools:
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        print(f"  {name:42s} {time.perf_counter() - t0:7.2f} {time.process_time() - c0:7.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import torch  # noqa: F401 - imported up front so no tool pays for it

    print(f"{args.size} x {args.size} = {args.size ** 2} codes; CPU cores: {os.cpu_count()}; "
          f"load average {os.getloadavg()[0]:.1f}")
    for d in args.d:
        rng = np.random.default_rng(args.seed)
        z = rng.normal(size=(args.size, args.size, d)).astype(np.float32)
        q = np.linalg.qr(rng.normal(size=(d, d)))[0]
        zb = z @ q + 0.1 * rng.normal(size=z.shape)
        mask = rng.random((args.size, args.size)) < 0.02
        print(f"\nd = {d}")
        bench(z, zb, mask)


if __name__ == "__main__":
    main()
