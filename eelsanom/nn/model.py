"""The 3D convolutional VAE (torch ``nn.Module`` only; training lives in :mod:`.train`).

Tensors follow torch's ``Conv3d`` layout ``(batch, channels, energy, y, x)``.

Design:

- **Encoder, two paths added together.** A *linear* path maps each pixel's
  own spectrum to ``(mu, logvar)`` (a ``(n_energy, 1, 1)`` convolution: dense
  in energy, never across pixels); it is initialised from PCA of the training
  spectra (:meth:`CVAE3D.init_from_pca`), so training starts from probabilistic
  PCA instead of from noise. A *3D-convolutional* path adds what the
  neighbourhood and non-linearity contribute: strided energy-only
  convolutions (kernel ``(k, 1, 1)``) bring the energy axis down to about
  32-64 coarse channels, then ``3 x 3 x 3`` convolutions mix each pixel with its
  neighbours. These are *valid* (unpadded) in space: the caller supplies
  ``halo`` pixels of context on each side (replicate-padded at the image
  border), so the output at a pixel depends on a fixed ``(2 halo + 1)^2``
  neighbourhood. Whole-image and tiled inference therefore agree: no seams,
  any image size. Its output layer starts at zero.
- **Per-pixel latent codes** ``(B, d, h, w)``: no dense layer across pixels.
- **Decoder, per pixel.** A linear map (PCA loadings at initialisation) plus a
  small MLP (``1 x 1 x 1`` convolutions, last layer zero-initialised) give each
  voxel a Gaussian: a mean and an unconstrained ``raw`` value that
  :func:`.losses.sigma_from_raw` turns into a floored standard deviation.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

__all__ = ["CVAE3D", "energy_levels_for"]


def energy_levels_for(n_energy: int, target: int = 48) -> int:
    """Number of stride-2 energy levels that bring ``n_energy`` to about ``target`` channels.

    At least 1; e.g. 267 channels -> 3 levels (34 coarse), 1334 -> 5 levels (42 coarse).

    Parameters
    ----------
    n_energy : int
        Number of energy channels of the spectra.
    target : int
        Wanted number of coarse channels after the downsampling.

    Returns
    -------
    int
        ``max(1, ceil(log2(n_energy / target)))``, the ``levels`` argument of
        :class:`CVAE3D`.
    """
    return max(1, int(math.ceil(math.log2(max(n_energy, 2) / target))))


def _inv_softplus(y: float) -> float:
    return float(y + math.log(-math.expm1(-y)))


class CVAE3D(nn.Module):
    """Fully convolutional 3D VAE over ``(energy, y, x)`` sub-volumes.

    Parameters
    ----------
    n_energy : int
        Number of energy channels of the spectra it models.
    latent_dim : int
        Size ``d`` of each pixel's latent code.
    width : int
        Channels of the first (finest) energy level; coarser levels use ``2 * width``.
    levels : int
        Stride-2 energy downsamplings (``energy_levels_for(n_energy)`` is a good choice).
    spatial_layers : int
        ``3 x 3 x 3`` convolutions at the coarse level; each adds 1 pixel of
        spatial context, so ``halo == spatial_layers``.
    hidden : int
        Width of the decoder's per-pixel MLP.
    raw_init : float
        Initial value of the decoder's ``raw`` sigma output.

    Notes
    -----
    Input ``x`` of :meth:`forward`: shape ``(B, 1, n_energy, h + 2 halo, w + 2 halo)``
    (scaled, variance-stabilised spectra). Outputs cover the central ``(h, w)`` pixels.
    """

    def __init__(self, n_energy: int, latent_dim: int = 8, width: int = 16, levels: int = 3,
                 spatial_layers: int = 2, hidden: int = 64, raw_init: float = 0.0) -> None:
        super().__init__()
        self.n_energy = int(n_energy)
        self.latent_dim = int(latent_dim)
        self.width = int(width)
        self.levels = int(levels)
        self.spatial_layers = int(spatial_layers)
        self.hidden = int(hidden)
        self.padded_energy = int(math.ceil(self.n_energy / 2 ** self.levels) * 2 ** self.levels)
        self.coarse_energy = self.padded_energy // 2 ** self.levels
        d, w, c = self.latent_dim, self.width, 2 * self.width
        act = nn.SiLU

        # encoder, linear path (per pixel, dense in energy)
        self.enc_lin = nn.Conv3d(1, 2 * d, (self.n_energy, 1, 1))
        # encoder, 3D-convolutional path: energy-only strided convolutions ...
        enc: list[nn.Module] = [nn.Conv3d(1, w, (7, 1, 1), stride=(2, 1, 1), padding=(3, 0, 0)),
                                act()]
        ch = w
        for _ in range(self.levels - 1):
            enc += [nn.Conv3d(ch, c, (5, 1, 1), stride=(2, 1, 1), padding=(2, 0, 0)), act()]
            ch = c
        self.enc_energy = nn.Sequential(*enc)
        # ... spatial mixing at the coarse energy level (valid in space, same in energy) ...
        self.enc_spatial = nn.ModuleList(
            nn.Conv3d(ch, ch, (3, 3, 3), padding=(1, 0, 0)) for _ in range(self.spatial_layers))
        self.enc_act = act()
        # ... and a per-pixel head spanning the whole coarse energy axis
        self.enc_head = nn.Conv3d(ch, 2 * d, (self.coarse_energy, 1, 1))

        # decoder: linear loadings + per-pixel MLP (1x1x1 convolutions)
        self.dec_lin = nn.Conv3d(d, self.n_energy, 1)
        self.dec_mlp = nn.Sequential(nn.Conv3d(d, self.hidden, 1), act(),
                                     nn.Conv3d(self.hidden, self.hidden, 1), act(),
                                     nn.Conv3d(self.hidden, 2 * self.n_energy, 1))
        self.raw_init = float(raw_init)
        self.reset_outputs()

    @torch.no_grad()
    def reset_outputs(self) -> None:
        """Zero the non-linear paths' output layers (the model starts as its linear part)."""
        for m in (self.enc_head, self.dec_mlp[-1]):
            m.weight.zero_()
            m.bias.zero_()
        self.dec_mlp[-1].bias[self.n_energy:] = self.raw_init

    @torch.no_grad()
    def init_from_pca(self, components: np.ndarray, variances: np.ndarray,
                      noise_var: float, centre: np.ndarray | None = None) -> None:
        """Start as probabilistic PCA of the (scaled, centred) training spectra.

        Parameters
        ----------
        components : ndarray of shape (k, n_energy)
            Orthonormal principal axes, ``k <= latent_dim`` (extra dims start unused;
            with ``k == 0`` the random initialisation is kept).
        variances : ndarray of shape (k,)
            Variance of the training spectra along each axis.
        noise_var : float
            Per-channel noise variance in the same (scaled) units.
        centre : ndarray of shape (n_energy,), optional
            Mean of the spectra the axes were fitted to (default: 0, the scaler's mean).
        """
        k = int(min(len(variances), self.latent_dim))
        d = self.latent_dim
        if k == 0:  # nothing above the noise: keep the random initialisation
            return
        comp = torch.as_tensor(np.asarray(components[:k]), dtype=torch.float32)
        lam = torch.as_tensor(np.maximum(np.asarray(variances[:k], np.float64), 1e-12),
                              dtype=torch.float32)
        sig = torch.sqrt(torch.clamp(lam - noise_var, min=1e-6 * float(lam.max())))
        wl = self.enc_lin.weight  # (2d, 1, E, 1, 1)
        wl.zero_()
        self.enc_lin.bias.zero_()
        # posterior mean of PPCA ~ projection / signal std; posterior variance ~ noise / lambda
        wl[:k, 0, :, 0, 0] = comp * (sig / lam)[:, None]
        self.enc_lin.bias[d:d + k] = torch.log(torch.clamp(noise_var / lam, 1e-5, 1.0))
        self.dec_lin.weight.zero_()
        self.dec_lin.bias.zero_()
        self.dec_lin.weight[:, :k, 0, 0, 0] = (comp * sig[:, None]).T
        if centre is not None:
            c = torch.as_tensor(np.asarray(centre), dtype=torch.float32)
            self.dec_lin.bias.copy_(c)
            self.enc_lin.bias[:k] = -(wl[:k, 0, :, 0, 0] @ c)

    # ------------------------------------------------------------------ geometry
    @property
    def halo(self) -> int:
        """Pixels of spatial context needed on each side of an output region."""
        return self.spatial_layers

    @property
    def n_parameters(self) -> int:
        """Total number of elements of the module's parameters (trainable weights)."""
        return sum(p.numel() for p in self.parameters())

    def arch(self) -> dict[str, float]:
        """Constructor arguments (JSON-serialisable) that rebuild this module.

        Returns
        -------
        dict of str to float
            ``n_energy``, ``latent_dim``, ``width``, ``levels``, ``spatial_layers``,
            ``hidden`` (ints) and ``raw_init`` (float); ``CVAE3D(**arch())`` rebuilds
            the architecture (not the weights).
        """
        return {"n_energy": self.n_energy, "latent_dim": self.latent_dim, "width": self.width,
                "levels": self.levels, "spatial_layers": self.spatial_layers,
                "hidden": self.hidden, "raw_init": self.raw_init}

    # ------------------------------------------------------------------ VAE
    def _pad_energy(self, x: torch.Tensor) -> torch.Tensor:
        extra = self.padded_energy - x.shape[2]
        if extra <= 0:
            return x
        return torch.cat([x, x[:, :, -1:].expand(-1, -1, extra, -1, -1)], dim=2)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 1, E, h + 2 halo, w + 2 halo)`` -> ``mu, logvar`` each ``(B, d, h, w)``.

        The sum of the linear per-pixel path (central pixels only) and the
        3D-convolutional path (valid in space, so it consumes the ``halo``).

        Parameters
        ----------
        x : Tensor of shape (B, 1, E, h + 2 halo, w + 2 halo)
            Scaled input with ``halo`` pixels of context on each side; ``E == n_energy``.

        Returns
        -------
        mu : Tensor of shape (B, d, h, w)
            Posterior mean of each pixel's latent code.
        logvar : Tensor of shape (B, d, h, w)
            Posterior log-variance, clamped to ``[-12, 8]``.
        """
        hal = self.halo
        centre = x[:, :, :, hal:x.shape[3] - hal, hal:x.shape[4] - hal]
        lin = self.enc_lin(centre)[:, :, 0]
        h = self.enc_energy(self._pad_energy(x))
        for conv in self.enc_spatial:
            h = self.enc_act(conv(h)) + h[:, :, :, 1:-1, 1:-1]
        out = lin + self.enc_head(h)[:, :, 0]
        mu, logvar = out.chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 8.0)

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """``z = mu + exp(logvar / 2) * eps``, ``eps ~ N(0, I)`` (drawn from ``generator``).

        Parameters
        ----------
        mu : Tensor of shape (B, d, h, w)
            Posterior mean.
        logvar : Tensor of shape (B, d, h, w)
            Posterior log-variance.
        generator : torch.Generator, optional
            Source of ``eps`` (default: torch's global generator); must be on
            ``mu``'s device.

        Returns
        -------
        Tensor of shape (B, d, h, w)
            One sample ``z`` per pixel, same dtype and device as ``mu``.
        """
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + torch.exp(0.5 * logvar) * eps

    @staticmethod
    def truncate(z: torch.Tensor, prefix: int | None) -> torch.Tensor:
        """``z (B, d, h, w)`` with the dimensions ``>= prefix`` set to 0 (the prior's mean).

        This is how a Matryoshka prefix ``z[:m]`` is decoded (Kusupati et al. 2022):
        the decoder keeps its full input size and sees zeros in the dropped dimensions.
        ``None`` (or ``prefix >= d``) returns ``z`` unchanged.

        Parameters
        ----------
        z : Tensor of shape (B, d, ...)
            Latent codes.
        prefix : int or None
            Number of leading dimensions kept.

        Returns
        -------
        Tensor
            Same shape as ``z``.
        """
        if prefix is None or prefix >= z.shape[1]:
            return z
        keep = (torch.arange(z.shape[1], device=z.device) < prefix).to(z.dtype)
        return z * keep.reshape(1, -1, *([1] * (z.dim() - 2)))

    def decode(self, z: torch.Tensor, prefix: int | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, d, h, w)`` -> ``mean, raw`` each ``(B, E, h, w)`` (scaled units; raw -> sigma).

        ``prefix = m`` decodes the first ``m`` latent dimensions only (see :meth:`truncate`).

        Parameters
        ----------
        z : Tensor of shape (B, d, h, w)
            Latent codes.
        prefix : int, optional
            Decode only the first ``prefix`` dimensions (the others set to 0).

        Returns
        -------
        mean, raw : Tensor of shape (B, E, h, w)
            Predicted mean (scaled units) and the unconstrained sigma output.
        """
        z5 = self.truncate(z, prefix)[:, :, None]
        mlp = self.dec_mlp(z5)[:, :, 0]  # (B, 2E, h, w)
        mean = self.dec_lin(z5)[:, :, 0] + mlp[:, :self.n_energy]
        return mean, mlp[:, self.n_energy:]

    def forward(self, x: torch.Tensor, *, sample: bool = True,
                generator: torch.Generator | None = None, prefix: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(mean, raw, mu, logvar)``; ``sample=False`` decodes the posterior mean.

        ``prefix = m`` decodes only the first ``m`` latent dimensions (``mu, logvar``
        are returned whole).

        Parameters
        ----------
        x : Tensor of shape (B, 1, E, h + 2 halo, w + 2 halo)
            Scaled input with ``halo`` pixels of context on each side.
        sample : bool
            Decode a reparameterised sample (training) instead of the posterior mean.
        generator : torch.Generator, optional
            Source of the sample's noise.
        prefix : int, optional
            Decode only the first ``prefix`` latent dimensions.

        Returns
        -------
        mean, raw : Tensor of shape (B, E, h, w)
        mu, logvar : Tensor of shape (B, d, h, w)
        """
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar, generator) if sample else mu
        mean, raw = self.decode(z, prefix)
        return mean, raw, mu, logvar
