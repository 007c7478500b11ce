"""Training objectives (`OBJECTIVES`) and the shared loop (`train_flow`)."""

from . import likelihood, matching, path_gradients  # noqa: F401  (register the objectives)
from .loop import TrainSettings, train_flow
from .objectives import OBJECTIVES

__all__ = ["OBJECTIVES", "TrainSettings", "train_flow"]
