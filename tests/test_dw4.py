import math

import pytest
import torch

from flowsci.errors import ConfigError
from flowsci.systems import TARGETS, build_target


def test_dw4_energy_hand_computed():
    t = build_target({"name": "dw4"})
    # Unit square of side 4: four sides at d = 4 (r = 0, energy 0) and two diagonals at
    # d = 4*sqrt(2): r = 4(sqrt2 - 1), pair energy b r^2 + c r^4.
    x = torch.tensor([[[0.0, 0.0], [4.0, 0.0], [4.0, 4.0], [0.0, 4.0]]], dtype=torch.float64)
    r = 4 * (math.sqrt(2) - 1)
    expected = 2 * (-4 * r**2 + 0.9 * r**4)
    assert t.energy(x).item() == pytest.approx(expected, abs=1e-12)
    # All particles at one point: six pairs at r = -4: b*16 + c*256 each.
    x0 = torch.zeros(1, 4, 2, dtype=torch.float64)
    assert t.energy(x0).item() == pytest.approx(6 * (-4 * 16 + 0.9 * 256), abs=1e-10)


def test_dw4_params_and_invariances():
    t = build_target({"name": "dw4", "params": {"a": 0.5, "tau": 2.0}})
    x = torch.randn(16, 4, 2, dtype=torch.float64)
    theta = 0.7
    R = torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]],
                     dtype=torch.float64)
    y = (x @ R.T)[:, torch.randperm(4)] + torch.tensor([1.0, -3.0], dtype=torch.float64)
    torch.testing.assert_close(t.energy(x), t.energy(y))
    d = torch.linalg.norm(x[:, 0] - x[:, 1], dim=-1)
    assert t.energy(x).shape == (16,)
    # a term: energy is linear in a with slope sum(r)/tau
    t0 = build_target({"name": "dw4", "params": {"a": 0.0, "tau": 2.0}})
    iu = torch.triu_indices(4, 4, 1)
    dist = torch.linalg.norm(x[:, iu[0]] - x[:, iu[1]], dim=-1)
    torch.testing.assert_close(t.energy(x) - t0.energy(x), 0.5 * (dist - 4).sum(-1) / 2.0)
    assert d.shape == (16,)


def test_unknown_target_and_param_are_clear():
    assert "dw4" in TARGETS.names()
    with pytest.raises(ConfigError, match="unknown target 'nope'"):
        build_target({"name": "nope"})
    with pytest.raises(ConfigError, match="unknown parameter"):
        build_target({"name": "dw4", "params": {"bb": 1}})



@pytest.mark.parametrize("params", [{"a": 0.9, "b": -4.0, "c": 0.0},  # bgflow's DW4 numbers
                                    {"c": -0.9}, {"a": -1.0, "b": 0.0, "c": 0.0},
                                    {"a": 0.0, "b": 0.0, "c": 0.0}])
def test_energy_unbounded_below_is_refused_naming_the_convention(params):
    with pytest.raises(ConfigError, match="unbounded below or flat.*a linear, b quadratic, "
                                          "c quartic.*bgflow"):
        build_target({"name": "dw4", "params": params})


def test_double_well_minima_of_the_pair_energy():
    t = build_target({"name": "dw4"})
    d = torch.linspace(0.5, 8.0, 150001, dtype=torch.float64)
    u = t.pair_energy(d)
    left, right = d[d < 4][u[d < 4].argmin()], d[d > 4][u[d > 4].argmin()]
    half_width = (4.0 / 1.8) ** 0.5  # d0 ± sqrt(-b / 2c)
    assert float(left) == pytest.approx(4.0 - half_width, abs=1e-4)
    assert float(right) == pytest.approx(4.0 + half_width, abs=1e-4)
