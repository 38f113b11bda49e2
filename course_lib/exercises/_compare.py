"""Comparisons shared by the exercise specs: each returns None when right, else a reason."""
from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np


def type_name(value: Any) -> str:
    return type(value).__name__


def is_int_like(value: Any) -> bool:
    """A Python int or a numpy integer; ``bool`` is not a number here."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def exact_int(expected: int, got: Any) -> str | None:
    if not is_int_like(got):
        return f"expected an int, got a {type_name(got)} ({got!r})"
    if int(got) != expected:
        return f"expected {expected}, got {int(got)}"
    return None


def close_float(expected: float, got: Any, *, rtol: float = 1e-9, atol: float = 1e-12,
                what: str = "value") -> str | None:
    if not isinstance(got, numbers.Real) or isinstance(got, (bool, np.bool_)):
        return f"{what}: expected a float, got a {type_name(got)} ({got!r})"
    if not math.isclose(float(got), expected, rel_tol=rtol, abs_tol=atol):
        return f"{what}: expected {expected!r}, got {float(got)!r}"
    return None
