"""preprocess stage: raw input or a generator -> validated results/{system}/data.h5.

data.source 'generate': a registered generator (GENERATORS) samples the target; generators with
a `checkpoint` parameter checkpoint their chains next to the output and resume after a crash.
data.source 'file': molecular trajectories (any ASE format, flowsci.data.molecular; MD engine
formats DCD/XTC/TRR/NetCDF/... with a topology, flowsci.data.md_trajectory) or lattice fields
(.npy/.npz/HDF5, flowsci.data.lattice), streamed and written in compressed chunks.
The output is written to a temporary file, validated, then renamed: a failure leaves any
existing file untouched. An existing output holding a different dataset (other config or
input) is refused unless force=True; one holding the same dataset is kept as is.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .. import paths
from ..data import lattice, md_trajectory, molecular
from ..data.generate import GENERATORS
from ..data.inputs import check_block, check_xyz_header, regular_file
from ..data.hdf5 import (ChunkedWriter, atomic_output, create_h5, h5_attr_value, make_splits,
                         provenance, sha256_of, validate_h5)
from ..errors import ConfigError, DataError
from ..progress import Progress
from ..systems import build_target

log = logging.getLogger(__name__)

def preprocess(config: dict, system: str, out: str | None = None, force: bool = False,
               progress: bool = True) -> Path:
    """Write the system's dataset per the HDF5 schema; returns the output path."""
    if system not in config["systems"]:
        raise DataError(f"system {system!r} is not in the config ({', '.join(config['systems'])})")
    spec = config["systems"][system]
    out = Path(out) if out else paths.data_file(config, system)
    if out.is_dir():
        raise DataError(f"{out}: is a directory; the output must be a file path such as "
                        f"{out / 'data.h5'}")
    check_owned_output(config, system, out)
    data = spec["data"]
    if data["source"] == "generate" and data["generator"]["name"] not in GENERATORS:
        raise ConfigError(f"systems.{system}.data.generator.name: unknown generator "
                          f"{data['generator']['name']!r}; available: {', '.join(GENERATORS.names())}")
    source_sha = None
    if data["source"] == "file":
        in_path = regular_file(data["input"]["path"], f"systems.{system}.data.input.path")
        source_sha = sha256_of(in_path, chunk=1 << 16)
        if data["input"].get("topology"):  # the topology is part of the input
            top = regular_file(data["input"]["topology"], f"systems.{system}.data.input.topology")
            source_sha = f"{source_sha}+{sha256_of(top, chunk=1 << 16)}"
    fingerprint = _fingerprint(system, spec, source_sha)
    if out.exists() and not _may_write(out, fingerprint, force):
        return out
    target = build_target(spec["target"], f"systems.{system}.target")
    _check_temperature(system, spec, target)
    with atomic_output(out) as tmp:
        with create_h5(tmp) as f:
            if data["source"] == "generate":
                n, units, source = _write_generated(f, spec, target, out, progress)
            elif data["source"] == "file":
                n, units, source = _write_file(f, spec, target, source_sha, progress)
            else:
                raise DataError(f"systems.{system}.data.source {data['source']!r} is not supported")
            attrs = provenance(target.kind, system, units=json.dumps(units, sort_keys=True),
                               temperature=spec.get("temperature"), source=source, config=spec)
            attrs["fingerprint"] = fingerprint
            attrs.update({f"target.{k}": h5_attr_value(v) for k, v in target.attrs().items()})
            for k, v in attrs.items():
                f.attrs[k] = v
            sp = data["splits"]
            for k, idx in make_splits(n, sp, sp["method"], sp["seed"]).items():
                if len(idx) == 0:  # train refuses such a file: say so now
                    log.warning("%s: systems.%s.data.splits give an empty %s split (%d frames); "
                                "`flowsci train` needs train, val and test frames", out,
                                system, k, n)
                f.create_dataset(f"splits/{k}", data=idx)
        try:
            validate_h5(tmp)
        except DataError as e:  # name the output, never the temporary file
            raise DataError(str(e).replace(str(tmp), str(out))) from None
    if data["source"] == "generate":
        _checkpoint_path(out).unlink(missing_ok=True)
    return out


def check_owned_output(config: dict, system: str, out: Path) -> None:
    """`out` (even with --force) is never an input of a system of the config, nor a file
    under results_dir that another stage owns: there only the systems' data.h5 paths."""
    target = out.resolve()
    for name, spec in config["systems"].items():
        inp = spec["data"].get("input") or {}
        for key in ("path", "topology"):
            if inp.get(key) and Path(inp[key]).resolve() == target:
                raise DataError(f"{out}: is systems.{name}.data.input.{key}, an input; "
                                "preprocess never overwrites an input (choose another --out)")
    results = Path(config["results_dir"]).resolve()
    owned = {paths.data_file(config, name).resolve() for name in config["systems"]}
    if target.is_relative_to(results) and target not in owned:
        raise DataError(f"{out}: lies in results_dir ({config['results_dir']}) but is not a "
                        "system's data.h5; the other files there belong to other stages "
                        "(choose --out outside results_dir or the default)")


