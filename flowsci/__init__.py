"""flowsci: Boltzmann generators with equivariant continuous normalizing flows."""

__version__ = "0.1.0"
