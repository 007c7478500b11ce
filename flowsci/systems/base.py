"""The Target contract: a reduced energy u(x) = beta * U(x) on a batch of configurations."""

from __future__ import annotations

import abc

from dataclasses import dataclass, field
from typing import Literal

import torch

from ..registry import Registry


@dataclass(frozen=True)
class Symmetry:
    """What the physics is invariant under; vector fields and tests read this.

    rotations: 'O' (rotations + reflections), 'SO' (rotations only) or None.
    translations: continuous translations of all particles (particles) or lattice shifts.
    permutations: groups of interchangeable particle indices.
    z2: global field flip phi -> -phi (lattices).
    """

    rotations: Literal["O", "SO"] | None = None
    translations: bool = False
    permutations: tuple[tuple[int, ...], ...] = ()
    z2: bool = False


@dataclass
class Target(abc.ABC):
    """Base class of all targets. Subclasses implement `energy`.

    kind: 'particles' (event_shape = (n_particles, dim)) or 'lattice' (event_shape = shape).
    """

    name: str = field(init=False, default="target")
    kind: Literal["particles", "lattice"] = field(init=False, default="particles")

    @property
    @abc.abstractmethod
    def event_shape(self) -> tuple[int, ...]: ...

    @property
    def symmetry(self) -> Symmetry:
        return Symmetry()

    @property
    def event_dim(self) -> int:
        n = 1
        for s in self.event_shape:
            n *= s
        return n

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """Reduced energy u(x) in units of kT. x: [B, *event_shape] -> [B].

        The base classes only describe a geometry (enough to build and test a vector field);
        registered targets override this.
        """
        raise TypeError(f"{type(self).__name__} describes a geometry only and has no energy")

    def attrs(self) -> dict:
        """Parameters recorded in HDF5 attrs for provenance."""
        return {}


@dataclass
class ParticleTarget(Target):
    """Identical particles in `dim` dimensions; energy invariant under E(dim) and permutations."""

    n_particles: int = 2
    dim: int = 3

    def __post_init__(self) -> None:
        self.kind = "particles"

    @property
    def event_shape(self) -> tuple[int, ...]:
        return (self.n_particles, self.dim)

    @property
    def symmetry(self) -> Symmetry:
        return Symmetry(
            rotations="O", translations=True, permutations=(tuple(range(self.n_particles)),)
        )

    @property
    def atomic_numbers(self) -> list[int]:
        """Particle types; 0 means a generic (pseudo-)particle."""
        return [0] * self.n_particles

    @property
    def particle_types(self) -> list[int]:
        """Type index per particle [n] for the vector fields, 0..T-1.

        Particles share a type only when they are interchangeable: same permutation group
        (`symmetry.permutations`) and atomic number. A particle in no group (every atom of a
        molecule, told apart by its bonds) gets a type of its own, so the field is not forced
        to treat, e.g., the 12 hydrogens of alanine dipeptide as one species (a density
        symmetric under their 12! relabellings). Ordered by atomic number first, as before.
        """
        z = self.atomic_numbers
        group = {i: g for g, members in enumerate(self.symmetry.permutations) for i in members}
        n_groups = len(self.symmetry.permutations)
        keys = [(z[i], group.get(i, n_groups + i)) for i in range(self.n_particles)]
        index = {k: t for t, k in enumerate(sorted(set(keys)))}
        return [index[k] for k in keys]


@dataclass
class LatticeTarget(Target):
    """A scalar field on a periodic lattice; event_shape = shape (e.g. (L, L))."""

    shape: tuple[int, ...] = (8, 8)

    def __post_init__(self) -> None:
        self.kind = "lattice"
        self.shape = tuple(int(s) for s in self.shape)

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.shape

    @property
    def symmetry(self) -> Symmetry:
        return Symmetry(translations=True, z2=False)


TARGETS: Registry[Target] = Registry("target")


def pair_distances(x: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Distances of all unordered pairs. x: [B, n, d] -> [B, n(n-1)/2]."""
    n = x.shape[-2]
    i, j = torch.triu_indices(n, n, offset=1, device=x.device)
    diff = x[..., i, :] - x[..., j, :]
    return torch.sqrt((diff * diff).sum(-1) + eps)


def build_target(spec: dict, config_key: str | None = None) -> Target:
    """Build a target from its config entry {'name': ..., 'params': {...}}; `config_key`
    (e.g. 'systems.dw4.target') is named in errors."""
    return TARGETS.build(spec["name"], spec.get("params", {}), config_key=config_key)
