"""CNF dynamics, divergence estimators and priors."""

from .cnf import CNF, SolverConfig
from .divergence import exact_divergence, hutchinson_divergence
from .priors import PRIORS, MeanFreeGaussian, StandardGaussian, prior_for, remove_mean

__all__ = ["CNF", "SolverConfig", "exact_divergence", "hutchinson_divergence", "PRIORS",
           "MeanFreeGaussian", "StandardGaussian", "prior_for", "remove_mean"]
