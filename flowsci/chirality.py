"""Chirality of flow samples of chiral molecules (alanine dipeptide and other peptides).

An O(3)-equivariant field with a reflection-invariant prior gives a density with
q(-x) = q(x): both mirror images of the molecule, while the target (one enantiomer, e.g.
L-alanine) lives on one of them. As Klein, Kraemer & Noe 2023 do, samples whose chirality
centre has the wrong handedness are mirrored (x -> -x). The map "mirror if wrong-handed" is
a two-to-one map onto the right-handed half, so the density of its output is
q'(x) = q(x) + q(-x) = 2 q(x) there: log q' = log q + log 2, exactly, for every sample.
This holds only if q is reflection symmetric, which `check_reflection_symmetric` verifies on
samples before the correction is applied.

Handedness: the sign of the signed volume (a - c) . ((b - c) x (d - c)) for centre c and
three of its neighbours a, b, d (for alanine's C-alpha: N, C, C-beta).
"""

from __future__ import annotations

import math

import torch

from .errors import ConfigError


def handedness(x: torch.Tensor, atoms: tuple[int, int, int, int]) -> torch.Tensor:
    """Sign (+1 / -1, 0 for planar) of the signed volume at `atoms` = (centre, a, b, d).
    x: [B, n, 3] -> [B]."""
    if x.shape[-1] != 3:
        raise ConfigError(f"chirality needs 3D coordinates, got dimension {x.shape[-1]}")
    c, a, b, d = (x[:, i] for i in atoms)
    volume = ((a - c) * torch.linalg.cross(b - c, d - c)).sum(-1)
    return torch.sign(volume)


def reference_handedness(x: torch.Tensor, atoms: tuple[int, int, int, int]) -> int:
    """The handedness of the majority of reference configurations x [N, n, 3] (+1 or -1);
    refuses data in which both appear in comparable amounts (no single enantiomer)."""
    s = handedness(x, atoms)
    plus, minus = int((s > 0).sum()), int((s < 0).sum())
    if min(plus, minus) > 0.05 * (plus + minus):
        raise ConfigError(f"chirality atoms {list(atoms)}: the reference data hold both "
                          f"handednesses ({plus} vs {minus} configurations); not a chiral "
                          "centre of one enantiomer")
    return 1 if plus >= minus else -1


def mirror_wrong_handed(x: torch.Tensor, log_q: torch.Tensor,
                        atoms: tuple[int, int, int, int], sign: int
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mirror samples of the wrong handedness; log q + log 2 for all (module docstring).
    x: [B, n, 3], log_q: [B] -> (x', log_q' [B], mirrored [B] bool)."""
    mirrored = handedness(x, atoms) == -sign
    x = torch.where(mirrored[:, None, None], -x, x)
    return x, log_q + math.log(2.0), mirrored


def mirrored_log_prob(x: torch.Tensor, log_q: torch.Tensor, atoms: tuple[int, int, int, int],
                      sign: int) -> torch.Tensor:
    """log q'(x) of the mirrored samples' density from the flow's log q(x): log q + log 2 on
    the right-handed half (and planar points), -inf on the wrong-handed one. x: [B, n, 3],
    log_q: [B] -> [B]."""
    wrong = handedness(x, atoms) == -sign
    return torch.where(wrong, torch.full_like(log_q, -math.inf), log_q + math.log(2.0))


def check_reflection_symmetric(flow, x: torch.Tensor, log_q: torch.Tensor,
                               tol: float = 1e-2) -> float:
    """max |log q(-x) - log q(x)| over the samples x [B, n, 3] with their log q [B]; raises
    ConfigError above `tol` nats (the log 2 correction would then be wrong)."""
    with torch.no_grad():
        err = float((flow.log_prob(-x) - log_q).abs().max())
    if not err <= tol:
        raise ConfigError(f"sampling.chirality: the flow's density is not reflection "
                          f"symmetric (log q(-x) differs from log q(x) by up to {err:.3g} nats);"
                          " mirroring is only exact for O(3)-equivariant fields")
    return err
