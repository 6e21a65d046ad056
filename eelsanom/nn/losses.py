"""Losses of the 3D-CVAE, each a small free function citing the formula it implements,
and their composition into the per-pixel training loss (:func:`pixel_loss`,
:func:`nested_pixel_loss`) from the network's Gaussian outputs (:func:`gaussian_outputs`).

The elementwise ones work elementwise (no reduction) so the caller decides how to sum
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
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .device import autocast
from .scaler import Scaler

if TYPE_CHECKING:
    from .model import CVAE3D

__all__ = ["LOG_2PI", "sigma_from_raw", "gaussian_nll", "beta_nll_weight",
           "kl_standard_normal", "gaussian_outputs", "pixel_loss", "nested_pixel_loss"]

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


# ----------------------------------------------------------------------------- composition
def pixel_loss(target: torch.Tensor, mean: torch.Tensor, sigma: torch.Tensor, mu: torch.Tensor,
                logvar: torch.Tensor, beta: float, beta_nll: float, with_kl: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel ``(loss, elbo)`` ``(B, h, w)``: loss may carry the beta-NLL weighting.

    ``elbo = sum_e NLL + KL`` (the negative ELBO); ``loss = sum_e w_e NLL + beta KL``
    with ``w_e`` the beta-NLL weight (:func:`beta_nll_weight`, 1 when ``beta_nll = 0``).

    Parameters
    ----------
    target, mean, sigma : torch.Tensor of shape (B, E, h, w)
        Observed spectra and the predicted Gaussian (Anscombe units).
    mu, logvar : torch.Tensor of shape (B, d, h, w)
        The approximate posterior.
    beta : float
        Weight of the KL term in ``loss``.
    beta_nll : float
        Seitzer et al.'s beta-NLL exponent for ``loss`` (0 = plain NLL).
    with_kl : bool, default True
        ``False`` (a context model, whose prediction does not use the pixel's own
        code): both are the NLL alone.

    Returns
    -------
    loss, elbo : torch.Tensor of shape (B, h, w)
        Per-pixel training loss and negative ELBO, in nats.
    """
    nll_e = gaussian_nll(target, mean, sigma)
    kl = kl_standard_normal(mu, logvar).sum(1) if with_kl else torch.zeros_like(nll_e[:, 0])
    elbo = nll_e.sum(1) + kl
    if beta_nll:
        rec = (nll_e * beta_nll_weight(sigma, beta_nll)).sum(1)
    else:
        rec = nll_e.sum(1)
    return rec + beta * kl, elbo


def gaussian_outputs(model: CVAE3D, x: torch.Tensor, mean_t: torch.Tensor, scaler: Scaler, *,
                     sample: bool, generator: torch.Generator | None, amp: bool,
                     prefix: int | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                torch.Tensor]:
    """Run the model on scaled input ``x`` ``(B, 1, E, h + 2H, w + 2H)``.

    Returns ``(target, mean, sigma, mu, logvar)`` in float32, the first three
    of shape ``(B, E, h, w)`` in Anscombe units (``target`` is the central
    region of ``x`` mapped back), ``mu, logvar`` of shape ``(B, d, h, w)``.
    ``prefix = m`` decodes only the first ``m`` latent dimensions. A context
    model (``model.context_radius > 0``) predicts each central pixel from its
    neighbours (:meth:`CVAE3D.context_forward`; ``sample`` and ``prefix`` are
    ignored) and its sigma includes the neighbours' code spread.

    Parameters
    ----------
    model : CVAE3D
    x : Tensor of shape (B, 1, E, h + 2H, w + 2H)
        Scaled input (``H = model.halo``).
    mean_t : Tensor of shape (1, E, 1, 1)
        The scaler's per-channel mean on the device.
    scaler : Scaler
    sample : bool
        Decode a reparameterised sample instead of the posterior mean.
    generator : torch.Generator, optional
    amp : bool
        bf16 autocast of the network on CUDA.
    prefix : int, optional
        Decode only the first ``prefix`` latent dimensions.

    Returns
    -------
    target, mean, sigma : Tensor of shape (B, E, h, w)
    mu, logvar : Tensor of shape (B, d, h, w)
    """
    if getattr(model, "context_radius", 0):
        # blind-spot context mode: the centre is predicted from its neighbours' codes; the
        # prediction's variance adds the spread of those codes (deterministic, no sampling)
        with autocast(x.device, amp):
            out_mean, raw, extra, mu, logvar = model.context_forward(x)
        target, mean, sigma = _to_gaussian(model, x, out_mean, raw, mean_t, scaler)
        s = float(scaler.scale)
        sigma = torch.sqrt(sigma * sigma + (s * s) * extra.float())
        return target, mean, sigma, mu.float(), logvar.float()
    with autocast(x.device, amp):
        out_mean, raw, mu, logvar = model(x, sample=sample, generator=generator, prefix=prefix)
    target, mean, sigma = _to_gaussian(model, x, out_mean, raw, mean_t, scaler)
    return target, mean, sigma, mu.float(), logvar.float()


