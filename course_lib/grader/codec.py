"""Values between the grader and its subprocesses as JSON (arrays as base64 .npy): never pickle.

Unpickling runs arbitrary code, so a grader that unpickles what a submission returns hands the
submission the grader's process. Here a subprocess's answer is plain JSON; arrays travel as the
bytes of an ``.npy`` file read back with ``allow_pickle=False``. Decoding validates as it goes
(nesting depth, total size, known tags) and turns anything unknown into :class:`Unsupported`,
so a malformed answer becomes a failed exercise, never a grader crash.
"""
from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["encode", "decode", "dumps", "loads", "Unsupported", "DecodeError", "Outcome", "call"]

MAX_DEPTH = 20
MAX_ARRAY_BYTES = 64 * 2**20


class DecodeError(ValueError):
    """The data is not a value this codec writes."""


class Unsupported:
    """Stands for a returned object of a type the codec does not carry (a model, a generator...)."""

    def __init__(self, type_name: str):
        self.type_name = type_name

    def __repr__(self) -> str:
        return f"<a {self.type_name} object>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Unsupported) and other.type_name == self.type_name


def _array_to_text(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _text_to_array(text: str) -> np.ndarray:
    raw = base64.b64decode(text.encode("ascii"), validate=True)
    if len(raw) > MAX_ARRAY_BYTES:
        raise DecodeError(f"array of {len(raw)} bytes is larger than the limit {MAX_ARRAY_BYTES}")
    return np.load(io.BytesIO(raw), allow_pickle=False)


def encode(value: Any, _depth: int = 0) -> Any:
    """A JSON-able form of ``value`` (tensors and arrays tagged, floats nan/inf kept)."""
    if _depth > MAX_DEPTH:
        return {"__unsupported__": "deeply nested value"}
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return {"__int__": str(value)} if abs(value) > 2**53 else value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, np.generic):
        return {"__npscalar__": _array_to_text(np.asarray(value))}
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            return {"__unsupported__": "object ndarray"}
        return {"__ndarray__": _array_to_text(value)}
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu()
        if tensor.dtype == torch.bfloat16:
            return {"__tensor__": _array_to_text(tensor.float().numpy()), "dtype": "bfloat16"}
        return {"__tensor__": _array_to_text(tensor.resolve_conj().resolve_neg().numpy()),
                "requires_grad": bool(value.requires_grad)}
    if isinstance(value, (list, tuple)):
        items = [encode(v, _depth + 1) for v in value]
        return items if isinstance(value, list) else {"__tuple__": items}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {"__dict__": [[k, encode(v, _depth + 1)] for k, v in value.items()]}
        return {"__unsupported__": "dict with non-string keys"}
    return {"__unsupported__": type(value).__name__}


def decode(data: Any, _depth: int = 0) -> Any:
    """Inverse of :func:`encode`; raises :class:`DecodeError` on anything it did not write."""
    if _depth > MAX_DEPTH + 1:
        raise DecodeError("value nested too deeply")
    if data is None or isinstance(data, (bool, str, int, float)):
        return data
    if isinstance(data, list):
        return [decode(v, _depth + 1) for v in data]
    if not isinstance(data, dict) or len(data) == 0:
        raise DecodeError(f"unexpected {type(data).__name__} in encoded data")
    tag = next(iter(data))
    if tag == "__tuple__":
        return tuple(decode(v, _depth + 1) for v in data[tag])
    if tag == "__dict__":
        return {str(k): decode(v, _depth + 1) for k, v in data[tag]}
    if tag == "__int__":
        return int(data[tag])
    if tag == "__float__":
        return float(data[tag])
    if tag == "__npscalar__":
        return _text_to_array(data[tag])[()]
    if tag == "__ndarray__":
        return _text_to_array(data[tag])
    if tag == "__tensor__":
        array = _text_to_array(data[tag])
        tensor = torch.from_numpy(array.copy())
        return tensor.to(torch.bfloat16) if data.get("dtype") == "bfloat16" else tensor
    if tag == "__unsupported__":
        return Unsupported(str(data[tag]))
    raise DecodeError(f"unknown tag {tag!r} in encoded data")


def dumps(value: Any) -> str:
    return json.dumps(encode(value))


def loads(text: str) -> Any:
    try:
        return decode(json.loads(text))
    except (ValueError, TypeError, KeyError, IndexError) as exc:  # json, base64 and np.load errors
        raise DecodeError(f"malformed encoded value: {exc}") from None


@dataclass
class Outcome:
    """What one call did: returned ``value``, or raised (``error_types`` is the exception's MRO names)."""

    value: Any = None
    error_types: tuple[str, ...] = ()
    error_message: str = ""

    @property
    def raised(self) -> bool:
        return bool(self.error_types)

    def to_json(self) -> dict:
        if self.raised:
            return {"error_types": list(self.error_types), "error_message": self.error_message[:2000]}
        return {"value": encode(self.value)}

    @classmethod
    def from_json(cls, data: dict) -> "Outcome":
        if not isinstance(data, dict):
            raise DecodeError(f"an outcome must be a dict, got {type(data).__name__}")
        if "error_types" in data:
            types = data["error_types"]
            if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
                raise DecodeError("error_types must be a list of names")
            return cls(error_types=tuple(types[:50]), error_message=str(data.get("error_message", ""))[:2000])
        if "value" not in data:
            raise DecodeError("an outcome needs 'value' or 'error_types'")
        return cls(value=decode(data["value"]))


def call(fn: Callable, args: tuple, kwargs: dict,
         harness: Callable[[Callable, tuple, dict], Any] | None = None) -> Outcome:
    """Call ``fn`` (through ``harness`` if given) and record what happened; the value goes through
    the codec as in the sandbox."""
    try:
        value = harness(fn, args, kwargs) if harness is not None else fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - a learner's error is data here
        return Outcome(error_types=tuple(c.__name__ for c in type(exc).__mro__), error_message=str(exc))
    return Outcome(value=decode(encode(value)))
