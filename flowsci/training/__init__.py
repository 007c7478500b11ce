"""Training objectives (`OBJECTIVES`) and the shared loop (`train_flow`)."""

from . import likelihood  # noqa: F401  (registers 'likelihood')
from .loop import TrainSettings, train_flow
from .objectives import OBJECTIVES

__all__ = ["OBJECTIVES", "TrainSettings", "train_flow"]
