"""HDF5 schema: round trip, validation errors naming the file, atomic writes, splits."""

import h5py
import numpy as np
import pytest

from flowsci.io import atomic_output
from flowsci.data.hdf5 import (ROOT_ATTRS, make_splits, provenance, read_array,
                               read_attrs, validate_h5, write_h5)
from flowsci.errors import DataError


def _particles(path, positions=None):
    pos = np.random.default_rng(0).normal(size=(20, 4, 2)) if positions is None else positions
    attrs = provenance("particles", "dw4", units="reduced", temperature=1.0,
                       source={"generator": "test"}, config={"a": 1})
    splits = make_splits(len(pos), {"train": 0.6, "val": 0.2, "test": 0.2}, "random", 0)
    return write_h5(path, {"positions": pos, "atomic_numbers": np.zeros(pos.shape[1], int),
                           "energies": np.zeros(len(pos))}, attrs, groups={"splits": splits})


def test_round_trip_and_provenance(tmp_path):
    p = _particles(tmp_path / "d.h5")
    attrs = validate_h5(p)
    assert set(ROOT_ATTRS) <= set(attrs)
    assert attrs["kind"] == "particles" and attrs["schema_version"] == 1
    pos = read_array(p, "positions")
    train = read_array(p, "positions", "train")
    assert pos.shape == (20, 4, 2) and train.shape == (12, 4, 2)
    assert read_attrs(p)["system"] == "dw4"


@pytest.mark.parametrize("method", ["random", "contiguous"])
def test_splits_disjoint_and_covering(method):
    s = make_splits(101, {"train": 0.8, "val": 0.1, "test": 0.1}, method, seed=4)
    allidx = np.concatenate([s["train"], s["val"], s["test"]])
    assert sorted(allidx.tolist()) == list(range(101))
    if method == "contiguous":
        assert s["train"].max() < s["val"].min() <= s["val"].max() < s["test"].min()


def test_nan_and_missing_attrs_are_named(tmp_path):
    pos = np.random.default_rng(0).normal(size=(10, 4, 2))
    pos[7, 1, 0] = np.nan
    p = _particles(tmp_path / "nan.h5", pos)
    with pytest.raises(DataError, match=r"nan\.h5.*NaN/Inf.*frame 7"):
        validate_h5(p)
    q = tmp_path / "bad.h5"
    with h5py.File(q, "w") as f:
        f["positions"] = np.zeros((2, 4, 2))
    with pytest.raises(DataError, match=r"bad\.h5: missing root attribute"):
        validate_h5(q)
    r = tmp_path / "garbage.h5"
    r.write_bytes(b"not hdf5 at all")
    with pytest.raises(DataError, match=r"garbage\.h5: not a readable HDF5"):
        validate_h5(r)


def test_overlapping_splits_rejected(tmp_path):
    p = _particles(tmp_path / "d.h5")
    with h5py.File(p, "a") as f:
        del f["splits/val"]
        f["splits/val"] = f["splits/train"][()][:2]
    with pytest.raises(DataError, match="overlap"):
        validate_h5(p)


def test_atomic_output_keeps_old_file_on_error(tmp_path):
    p = tmp_path / "out.txt"
    p.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_output(p) as tmp:
            tmp.write_text("half-written")
            raise RuntimeError("crash")
    assert p.read_text() == "old"
    assert list(tmp_path.iterdir()) == [p]
    with atomic_output(p) as tmp:
        tmp.write_text("new")
    assert p.read_text() == "new"
    assert p.stat().st_mode & 0o044  # group/other-readable like any file, not mkstemp's 0600
