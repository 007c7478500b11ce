"""Device and dtype selection: CUDA when present (config device: auto), else CPU."""

from __future__ import annotations

import torch

from .errors import ConfigError

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config device: cuda was requested but no CUDA device is available")
    return torch.device(name)


def resolve_dtype(name: str = "float32") -> torch.dtype:
    return DTYPES[name]
