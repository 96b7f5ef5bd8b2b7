"""Per-group singular values: sigma_g of R_g (rows = channels), padded with zeros to length C."""
from __future__ import annotations

import torch

from ..engine import gram   # K = R R^T in float64: what both the spectrum and GEM need

__all__ = ["gram", "singular_values", "normalized"]


def singular_values(R: torch.Tensor, K: torch.Tensor | None = None) -> torch.Tensor:
    """Singular values of R, descending, padded with zeros to R.shape[0] (float64).

    Uses the smaller of the two Gram matrices (C x C or D x D) and ``eigvalsh``.
    """
    C, D = R.shape
    Rd = R.detach().double()
    if K is not None or C <= D:
        ev = torch.linalg.eigvalsh(gram(Rd) if K is None else K)
    else:
        ev = torch.linalg.eigvalsh(Rd.T @ Rd)
    s = ev.clamp_min(0).sqrt().flip(0)
    out = torch.zeros(C, dtype=torch.float64, device=s.device)
    out[: min(C, s.numel())] = s[:C]
    return out


def normalized(sigma: torch.Tensor, normalize: str = "max") -> torch.Tensor:
    """``max``: sigma / sigma_1 (default); ``sum``: sigma / sum(sigma). All-zero stays zero."""
    total = sigma[0] if normalize == "max" else sigma.sum()
    return sigma / total if float(total) > 0 else torch.zeros_like(sigma)
