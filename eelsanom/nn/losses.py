"""Losses of the 3D-CVAE, each a small free function citing the formula it implements.

All of them work elementwise (no reduction) so the caller decides how to sum
over channels, pixels and batches; they are meant to run in float32 (cast
half-precision network outputs first).

Units: the data are Anscombe-transformed counts, ``a = 2 sqrt(x + 3/8)``, whose
Poisson noise has a standard deviation of about 1 whatever the count level, so
"NLL" means the Gaussian negative log-likelihood of the *transformed* spectrum
(in nats). It differs from the NLL of the raw counts by the Jacobian term
``sum_e log(da/dx)``, which depends on the data only, not on the model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["LOG_2PI", "sigma_from_raw", "gaussian_nll", "beta_nll_weight",
           "kl_standard_normal"]

#: ``log(2 pi)``
LOG_2PI = math.log(2.0 * math.pi)


def sigma_from_raw(raw: torch.Tensor, floor: float, scale: float = 1.0) -> torch.Tensor:
    """Standard deviation with a floor: ``sigma = scale * (floor + softplus(raw))``.

    The floor keeps a free variance from collapsing (the NLL of an easy channel
    would otherwise run to minus infinity and dominate every score). ``scale``
    is the data's noise level (about 1 for Anscombe-transformed counts), so
    ``floor`` is a fraction of the noise standard deviation.

    Parameters
    ----------
    raw : torch.Tensor of any shape, e.g. (batch, n_energy)
        Unconstrained network output.
    floor : float
        Lower bound of ``sigma / scale``.
    scale : float, default 1.0
        Noise level of the data (same units as the data, e.g. Anscombe units).

    Returns
    -------
    torch.Tensor, same shape as ``raw``
        Standard deviation, at least ``scale * floor``.
    """
    return scale * (floor + F.softplus(raw))


def gaussian_nll(x: torch.Tensor, mean: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Elementwise Gaussian NLL: ``0.5 ((x - mean) / sigma)^2 + log(sigma) + 0.5 log(2 pi)``.

    Parameters
    ----------
    x : torch.Tensor of any shape, e.g. (batch, n_energy)
        Observed values (Anscombe-transformed counts).
    mean, sigma : torch.Tensor, broadcastable with ``x``
        Predicted mean and standard deviation (``sigma > 0``), same units as ``x``.

    Returns
    -------
    torch.Tensor, broadcast shape of the inputs
        Negative log-likelihood per element, in nats (higher = less likely).
    """
    return 0.5 * ((x - mean) / sigma) ** 2 + torch.log(sigma) + 0.5 * LOG_2PI


def beta_nll_weight(sigma: torch.Tensor, beta: float) -> torch.Tensor:
    """Weight ``stop_grad(sigma^(2 beta))`` of the beta-NLL loss (Seitzer et al., ICLR 2022).

    Multiplying the Gaussian NLL by it (``beta`` in [0, 1]; 0 = plain NLL, 0.5
    is the paper's recommendation) stops the gradient from favouring
    low-variance voxels, another guard against variance collapse.

    Parameters
    ----------
    sigma : torch.Tensor of any shape, e.g. (batch, n_energy)
        Predicted standard deviation.
    beta : float
        Exponent in [0, 1]; 0 returns ones.

    Returns
    -------
    torch.Tensor, same shape as ``sigma``
        ``sigma.detach() ** (2 beta)`` (no gradient flows through it).
    """
    if beta == 0:
        return torch.ones_like(sigma)
    return sigma.detach() ** (2.0 * beta)


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Elementwise ``KL(N(mu, exp(logvar)) || N(0, 1)) = 0.5 (mu^2 + exp(logvar) - logvar - 1)``.

    (Kingma & Welling 2014, appendix B.)

    Parameters
    ----------
    mu, logvar : torch.Tensor of shape (batch, latent_dim)
        Mean and log-variance of the approximate posterior (any matching
        shapes work: the formula is elementwise).

    Returns
    -------
    torch.Tensor, same shape as ``mu``
        KL divergence per latent dimension, in nats (sum over the last axis for
        the total).
    """
    return 0.5 * (mu ** 2 + torch.exp(logvar) - logvar - 1.0)
