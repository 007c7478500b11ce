"""Write MD trajectories as OpenMM simulations do: the input of the worked DCD example.

`write_with_reporter` writes frames (nm) with OpenMM's own `DCDReporter` / `XTCReporter`
(the reporters a user attaches to a `Simulation`); `record_openmm_md` runs the shipped
`openmm_md` generator on an OpenMM target and writes its frames that way, so the same frames
can be read back through `flowsci.data.md_trajectory` and compared with the generator's own
HDF5 path (config/examples/ala2_dcd.yaml, tests/test_md_inputs.py).

    python -m flowsci.data.md_record config/examples/ala2_dcd.yaml --system ala2_md \\
        --out results/inputs/ala2_md.dcd

takes the generator settings and the target of a `source: generate` system of the config.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import numpy as np

REPORTERS = {".dcd": "DCDReporter", ".xtc": "XTCReporter"}


def write_with_reporter(path: str | os.PathLike, topology: Any, system: Any,
                        frames_nm: np.ndarray, platform: str = "Reference") -> Path:
    """Write frames [N, n, 3] (nm) to `path` (.dcd or .xtc) with OpenMM's reporter."""
    import openmm
    from openmm import app

    path = Path(path)
    if path.suffix.lower() not in REPORTERS:
        raise ValueError(f"{path}: OpenMM reporters write {', '.join(REPORTERS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    sim = app.Simulation(topology, system, openmm.VerletIntegrator(0.001),
                         openmm.Platform.getPlatformByName(platform))
    reporter = getattr(app, REPORTERS[path.suffix.lower()])(str(path), 1)
    for x in np.asarray(frames_nm, dtype=np.float64):
        sim.context.setPositions(x)
        reporter.report(sim, sim.context.getState(getPositions=True))
        sim.currentStep += 1
    del reporter  # closes the file (the reporters close it when collected)
    return path


def record_openmm_md(target: Any, path: str | os.PathLike, params: dict[str, Any],
                     progress: bool = True) -> dict[str, Any]:
    """Run `openmm_md` (params as in the config) on `target`; write its frames to `path`."""
    from .generate import GENERATORS

    data = GENERATORS.build("openmm_md", dict(params), target=target)(progress=progress)
    write_with_reporter(path, target.topology, target.system, data.arrays["positions"],
                        platform=target.platform)
    return {"path": str(path), "n_frames": len(data.arrays["positions"]), **data.info}


def main(argv: list[str] | None = None) -> None:
    from ..config import load_config
    from ..systems import build_target

    p = argparse.ArgumentParser(prog="python -m flowsci.data.md_record",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("config")
    p.add_argument("--system", required=True, help="a system with source: generate, openmm_md")
    p.add_argument("--out", required=True, help="trajectory to write (.dcd or .xtc)")
    a = p.parse_args(argv)
    spec = load_config(a.config)["systems"][a.system]
    gen = spec["data"].get("generator", {})
    if gen.get("name") != "openmm_md":
        raise SystemExit(f"systems.{a.system} does not use the openmm_md generator")
    info = record_openmm_md(build_target(spec["target"]), a.out, gen.get("params", {}))
    print(f"{info['path']}: {info['n_frames']} frames")


if __name__ == "__main__":
    main()
