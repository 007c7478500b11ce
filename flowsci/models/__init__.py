"""Vector fields by config name (`VECTOR_FIELDS`); importing registers the built-ins."""

from . import egnn  # noqa: F401
from .base import VECTOR_FIELDS, build_field

__all__ = ["VECTOR_FIELDS", "build_field"]
