"""The package version (a leaf: flowsci/__init__.py re-exports it)."""

__version__ = "0.1.0"
