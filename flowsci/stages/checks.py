"""Checks that a stage's input files were made for the current config (design: 'refuse stale
or foreign inputs'). Each refusal is a DataError naming the file, the key and both values."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .. import paths
from ..data.hdf5 import MAIN_ARRAY, sha256_of, validate_h5
from ..config import canonical_json, short_json
from ..errors import DataError

# The keys of systems.<system> that define a dataset (observables may change freely).
DATA_KEYS = ("target", "data", "temperature")


def check_data_file(config: dict, system: str, target, path: str | Path | None = None
                    ) -> dict[str, Any]:
    """Validate the system's data.h5 and check that it holds data of `target`'s kind and event
    shape, made for this system with the current target, data and temperature settings.
    Returns the file's root attrs."""
    path = Path(path) if path else paths.data_file(config, system)
    attrs = validate_h5(path)
    redo = f"rerun `flowsci preprocess --system {system} --force` or restore the setting"
    if attrs["kind"] != target.kind:
        raise DataError(f"{path}: holds {attrs['kind']} data, but systems.{system}.target "
                        f"({target.name}) is a {target.kind} target; wrong file for this system")
    if attrs["system"] != system:
        raise DataError(f"{path}: made for system {attrs['system']!r}, not {system!r}; {redo}")
    stored = _json(path, attrs, "config")
    spec = config["systems"][system]
    for key in DATA_KEYS:
        if canonical_json(stored.get(key)) != canonical_json(spec.get(key)):
            raise DataError(f"{path}: made with systems.{system}.{key} = "
                            f"{short_json(stored.get(key))}, the config now has {short_json(spec.get(key))}; "
                            f"{redo}")
    _check_event_shape(path, MAIN_ARRAY[attrs["kind"]], target)
    return attrs


def check_samples_file(config: dict, run: str, path: str | Path, attrs: dict[str, Any]) -> None:
    """Samples (`attrs` of a gathered samples file at `path`) belong to this run and to its
    current model.pt."""
    path = Path(path)
    spec = config["runs"][run]
    if attrs.get("kind") != "samples":
        raise DataError(f"{path}: kind {attrs.get('kind')!r}, expected a samples file")
    for key, now in (("run", run), ("system", spec["system"])):
        if attrs.get(key) != now:
            raise DataError(f"{path}: samples of {key} {attrs.get(key)!r}, not {now!r}; "
                            f"rerun `flowsci sample --run {run}`")
    model = paths.model_file(config, run)
    if "model_sha256" in attrs and model.is_file() and sha256_of(model) != attrs["model_sha256"]:
        raise DataError(f"{path}: drawn from another model than the current {model} (model_sha256 "
                        f"{attrs['model_sha256'][:12]}..., the file now has "
                        f"{sha256_of(model)[:12]}...); rerun `flowsci sample --run {run}`")


def _check_event_shape(path: Path, name: str, target) -> None:
    import h5py

    with h5py.File(path, "r") as f:
        shape = tuple(f[name].shape[1:])
    if shape != tuple(target.event_shape):
        raise DataError(f"{path}: {name!r} configurations of shape {shape}, but target "
                        f"{target.name} has event shape {tuple(target.event_shape)}")


def _json(path: Path, attrs: dict, key: str) -> dict:
    try:
        return json.loads(attrs.get(key) or "{}")
    except (TypeError, ValueError):
        raise DataError(f"{path}: root attribute {key!r} is not valid JSON") from None


def check_sample_counts(path: str | Path, attrs: dict[str, Any], n_rows: int) -> None:
    """A samples file's n_requested (an integer >= 1, at least the rows stored) and n_failed
    (an integer in [0, n_requested]) attributes, when present; DataError naming the attribute."""
    import numpy as np

    counts = {}
    for key in ("n_requested", "n_failed"):
        if key not in attrs:
            continue
        v = attrs[key]
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise DataError(f"{path}: attribute {key} = {v!r} is not an integer")
        counts[key] = int(v)
    req, failed = counts.get("n_requested"), counts.get("n_failed")
    if req is not None and (req < 1 or req < n_rows):
        raise DataError(f"{path}: attribute n_requested = {req}, but the file holds {n_rows} "
                        "samples (must be >= 1 and at least that many)")
    if failed is not None and (failed < 0 or (req is not None and failed > req)):
        raise DataError(f"{path}: attribute n_failed = {failed} must be in [0, n_requested"
                        f"{'' if req is None else f' = {req}'}]")
