"""Generator contract: a seeded, documented sampler of a target's Boltzmann distribution."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...registry import Registry


@dataclass
class GeneratedData:
    """What a generator returns; stage code writes it per the HDF5 schema.

    arrays: 'positions' [N, n, d] + 'atomic_numbers' [n] (particles) or 'fields' [N, *shape]
    + 'actions' [N] (lattice); 'energies' [N] reduced energies where defined.
    info: sampler settings and diagnostics (acceptance, autocorrelation), stored as attrs.
    """

    arrays: dict[str, np.ndarray]
    info: dict[str, Any] = field(default_factory=dict)
    units: str = "reduced"


GENERATORS: Registry = Registry("data generator")
