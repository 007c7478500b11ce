"""Property-based tests (hypothesis) of the HDF5 validator, the splits and the input readers:
whatever the input, the answer is either a valid data file or a DataError naming the file;
never another exception, never a file that validates but holds what it should not."""

from __future__ import annotations

import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowsci.config import validate_config
from flowsci.data.hdf5 import make_splits, provenance, validate_h5, write_h5
from flowsci.errors import DataError
from flowsci.stages.preprocess import preprocess

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
BAD_VALUES = st.sampled_from([np.nan, np.inf, -np.inf])


def _particles(tmp: Path, x: np.ndarray, splits: dict | None = None) -> Path:
    path = tmp / "d.h5"
    attrs = provenance("particles", "s", units="reduced", temperature=1.0, source={}, config={})
    write_h5(path, {"positions": x, "atomic_numbers": np.ones(x.shape[1], int)}, attrs,
             groups={"splits": splits} if splits is not None else None)
    return path


@SETTINGS
@given(n=st.integers(1, 12), atoms=st.integers(1, 4), dim=st.integers(2, 3),
       bad=st.none() | st.tuples(st.integers(0, 11), st.integers(0, 3), st.integers(0, 2),
                                 BAD_VALUES))
def test_validator_reports_the_first_nonfinite_frame(n, atoms, dim, bad):
    x = np.random.default_rng(n).normal(size=(n, atoms, dim))
    if bad is not None:
        frame, atom, coord, value = bad[0] % n, bad[1] % atoms, bad[2] % dim, bad[3]
        x[frame, atom, coord] = value
    with tempfile.TemporaryDirectory() as tmp:
        path = _particles(Path(tmp), x)
        if bad is None:
            assert validate_h5(path)["kind"] == "particles"
        else:
            with pytest.raises(DataError, match=f"{path}.*first at frame {frame}"):
                validate_h5(path)


@SETTINGS
@given(n=st.integers(1, 15), labels=st.lists(st.sampled_from(["train", "val", "test", "none",
                                                                "both", "outside"]),
                                              min_size=15, max_size=15))
def test_validator_accepts_exactly_the_disjoint_covering_splits(n, labels):
    """Each frame goes to one split, to none, to two (overlap), or a split points outside."""
    labels = labels[:n]
    splits = {k: [i for i, lab in enumerate(labels) if lab == k] for k in ("train", "val", "test")}
    splits["train"] += [i for i, lab in enumerate(labels) if lab == "both"]
    splits["val"] += [i for i, lab in enumerate(labels) if lab == "both"]
    splits["test"] += [n + i for i, lab in enumerate(labels) if lab == "outside"]
    valid = all(lab in ("train", "val", "test") for lab in labels)
    with tempfile.TemporaryDirectory() as tmp:
        path = _particles(Path(tmp), np.zeros((n, 2, 3)),
                          {k: np.array(v, dtype=np.int64) for k, v in splits.items()})
        if valid:
            validate_h5(path)
        else:
            with pytest.raises(DataError, match=f"{path}: splits"):
                validate_h5(path)


@SETTINGS
@given(n=st.integers(1, 500), fr=st.tuples(st.floats(0.01, 1), st.floats(0, 1), st.floats(0, 1)),
       method=st.sampled_from(["random", "contiguous"]), seed=st.integers(0, 2**31))
def test_make_splits_partitions_every_frame(n, fr, method, seed):
    s = make_splits(n, dict(zip(("train", "val", "test"), fr)), method, seed)
    allidx = np.concatenate([s["train"], s["val"], s["test"]])
    assert sorted(allidx.tolist()) == list(range(n)) and len(s["train"]) >= 1


def _mol_config(path: Path, tmp: Path) -> dict:
    system = {"target": {"name": "lj", "params": {"n_particles": 3, "dim": 3}},
              "data": {"source": "file", "input": {
                  "path": str(path), "units": {"length": "reduced", "energy": "reduced"}}}}
    return validate_config({"results_dir": str(tmp / "results"), "systems": {"s": system},
                            "runs": {"r": {"system": "s", "model": {"name": "egnn"}}}})


GOOD_XYZ = "".join(
    "3\nProperties=species:S:1:pos:R:3 pbc=\"F F F\"\n"
    f"Ar 0.0 0.0 {0.1 * k}\nAr 1.1 0.0 0.0\nAr 0.0 1.1 0.0\n" for k in range(4))


@SETTINGS
@given(cut=st.integers(0, len(GOOD_XYZ)), length=st.integers(0, 20),
       insert=st.text(alphabet="Ar0123456789.-enaNXx \n\"=:", max_size=20))
def test_extxyz_reader_gives_a_valid_file_or_a_data_error(cut, length, insert):
    """Random damage to a valid extxyz file (a cut span replaced by random characters)."""
    text = GOOD_XYZ[:cut] + insert + GOOD_XYZ[cut + length:]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = tmp / "in.extxyz"
        src.write_text(text)
        out = tmp / "out.h5"
        try:
            preprocess(_mol_config(src, tmp), "s", out=str(out), force=True, progress=False)
        except DataError as e:
            assert str(src) in str(e) or str(out) in str(e), str(e)
            assert not out.exists()
            return
        attrs = validate_h5(out)  # accepted: then it is a valid, finite data file
        with h5py.File(out) as f:
            assert f["positions"].shape[1:] == (3, 3) and attrs["kind"] == "particles"


def _lat_config(path: Path, tmp: Path) -> dict:
    system = {"target": {"name": "phi4", "params": {"shape": [4, 4], "m2": -4.0, "lam": 5.0}},
              "data": {"source": "file", "input": {"path": str(path)}}}
    return validate_config({"results_dir": str(tmp / "results"), "systems": {"s": system},
                            "runs": {"r": {"system": "s", "model": {"name": "lattice_conv"}}}})


@SETTINGS
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=4),
       bad=st.none() | st.tuples(st.integers(0, 10**6), BAD_VALUES),
       dtype=st.sampled_from(["float32", "float64", "int16"]))
def test_lattice_reader_accepts_exactly_finite_fields_of_the_target_shape(shape, bad, dtype):
    phi = np.random.default_rng(len(shape)).normal(size=shape).astype(dtype)
    if bad is not None and phi.size and dtype != "int16":
        phi.flat[bad[0] % phi.size] = bad[1]
    else:
        bad = None
    ok = len(shape) == 3 and tuple(shape[1:]) == (4, 4) and bad is None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.save(tmp / "in.npy", phi)
        out = tmp / "out.h5"
        if ok:
            preprocess(_lat_config(tmp / "in.npy", tmp), "s", out=str(out), force=True,
                       progress=False)
            with h5py.File(out) as f:
                np.testing.assert_allclose(f["fields"][()], phi.astype(float), rtol=1e-6)
        else:
            with pytest.raises(DataError, match="in.npy"):
                preprocess(_lat_config(tmp / "in.npy", tmp), "s", out=str(out), force=True,
                           progress=False)
            assert not out.exists()
