"""Particle types seen by the vector fields: interchangeable particles share a type, the atoms
of a molecule (no permutation symmetry) each get their own, so a field is not forced to be
symmetric under relabelling same-element atoms that the energy tells apart."""

from dataclasses import dataclass

import pytest
import torch

from flowsci.models import build_field
from flowsci.systems import build_target
from flowsci.systems.base import ParticleTarget, Symmetry

D64 = torch.float64


@dataclass
class Molecule(ParticleTarget):
    """O, C and three H, all distinguishable (bonded), like an OpenMM target."""

    n_particles: int = 5

    @property
    def atomic_numbers(self) -> list[int]:
        return [8, 6, 1, 1, 1]

    @property
    def symmetry(self) -> Symmetry:
        return Symmetry(rotations="SO", translations=True, permutations=())


@dataclass
class Mixture(ParticleTarget):
    """Two species, each interchangeable within itself (as the ASE calculator target)."""

    n_particles: int = 4

    @property
    def atomic_numbers(self) -> list[int]:
        return [18, 10, 18, 10]

    @property
    def symmetry(self) -> Symmetry:
        return Symmetry(rotations="O", translations=True, permutations=((0, 2), (1, 3)))


def test_interchangeable_particles_share_a_type_and_bonded_atoms_do_not():
    assert build_target({"name": "lj13"}).particle_types == [0] * 13
    assert Molecule().particle_types == [4, 3, 0, 1, 2]  # H, H, H < C < O, each its own
    assert Mixture().particle_types == [1, 0, 1, 0]  # = unique(atomic numbers), as before


FIELDS = [("egnn", {"hidden": 8, "n_layers": 2}),
          ("pair_kernel", {"hidden": 8, "n_rbf": 6, "r_max": 3.0}),
          ("e3nn", {"irreps_hidden": "4x0e + 2x1o", "n_layers": 1})]


def _field(name, params, target):
    return build_field({"name": name, "params": params}, target).double()


@pytest.mark.parametrize("name, params", FIELDS)
def test_fields_tell_same_element_atoms_of_a_molecule_apart(name, params):
    torch.manual_seed(0)
    t = torch.tensor(0.4, dtype=D64)
    f = _field(name, params, Molecule())
    for p in f.parameters():  # make every type's parameters differ
        p.data += 0.3 * torch.randn_like(p)
    x = torch.randn(3, 5, 3, dtype=D64)
    swap = torch.tensor([0, 1, 3, 2, 4])  # exchange two hydrogens
    diff = (f(t, x[:, swap]) - f(t, x)[:, swap]).abs().max()
    assert diff > 1e-3, f"{name} treats the two hydrogens as one species"


@pytest.mark.parametrize("name, params", FIELDS)
def test_fields_stay_permutation_equivariant_for_identical_particles(name, params):
    torch.manual_seed(1)
    t = torch.tensor(0.4, dtype=D64)
    f = _field(name, params, build_target({"name": "lj13"}))
    x = torch.randn(3, 13, 3, dtype=D64)
    perm = torch.randperm(13)
    torch.testing.assert_close(f(t, x[:, perm]), f(t, x)[:, perm])
