"""Latent-space analysis of anomaly detectors (the ``eelsanom.latent`` module).

Representation-analysis tools from the representation-learning literature,
applied to the per-pixel latent codes the detectors produce (the 3D-CVAE's
posterior means, the PCA detector's scores). Every tool is a plain function that
accepts an :class:`~eelsanom.result.AnomalyResult`, a numpy array ``(n, d)`` or
``(ny, nx, d)``, or a torch tensor, and returns numbers or per-pixel maps shaped
like the image. ``docs/latent.md`` says what each tool answers about the data, its
method and paper, its known-answer test and what to call.

One call per question::

    from eelsanom import latent
    latent.intrinsic_dimension(result)            # float
    latent.summarize(result)                      # LatentSummary (table, maps, plot())
    latent.compare(result_a, result_b)            # LatentComparison
    latent.seed_ensemble([r0, r1, r2])            # mean / disagreement maps
    latent.write_report("run_a", "run_b", "out")  # Markdown + figures

Modules: :mod:`~.similarity` (CKA, mutual k-NN, CKNNA, CCA), :mod:`~.relative`
(relative representations), :mod:`~.alignment` (Procrustes, unit matching),
:mod:`~.dimension` (TwoNN, MLE, local map), :mod:`~.entropy` (DSE, DSMI, von
Neumann entropy, MCR^2), :mod:`~.ensembles`, :mod:`~.quantize`,
:mod:`~.matryoshka`, :mod:`~.report`.
"""

from __future__ import annotations

from .alignment import (
    ProcrustesResult,
    SparsePrediction,
    UnitMatching,
    cluster_units,
    match_units,
    procrustes,
    sparse_unit_prediction,
    unit_correlation,
)
from .analysis import LatentComparison, LatentSummary, compare, intrinsic_dimension, summarize
from .dimension import local_dimension_map, mle_dimension, twonn
from .ensembles import EnsembleR2, SeedEnsemble, ensemble_r2, least_squares_r2, seed_ensemble
from .entropy import (
    RateReduction,
    coding_rate,
    covariance_spectrum,
    diffusion_spectral_entropy,
    diffusion_spectral_mutual_information,
    effective_rank,
    rate_reduction,
    von_neumann_entropy,
)
from .matryoshka import (
    LinearNestedAE,
    PrefixCurve,
    fit_linear_nested_ae,
    latent_prefix_scorer,
    pca_prefix_errors,
    prefix_curve,
    prefix_reconstruction_errors,
    principal_angles,
)
from .quantize import (
    QuantizationReport,
    QuantizedCodes,
    binary_codes,
    hamming_fraction,
    latent_anomaly_score,
    quantization_report,
    quantize,
)
from .relative import relative_agreement, relative_representation, select_anchors
from .report import load_run, write_report
from .similarity import (
    CCA,
    CCAAlignment,
    canonical_correlations,
    cca_alignment,
    cknna,
    linear_cka,
    mutual_knn,
    mutual_knn_map,
)

__all__ = [
    # AnomalyResult layer
    "summarize", "compare", "intrinsic_dimension", "LatentSummary", "LatentComparison",
    "load_run", "write_report",
    # similarity
    "linear_cka", "mutual_knn", "mutual_knn_map", "cknna", "CCA", "canonical_correlations",
    "CCAAlignment", "cca_alignment",
    # relative representations
    "select_anchors", "relative_representation", "relative_agreement",
    # alignment
    "ProcrustesResult", "procrustes", "unit_correlation", "UnitMatching", "match_units",
    "SparsePrediction", "sparse_unit_prediction", "cluster_units",
    # dimension
    "twonn", "mle_dimension", "local_dimension_map",
    # entropy
    "diffusion_spectral_entropy", "diffusion_spectral_mutual_information",
    "covariance_spectrum", "von_neumann_entropy", "effective_rank", "coding_rate",
    "RateReduction", "rate_reduction",
    # ensembles
    "SeedEnsemble", "seed_ensemble", "least_squares_r2", "EnsembleR2", "ensemble_r2",
    # quantization
    "QuantizedCodes", "quantize", "binary_codes", "hamming_fraction", "latent_anomaly_score",
    "QuantizationReport", "quantization_report",
    # matryoshka
    "LinearNestedAE", "fit_linear_nested_ae", "principal_angles", "pca_prefix_errors",
    "prefix_reconstruction_errors", "PrefixCurve", "prefix_curve", "latent_prefix_scorer",
]
