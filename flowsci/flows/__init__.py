"""Flows: the Flow contract (base.py), CNF dynamics (cnf.py), divergence strategies
(divergence.py), priors, the RealNVP baseline (coupling.py) and symmetry alignment."""

from .base import FLOW_MODELS, Flow, LikelihoodEstimate, TrainingLogProb
from .cnf import CNF, SolverConfig
from .divergence import ExactTrace, exact_divergence, hutchinson_divergence
from .priors import PRIORS, MeanFreeGaussian, StandardGaussian, prior_for

__all__ = ["CNF", "FLOW_MODELS", "ExactTrace", "Flow", "LikelihoodEstimate", "MeanFreeGaussian",
           "PRIORS", "SolverConfig", "StandardGaussian", "TrainingLogProb", "exact_divergence",
           "hutchinson_divergence", "prior_for"]
