"""Vector fields by config name (`VECTOR_FIELDS`); importing registers the built-ins:
'egnn' (particles, any dim), 'e3nn' (3D particles), 'lattice_conv' (periodic lattices)."""

from . import e3nn_field, egnn, lattice_conv, pair_kernel  # noqa: F401
from .base import VECTOR_FIELDS, build_field

__all__ = ["VECTOR_FIELDS", "build_field"]
