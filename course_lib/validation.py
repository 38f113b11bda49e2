"""Argument checks shared by every module: one sentence form for every error.

``<name> must be <allowed>, got <repr>`` -- a TypeError for a wrong type, a ValueError for a
wrong value. ``bool`` is never accepted as a number (``True`` is not a count).
"""
from __future__ import annotations

import numbers

import numpy as np
import torch
from torch import nn

__all__ = ["check_int", "check_float", "check_bool", "check_module", "check_tensor"]


def check_int(name: str, value: object, minimum: int) -> int:
    """``value`` as an int, if it is an integer (Python or numpy) ``>= minimum``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def check_float(name: str, value: object, low: float = -np.inf, high: float = np.inf, *,
                low_inclusive: bool = True) -> float:
    """``value`` as a float, if it is a real number in ``[low, high]`` (``(low, high]`` if not inclusive)."""
    allowed = f"a float in {'[' if low_inclusive else '('}{low}, {high}]"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {allowed}, got {value!r}")
    inside = (low <= value if low_inclusive else low < value) and value <= high   # also rejects nan
    if not inside:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return float(value)


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value


def check_module(name: str, value: object) -> nn.Module:
    if not isinstance(value, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(value).__name__}")
    return value


def check_tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value
