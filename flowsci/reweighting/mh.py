"""Flow-based independence Metropolis-Hastings (Albergo, Kanwar & Shanahan 2019).

The flow q is the proposal of a Markov chain whose stationary distribution is the target p:
from state x, propose an independent x' ~ q and accept with probability
min(1, w(x') / w(x)), w = exp(-u - log q). Given N precomputed independent proposals (the
flow samples with their exact log q and reduced energies u), the chain consumes them in order.
It is asymptotically exact without weights; its autocorrelation reflects the rejections.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..autocorr import integrated_autocorr_time


@dataclass
class IndependenceMH:
    """A chain over proposal indices.

    chain: int [T] index of the proposal occupied at each step (T = n_steps).
    accepted: bool [T-1], whether step t -> t+1 accepted a new proposal.
    acceptance: fraction of accepted moves. tau: integrated autocorrelation time (steps) of
    the observable passed (energy by default), nan if undefined (e.g. a constant series).
    """

    chain: np.ndarray
    accepted: np.ndarray
    acceptance: float
    tau: float


def independence_mh(log_q: np.ndarray, u: np.ndarray, n_steps: int | None = None,
                    seed: int = 0, observable: np.ndarray | None = None) -> IndependenceMH:
    """Run the chain over the proposals in order.

    log_q, u: [N] exact flow log-density and reduced target energy (kT) of each proposal.
    n_steps: chain length T <= N (default N); proposal t is offered at step t, the chain
    starts at the first proposal with a finite weight. observable: [N] per-proposal values
    for tau (default u). Non-finite weights are never accepted.
    """
    log_w = -np.asarray(u, dtype=float) - np.asarray(log_q, dtype=float)
    n = len(log_w)
    if len(u) != len(log_q):
        raise ValueError(f"independence_mh: {len(log_q)} log_q but {len(u)} energies")
    t_max = n if n_steps is None else min(int(n_steps), n)
    finite = np.isfinite(log_w)
    if not finite[:t_max].any():
        raise ValueError("independence_mh: no proposal with a finite weight")
    log_w = np.where(finite, log_w, -np.inf)
    start = int(np.argmax(finite))
    rng = np.random.default_rng(seed)
    log_unif = np.log(rng.random(t_max))
    chain = np.empty(t_max, dtype=np.int64)
    chain[: start + 1] = start
    cur = start
    for t in range(start + 1, t_max):
        if log_unif[t] < log_w[t] - log_w[cur]:  # -inf proposals never pass
            cur = t
        chain[t] = cur
    accepted = chain[1:] != chain[:-1]
    acc = float(accepted[start:].mean()) if t_max - start > 1 else float("nan")
    obs = np.asarray(u if observable is None else observable, dtype=float)[chain]
    tau = integrated_autocorr_time(obs) if np.ptp(obs) > 0 else float("nan")
    return IndependenceMH(chain, accepted, acc, tau)
