"""Reweighting: the pure estimator layer (numpy in, numbers out; imports nothing from analysis).

`estimators`: log-weights, ESS, Pareto k̂, weighted observables with bootstrap errors, free
energies. `mh`: flow-based independence Metropolis-Hastings.
"""

from .estimators import (Binned, Estimate, Feature, bar_log_partition, block_length, estimate,
                         ess_fraction,
                         free_energy_differences, histogram, kish_ess, log_mean_weight,
                         log_weights, normalized_log_weights, normalized_weights, pareto_khat,
                         reweighted_mean, top_weights, weighted_means)
from .mh import IndependenceMH, independence_mh
from .resampling import systematic_resample

__all__ = ["Binned", "Estimate", "Feature", "IndependenceMH", "bar_log_partition",
           "block_length", "estimate",
           "ess_fraction", "free_energy_differences", "histogram", "independence_mh", "kish_ess",
           "log_mean_weight", "log_weights", "normalized_log_weights", "normalized_weights",
           "pareto_khat", "reweighted_mean", "systematic_resample", "top_weights", "weighted_means"]
