"""Lattice input (.npy/.npz/HDF5): round trips, recomputed actions, shape and action checks."""

import json

import h5py
import numpy as np
import pytest
import torch

from flowsci.config import validate_config
from flowsci.data.hdf5 import validate_h5
from flowsci.errors import DataError
from flowsci.stages.preprocess import preprocess
from flowsci.systems import build_target

PARAMS = {"shape": [4, 6], "m2": -4.0, "lam": 8.0}


def fields(n=10, shape=(4, 6), seed=0):
    return np.random.default_rng(seed).normal(size=(n, *shape))


def actions_of(phi):
    return build_target({"name": "phi4", "params": PARAMS}).action(torch.as_tensor(phi)).numpy()


def config(path, tmp_path, params=PARAMS, **inp):
    system = {"target": {"name": "phi4", "params": params},
              "data": {"source": "file", "input": {"path": str(path), **inp},
                       "splits": {"train": 0.5, "val": 0.3, "test": 0.2, "method": "contiguous"}}}
    return validate_config({"results_dir": str(tmp_path / "results"), "systems": {"phi4": system},
                            "runs": {"r": {"system": "phi4", "model": {"name": "lattice_conv"}}}})


def write_input(kind, path, phi, actions=None, couplings=None):
    if kind == "npy":
        np.save(path, phi)
    elif kind == "npz":
        extra = {} if actions is None else {"actions": actions}
        np.savez(path, fields=phi, **extra, **(couplings or {}))
    else:
        with h5py.File(path, "w") as f:
            f["fields"] = phi
            if actions is not None:
                f["actions"] = actions
            for k, v in (couplings or {}).items():
                f.attrs[k] = v


@pytest.mark.parametrize("kind,ext", [("npy", "npy"), ("npz", "npz"), ("h5", "h5")])
def test_round_trip(tmp_path, kind, ext):
    phi = fields()
    path = tmp_path / f"cfgs.{ext}"
    write_input(kind, path, phi, None if kind == "npy" else actions_of(phi),
                None if kind == "npy" else {"m2": -4.0, "lam": 8.0})
    out = preprocess(config(path, tmp_path), "phi4", progress=False)
    attrs = validate_h5(out)
    assert attrs["kind"] == "lattice" and attrs["target.m2"] == -4.0
    src = json.loads(attrs["source"])
    assert src["stored_actions"] == (kind != "npy") and len(src["sha256"]) == 64
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f["fields"][()], phi)
        np.testing.assert_allclose(f["actions"][()], actions_of(phi), rtol=1e-12)
        assert list(f["splits/train"][()]) == list(range(5))
        assert list(f["splits/test"][()]) == [8, 9]


def test_stride_and_float32_input(tmp_path):
    phi = fields(20).astype(np.float32)
    path = tmp_path / "c.npz"
    write_input("npz", path, phi, actions_of(phi.astype(np.float64)).astype(np.float32))
    out = preprocess(config(path, tmp_path, start=1, stride=3), "phi4", progress=False)
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f["fields"][()], phi[1::3].astype(np.float64))


def expect(tmp_path, path, *patterns, params=PARAMS):
    out = tmp_path / "out.h5"
    out.write_bytes(b"previous")
    with pytest.raises(DataError) as err:
        preprocess(config(path, tmp_path, params=params), "phi4", out=str(out), force=True,
                   progress=False)
    for p in patterns:
        assert p in str(err.value), str(err.value)
    assert out.read_bytes() == b"previous"


def test_shape_mismatch(tmp_path):
    path = tmp_path / "c.npy"
    np.save(path, fields(shape=(6, 4)))
    expect(tmp_path, path, str(path), "(10, 6, 4)", "lattice shape mismatch")


def test_stored_action_disagrees(tmp_path):
    phi = fields()
    s = actions_of(phi)
    s[7] += 0.5
    path = tmp_path / "c.h5"
    write_input("h5", path, phi, s)
    expect(tmp_path, path, str(path), "frame 7", "disagrees")


def test_coupling_mismatch(tmp_path):
    phi = fields()
    path = tmp_path / "c.npz"
    write_input("npz", path, phi, actions_of(phi), {"m2": -3.0, "lam": 8.0})
    expect(tmp_path, path, str(path), "m2", "-3.0")


def test_nan_field(tmp_path):
    phi = fields()
    phi[4, 1, 2] = np.nan
    path = tmp_path / "c.npy"
    np.save(path, phi)
    expect(tmp_path, path, str(path), "frame 4", "NaN/Inf")


def test_bad_files(tmp_path):
    path = tmp_path / "c.npz"
    path.write_bytes(b"not a zip")
    expect(tmp_path, path, str(path), "cannot read")
    path = tmp_path / "c.txt"
    path.write_text("1 2 3")
    expect(tmp_path, path, str(path), ".npy, .npz or .h5")
    path = tmp_path / "empty.npy"
    np.save(path, np.zeros((0, 4, 6)))
    expect(tmp_path, path, str(path), "no field configurations")
