"""Chirality of flow samples: handedness, the mirror map with its exact log 2, and the sample
stage mirroring wrong-handed samples of a reflection-symmetric flow."""

import math

import h5py
import numpy as np
import pytest
import torch

from flowsci.chirality import (check_reflection_symmetric, handedness, mirror_wrong_handed,
                               reference_handedness)
from flowsci.config import validate_config
from flowsci.errors import ConfigError

ATOMS = (0, 1, 2, 3)
RIGHT = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]]])  # volume +1


def test_handedness_of_a_tetrahedron_and_its_mirror_image():
    assert handedness(RIGHT, ATOMS).tolist() == [1.0]
    assert handedness(-RIGHT, ATOMS).tolist() == [-1.0]
    swapped = RIGHT[:, [0, 2, 1, 3]]  # exchanging two neighbours flips it too
    assert handedness(swapped, ATOMS).tolist() == [-1.0]
    rot = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))[0]
    rot = rot * torch.sign(torch.det(rot))  # proper rotation: handedness kept
    assert handedness(RIGHT.double() @ rot.T + 3.0, ATOMS).tolist() == [1.0]


def test_reference_handedness_is_the_majority_and_refuses_racemic_data():
    x = RIGHT.repeat(100, 1, 1) + 0.05 * torch.randn(100, 4, 3)
    x[:3] = -x[:3]
    assert reference_handedness(x, ATOMS) == 1
    assert reference_handedness(-x, ATOMS) == -1
    x[:50] = -x[:50].abs() * 0 - x[:50]
    with pytest.raises(ConfigError, match="both handednesses"):
        reference_handedness(x, ATOMS)


def test_mirroring_a_symmetric_density_gives_one_handedness_and_log2():
    torch.manual_seed(0)
    x = torch.randn(20000, 4, 3, dtype=torch.float64)
    log_q = torch.randn(20000, dtype=torch.float64)
    y, log_q2, mirrored = mirror_wrong_handed(x, log_q, ATOMS, sign=1)
    assert (handedness(y, ATOMS) == 1).all()
    assert float(mirrored.double().mean()) == pytest.approx(0.5, abs=0.015)  # binomial 3 sd
    torch.testing.assert_close(log_q2, log_q + math.log(2))
    torch.testing.assert_close(y[~mirrored], x[~mirrored])
    torch.testing.assert_close(y[mirrored], -x[mirrored])


class _Gaussian:
    """A reflection-symmetric 'flow' (log q of an isotropic Gaussian) and a skewed one."""

    def __init__(self, shift: float = 0.0):
        self.shift = shift

    def log_prob(self, x):
        return -0.5 * ((x - self.shift) ** 2).flatten(1).sum(-1)


def test_reflection_symmetry_is_checked_before_mirroring():
    x = torch.randn(4, 4, 3, dtype=torch.float64)
    assert check_reflection_symmetric(_Gaussian(), x, _Gaussian().log_prob(x)) < 1e-12
    with pytest.raises(ConfigError, match="not reflection symmetric"):
        check_reflection_symmetric(_Gaussian(0.5), x, _Gaussian(0.5).log_prob(x))


def test_sample_stage_mirrors_wrong_handed_samples(tmp_path):
    """Same seed with and without sampling.chirality: the samples differ exactly by the
    mirror map, log q by log 2, and the count is recorded through gather to metrics."""
    from flowsci import paths
    from flowsci.stages.preprocess import preprocess
    from flowsci.stages.reweight import reweight
    from flowsci.stages.sample import gather, sample
    from flowsci.stages.train import train

    run = {"system": "lj4", "model": {"name": "egnn", "params": {"hidden": 8, "n_layers": 1}},
           "flow": {"method": "dopri5", "rtol": 1e-6, "atol": 1e-6},
           "training": {"objective": {"name": "flow_matching"}, "steps": 2, "batch_size": 8,
                        "val_every": 2, "val_samples": 4, "checkpoint_every": 2},
           "sampling": {"n_samples": 16, "batch_size": 16, "check_samples": 2},
           "reweighting": {"n_bootstrap": 10}}
    cfg = validate_config({"results_dir": str(tmp_path), "device": "cpu", "systems": {"lj4": {
        "target": {"name": "lj", "params": {"n_particles": 4, "dim": 3}},
        "data": {"source": "generate", "generator": {"name": "mcmc", "params": {
            "n_samples": 64, "n_chains": 8, "burn_in": 300, "thin": 2, "step_size": 0.05,
            "drop_stuck_chains": True}}}}}, "runs": {"r": run}})
    data = preprocess(cfg, "lj4", progress=False)
    with h5py.File(data, "a") as f:  # make the reference one enantiomer (energy is invariant)
        pos = f["positions"][()]
        wrong = handedness(torch.as_tensor(pos), ATOMS).numpy() < 0
        f["positions"][wrong] = -pos[wrong]
    train(cfg, "r", progress=False)
    shard = sample(cfg, "r", progress=False)
    with h5py.File(shard) as f:
        x0, lq0, u0 = f["x"][()], f["log_q"][()], f["energies"][()]
    chiral = validate_config({**cfg, "runs": {"r": {**run, "sampling": {
        **run["sampling"], "chirality": {"atoms": list(ATOMS)}}}}})
    shard = sample(chiral, "r", progress=False)
    with h5py.File(shard) as f:
        x1, lq1, u1, n = f["x"][()], f["log_q"][()], f["energies"][()], f.attrs["n_mirrored"]
        assert f.attrs["log_q_error"] < 0.01  # checked on the flow's own samples, before log 2
    flip = handedness(torch.as_tensor(x0), ATOMS).numpy() < 0
    assert n == flip.sum() and 0 < n < 16
    np.testing.assert_allclose(x1, np.where(flip[:, None, None], -x0, x0))
    np.testing.assert_allclose(lq1, lq0 + math.log(2), rtol=0, atol=1e-6)
    np.testing.assert_allclose(u1, u0, rtol=1e-5)  # LJ energy is reflection invariant
    gather(chiral, "r")
    reweight(chiral, "r")
    metrics = paths.metrics_file(chiral, "r").read_text()
    assert f'"mirrored_fraction": {n / 16}' in metrics