def _to_gaussian(model: CVAE3D, x: torch.Tensor, out_mean: torch.Tensor, raw: torch.Tensor,
                 mean_t: torch.Tensor, scaler: Scaler
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Network outputs -> ``(target, mean, sigma)`` ``(B, E, h, w)``, Anscombe units, float32."""
    hal = model.halo
    core = x[:, 0, :, hal:x.shape[3] - hal, hal:x.shape[4] - hal].float()
    s = float(scaler.scale)
    target = mean_t + s * core
    mean = mean_t + s * out_mean.float()
    sigma = sigma_from_raw(raw.float(), scaler.floor, float(scaler.noise))
    return target, mean, sigma


def nested_pixel_loss(model: CVAE3D, x: torch.Tensor, mean_t: torch.Tensor, scaler: Scaler,
                      prefixes: Sequence[int], *, sample: bool,
                      generator: torch.Generator | None, amp: bool, beta: float,
                      beta_nll: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Matryoshka loss (Kusupati et al., NeurIPS 2022) per pixel, ``(loss, elbo)`` ``(B, h, w)``.

    The input is encoded once (one sample ``z`` when ``sample``); the decoder is
    run on every prefix ``z[:m]`` (dimensions ``>= m`` set to 0, the prior's mean)
    and the reconstruction NLLs are *averaged* over the prefixes, so the loss
    keeps the scale of the ordinary one (same learning rate, same ``beta``). The
    KL term is that of the whole code, counted once: the dropped dimensions'
    share of it does not depend on ``m``. ``elbo`` is the prefix-averaged
    negative ELBO (the validation criterion of nested training).

    Parameters
    ----------
    model : CVAE3D
    x : Tensor of shape (B, 1, E, h + 2H, w + 2H)
        Scaled input (``H = model.halo``).
    mean_t : Tensor of shape (1, E, 1, 1)
        The scaler's per-channel mean on the device.
    scaler : Scaler
    prefixes : sequence of int
        Increasing prefix sizes (the last is normally ``latent_dim``).
    sample : bool
        Decode one reparameterised sample (training) or the posterior mean.
    generator : torch.Generator, optional
    amp : bool
        bf16 autocast of the network on CUDA.
    beta : float
        Weight of the KL term in ``loss``.
    beta_nll : float
        Seitzer et al.'s beta-NLL exponent for ``loss`` (0 = plain NLL).

    Returns
    -------
    loss, elbo : Tensor of shape (B, h, w)
    """
    with autocast(x.device, amp):
        mu, logvar = model.encode(x)
        z = model.reparameterize(mu, logvar, generator) if sample else mu
        outs = [model.decode(z, m) for m in prefixes]
    mu, logvar = mu.float(), logvar.float()
    # each prefix's (loss, elbo) carries the same KL once, so their mean counts it once
    per = [pixel_loss(*_to_gaussian(model, x, out_mean, raw, mean_t, scaler), mu, logvar,
                       beta, beta_nll) for out_mean, raw in outs]
    k = float(len(per))
    return sum(p[0] for p in per) / k, sum(p[1] for p in per) / k

