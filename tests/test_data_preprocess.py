"""preprocess with generators: schema, provenance, checkpoint/resume, example configs."""

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from flowsci.config import load_config, validate_config
from flowsci.data.hdf5 import ROOT_ATTRS, validate_h5
from flowsci.errors import ConfigError
from flowsci.stages import preprocess as pp
from flowsci.systems import build_target

ROOT = Path(__file__).resolve().parents[1]


def gen_config(tmp_path, target, generator, params, temperature=1.0):
    system = {"target": target, "temperature": temperature,
              "data": {"source": "generate", "generator": {"name": generator, "params": params}}}
    return validate_config({"results_dir": str(tmp_path / "results"), "systems": {"s": system},
                            "runs": {"r": {"system": "s", "model": {"name": "egnn"}}}})


def test_phi4_hmc_dataset(tmp_path):
    cfg = gen_config(tmp_path, {"name": "phi4", "params": {"shape": [4, 4]}}, "hmc",
                     {"n_samples": 64, "n_chains": 8, "burn_in": 10, "thin": 2,
                      "n_leapfrog": 5, "step_size": 0.05})
    out = pp.preprocess(cfg, "s", progress=False)
    assert out == tmp_path / "results" / "s" / "data.h5"
    attrs = validate_h5(out)
    assert set(ROOT_ATTRS) <= set(attrs) and attrs["kind"] == "lattice"
    src = json.loads(attrs["source"])
    assert src["generator"] == "hmc" and 0 < src["acceptance_rate"] <= 1
    assert "magnetization_autocorr_time_thinned" in src
    assert json.loads(attrs["target.shape"]) == [4, 4] and attrs["target.lam"] == 8.0
    with h5py.File(out) as f:
        assert f["fields"].shape == (64, 4, 4) and f["actions"].shape == (64,)
        n = sum(len(f[f"splits/{k}"]) for k in ("train", "val", "test"))
        assert n == 64
    assert not list(out.parent.glob(".*checkpoint*"))


def test_generated_particles_are_centred_and_resume_after_crash(tmp_path, monkeypatch):
    params = {"n_samples": 60, "n_chains": 6, "burn_in": 30, "thin": 2, "step_size": 0.3,
              "checkpoint_every": 10}
    cfg = gen_config(tmp_path, {"name": "dw4"}, "mcmc", params)
    ref = pp.preprocess(cfg, "s", out=str(tmp_path / "ref.h5"), progress=False)
    with h5py.File(ref) as f:
        x_ref = f["positions"][()]
    assert np.allclose(x_ref.mean(1), 0, atol=1e-12)
    # crash mid-run: the output does not exist, the checkpoint does; a rerun resumes from it
    import flowsci.data.generate.base as base
    orig = base.Checkpoint.save

    def save_then_crash(self, state):
        orig(self, state)
        if state["step"] >= 40:
            raise KeyboardInterrupt

    monkeypatch.setattr(base.Checkpoint, "save", save_then_crash)
    out = tmp_path / "run.h5"
    with pytest.raises(KeyboardInterrupt):
        pp.preprocess(cfg, "s", out=str(out), progress=False)
    assert not out.exists()
    ckpt = pp._checkpoint_path(out)
    assert ckpt.exists()
    monkeypatch.setattr(base.Checkpoint, "save", orig)
    pp.preprocess(cfg, "s", out=str(out), progress=False)
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f["positions"][()], x_ref)
    assert not ckpt.exists()


def test_temperature_mismatch_is_a_config_error(tmp_path):
    xyz = tmp_path / "cu.xyz"
    xyz.write_text("1\n\nCu 0 0 0\n")
    cfg = gen_config(tmp_path, {"name": "ase", "params": {"structure": str(xyz),
                                                          "temperature": 300.0}},
                     "ase_langevin", {"n_samples": 2}, temperature=1.0)
    with pytest.raises(ConfigError, match="temperature"):
        pp.preprocess(cfg, "s", progress=False)


@pytest.mark.parametrize("name", ["lj13", "phi4", "ala2", "user_extxyz"])
def test_example_configs_are_valid(name):
    cfg = load_config(ROOT / "config" / "examples" / f"{name}.yaml")
    for sys_name, spec in cfg["systems"].items():
        if spec["target"]["name"] in ("ala2", "openmm"):
            pytest.importorskip("openmm")
        if spec["target"]["name"] == "ase":  # paths in the example are relative to the repo
            p = spec["target"]["params"]
            p["structure"] = str(ROOT / p["structure"])
        target = build_target(spec["target"])
        assert target.kind in ("particles", "lattice")
        if spec["data"]["source"] == "generate":
            from flowsci.data.generate import GENERATORS
            GENERATORS.get(spec["data"]["generator"]["name"])


def test_user_extxyz_example_preprocesses(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = load_config("config/examples/user_extxyz.yaml")
    out = pp.preprocess(cfg, "cu13", out=str(tmp_path / "cu13.h5"), progress=False)
    with h5py.File(out) as f:
        assert f["positions"].shape == (40, 13, 3)
        assert list(f["atomic_numbers"][()]) == [29] * 13
        # stored energies equal the target's reduced energy of the stored positions
        t = build_target(cfg["systems"]["cu13"]["target"])
        import torch
        u = t.energy(torch.as_tensor(f["positions"][:5])).numpy()
        np.testing.assert_allclose(f["energies"][:5], u, rtol=1e-6)
