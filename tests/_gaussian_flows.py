"""A linear CNF on a Gaussian target with closed-form KLs, shared by the path-gradient tests."""

import torch
from torch import nn

from flowsci.flows.cnf import CNF, SolverConfig
from flowsci.flows.priors import StandardGaussian
from flowsci.models.base import VectorField

D64 = torch.float64
TIGHT = SolverConfig(method="dopri5", rtol=1e-10, atol=1e-10, adjoint=False)


class Scale(VectorField):
    """f(t, x) = a x: T(z) = e^a z, q = N(0, e^{2a} I)."""

    def __init__(self, a: float):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a, dtype=D64))

    def forward(self, t, x):
        return self.a * x


class Gaussian:
    """u(x) = |x|^2 / (2 s^2) in D dimensions."""

    def __init__(self, s: float, dim: int):
        self.s, self.event_dim, self.event_shape = s, dim, (dim,)

    def energy(self, x):
        return (x * x).sum(-1) / (2 * self.s**2)


def linear_flow(a: float, dim: int, solver: SolverConfig = TIGHT) -> CNF:
    """The CNF of Scale(a) from a standard Gaussian in `dim` dimensions (float64)."""
    return CNF(Scale(a), StandardGaussian((dim,)).to(D64), solver, solver)
