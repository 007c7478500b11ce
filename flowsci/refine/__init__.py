"""Refinement of flow samples by Markov chains on the target (the `refine` stage).

`potential`: the target's reduced energy and forces (autograd) on the state space (the
zero-centroid subspace for translation-invariant particles). `kernels`: the registry of
p-invariant local kernels (`mala`, `hmc`) and the chain state. `adaptation`: step-size
dual averaging (burn-in only). `flow_mcmc`: chains with local steps plus global independence
moves from the flow's stored samples. `resample_move`: systematic resampling of the
reweighted samples, then local moves. `stats`: acceptance, tau, split R-hat, ESS, errors.
All randomness comes from one torch.Generator per run (reproducible, checkpointable).
"""

from .adaptation import DualAveraging
from .flow_mcmc import ChainResult, FlowMCMC, run_flow_mcmc
from . import hmc, mala  # noqa: F401  (register the kernels)
from .kernels import KERNELS, ChainState, LocalKernel, build_kernel
from .potential import Potential
from .resample_move import ResampleMove, ResampleMoveResult, resample_move

__all__ = ["KERNELS", "ChainResult", "build_kernel", "ChainState", "DualAveraging", "FlowMCMC", "LocalKernel",
           "Potential", "ResampleMove", "ResampleMoveResult", "resample_move", "run_flow_mcmc"]