def _fingerprint(system: str, spec: dict, source_sha: str | None) -> str:
    """What makes two datasets the same: system name, its config entry, the input's sha256."""
    text = json.dumps({"system": system, "spec": spec, "input_sha256": source_sha},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _may_write(out: Path, fingerprint: str, force: bool) -> bool:
    """False: `out` already holds this dataset. Raises if it holds another one and not force."""
    if force:
        return True
    try:
        with h5py.File(out, "r") as f:
            old = f.attrs.get("fingerprint")
            what = (f"system {f.attrs.get('system')!r}, created {f.attrs.get('created')}"
                    if "system" in f.attrs else "not a flowsci dataset")
    except OSError:
        old, what = None, "not an HDF5 file"
    if isinstance(old, bytes):
        old = old.decode()
    if old == fingerprint:
        try:
            validate_h5(out)
            return False
        except DataError:
            pass
    raise DataError(f"{out}: already holds a different dataset ({what}); it was left untouched. "
                    "Rerun with --force to overwrite it, or choose another output path.")


def _check_temperature(system: str, spec: dict, target) -> None:
    t = getattr(target, "temperature", None)
    if t is not None and not np.isclose(float(t), float(spec.get("temperature", t))):
        raise ConfigError(f"systems.{system}.temperature = {spec.get('temperature')} but the "
                          f"target {target.name} reduces energies at temperature = {t} K; "
                          "set both to the same value")


def _checkpoint_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.generator-checkpoint")


def _write_generated(f: h5py.File, spec: dict, target, out: Path,
                     progress: bool) -> tuple[int, dict, dict]:
    gen_spec = spec["data"]["generator"]
    params = dict(gen_spec.get("params", {}))
    factory = GENERATORS.get(gen_spec["name"])
    context: dict[str, Any] = {"target": target}
    if "checkpoint" in inspect.signature(factory).parameters and "checkpoint" not in params:
        context["checkpoint"] = str(_checkpoint_path(out))
    generated = GENERATORS.build(gen_spec["name"], params, config_key="data.generator",
                                 **context)(progress=progress)
    arrays = dict(generated.arrays)
    main = "positions" if target.kind == "particles" else "fields"
    if main not in arrays:
        raise DataError(f"generator {gen_spec['name']!r} returned no {main!r}")
    if target.kind == "particles":
        arrays[main] = arrays[main] - arrays[main].mean(axis=-2, keepdims=True)
    bad = ~np.isfinite(arrays[main].reshape(len(arrays[main]), -1)).all(axis=1)
    if bad.any():
        raise DataError(f"generator {gen_spec['name']!r} produced non-finite {main} "
                        f"(first at frame {int(np.argmax(bad))})")
    w = ChunkedWriter(f)
    for name, arr in arrays.items():
        arr = np.asarray(arr)
        if name in ("atomic_numbers", "pbc"):
            f.create_dataset(name, data=arr)
        else:
            w.append(name, arr)
    units = ({"length": generated.units, "energy": "kT"} if target.kind == "particles"
             else {"field": "dimensionless", "action": "dimensionless (= reduced energy)"})
    return len(arrays[main]), units, {"generator": gen_spec["name"], "params": params,
                                      **generated.info}


def _write_file(f: h5py.File, spec: dict, target, source_sha: str,
                progress: bool) -> tuple[int, dict, dict]:
    name = Path(spec["data"]["input"]["path"]).name
    with Progress(None, f"read {name}", unit="frame", bar=progress) as bar:  # total unknown
        return _read_file(f, spec, target, source_sha, bar)


def _read_file(f: h5py.File, spec: dict, target, source_sha: str,
               bar: Progress) -> tuple[int, dict, dict]:
    inp = spec["data"]["input"]
    path = Path(inp["path"])
    sel = {"start": inp.get("start", 0), "stop": inp.get("stop"), "stride": inp.get("stride", 1)}
    chunk = inp.get("chunk_frames", 4096)
    w = ChunkedWriter(f, chunk_rows=chunk)
    source = {"path": str(path), "sha256": source_sha, **sel}
    if target.kind == "lattice":
        info: dict[str, Any] = {}
        unknown = set(inp.get("params", {})) - {"fields_key", "actions_key", "action_rtol"}
        if unknown:
            raise ConfigError(f"data.input.params: unknown lattice reader option(s) "
                              f"{sorted(unknown)}; accepted: fields_key, actions_key, action_rtol")
        for block in lattice.stream_fields(path, target, fmt=inp.get("format"), chunk_frames=chunk,
                                           info=info, **sel, **inp.get("params", {})):
            check_block(path, block["fields"], (sel["start"] or 0) + bar.done * (sel["stride"] or 1),
                        sel["stride"] or 1, "fields")
            for k, v in block.items():
                w.append(k, v)
            bar.update(len(block["fields"]))
        source.update(info)
        return info["n_frames"], {"field": "dimensionless", "action": "dimensionless"}, source
    md_fmt = md_trajectory.md_format(path, inp.get("format"), inp.get("topology"))
    if md_fmt is not None:
        return _write_md(w, f, spec, target, md_fmt, sel, chunk, bar, source)
    for key in ("atoms", "make_whole"):
        if inp.get(key):
            raise ConfigError(f"data.input.{key} applies to MD trajectories read with a topology "
                              f"({', '.join(md_trajectory.FORMATS)}), not to {path.name}")
    meta = molecular.MolecularMeta(str(path), molecular.detect_format(path, inp.get("format")))
    check_xyz_header(path, meta.format)
    n_expected = target.n_particles
    for block in _quiet_overflow(molecular.stream_frames(
            path, meta, length_unit=getattr(target, "length_unit", "reduced"),
            temperature=spec.get("temperature"), units=inp.get("units"), **sel,
            remove_com=inp.get("remove_com", True), chunk_frames=chunk,
            read_kwargs=inp.get("params"))):
        if block["positions"].shape[1:] != (n_expected, target.dim):
            raise DataError(f"{path}: frames have {block['positions'].shape[1]} atoms in "
                            f"{block['positions'].shape[2]}D, target {target.name} has "
                            f"{n_expected} in {target.dim}D")
        check_block(path, block["positions"], (sel["start"] or 0) + bar.done * (sel["stride"] or 1),
                    sel["stride"] or 1, "coordinates")
        for k, v in block.items():
            w.append(k, v)
        bar.update(len(block["positions"]))
    _check_elements(path, meta.atomic_numbers, target)
    f.create_dataset("atomic_numbers", data=meta.atomic_numbers)
    if meta.pbc is not None and meta.pbc.any():
        f.create_dataset("pbc", data=meta.pbc)
    source.update(format=meta.format, n_frames=meta.n_frames, energies=bool(meta.has_energy),
                  forces=bool(meta.has_forces), remove_com=inp.get("remove_com", True))
    return meta.n_frames, meta.units, source


def _write_md(w: ChunkedWriter, f: h5py.File, spec: dict, target, fmt: str, sel: dict,
              chunk: int, bar: Progress, source: dict) -> tuple[int, dict, dict]:
    """An MD trajectory + topology (flowsci.data.md_trajectory) -> positions, cell, pbc."""
    inp = spec["data"]["input"]
    path = Path(inp["path"])
    sha, _, top_sha = source["sha256"].partition("+")
    atoms = inp.get("atoms")
    if atoms is None:  # the target's own selection (openmm target param `atoms`) by default
        atoms = getattr(target, "atom_selection", None)
    meta = md_trajectory.MDMeta(str(path), fmt, str(inp["topology"]))
    n_expected = target.n_particles
    for block in md_trajectory.stream_md(
            path, meta, length_unit=getattr(target, "length_unit", "reduced"),
            units=inp.get("units"), atoms=atoms, **sel, remove_com=inp.get("remove_com", True),
            chunk_frames=chunk, make_whole=inp.get("make_whole", False)):
        if block["positions"].shape[1:] != (n_expected, target.dim):
            raise DataError(f"{path}: {block['positions'].shape[1]} atoms selected "
                            f"(data.input.atoms = {atoms!r}), target {target.name} has "
                            f"{n_expected}")
        for k, v in block.items():
            w.append(k, v)
        bar.update(len(block["positions"]))
    _check_elements(path, meta.atomic_numbers, target)
    f.create_dataset("atomic_numbers", data=meta.atomic_numbers)
    if meta.has_cell:
        f.create_dataset("pbc", data=meta.pbc)
    source.update(sha256=sha, format=fmt, reader="mdtraj", n_frames=meta.n_frames,
                  topology=str(inp["topology"]), topology_sha256=top_sha, atoms=atoms,
                  n_atoms_file=meta.n_atoms_file, n_atoms_selected=len(meta.atom_indices),
                  periodic=bool(meta.has_cell), make_whole=bool(inp.get("make_whole", False)),
                  remove_com=inp.get("remove_com", True))
    return meta.n_frames, meta.units, source


def _check_elements(path: Path, numbers: np.ndarray, target) -> None:
    expected = np.asarray(getattr(target, "atomic_numbers", [0] * len(numbers)))
    if np.any(expected != 0) and not np.array_equal(expected, numbers):
        i = int(np.argmax(expected != numbers))
        raise DataError(f"{path}: atom {i} is element {numbers[i]}, target {target.name} "
                        f"expects {expected[i]} (same atoms in the same order needed)")


def _quiet_overflow(blocks):
    """Iterate `blocks` with numpy's overflow warnings off: huge input coordinates overflow
    while being centred, and check_block then refuses them in one line."""
    it = iter(blocks)
    while True:
        with np.errstate(over="ignore", invalid="ignore"):
            try:
                block = next(it)
            except StopIteration:
                return
        yield block
