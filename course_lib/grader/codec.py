"""Values between the grader and its subprocesses as JSON (arrays as base64 .npy): never pickle.

Unpickling runs arbitrary code, so a grader that unpickles what a submission returns hands the
submission the grader's process. Here a subprocess's answer is plain JSON; arrays travel as the
bytes of an ``.npy`` file read back with ``allow_pickle=False``. Decoding validates as it goes
(nesting depth, total size, known tags) and turns anything unknown into :class:`Unsupported`,
so a malformed answer becomes a failed exercise, never a grader crash.
"""
from __future__ import annotations

import base64
import contextvars
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
MAX_LAYERS = 64                 # layers in one answer (the exercises return at most a few)
_layers_left: contextvars.ContextVar = contextvars.ContextVar("layers_left", default=None)
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


def _text_to_array(text: str, max_bytes: int | None = None) -> np.ndarray:
    """Read an ``.npy`` file's bytes, checking the header before anything is allocated: the shape and
    dtype must describe exactly the bytes that follow, within ``max_bytes`` (:data:`MAX_ARRAY_BYTES`)."""
    max_bytes = MAX_ARRAY_BYTES if max_bytes is None else min(max_bytes, MAX_ARRAY_BYTES)
    if not isinstance(text, str) or len(text) > (max_bytes + 4096) * 4 // 3 + 4:
        raise DecodeError(f"an array must be at most {max_bytes} bytes")
    raw = base64.b64decode(text.encode("ascii"), validate=True)
    stream = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(stream)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
            np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(stream, max_header_size=10_000)
    except (ValueError, SyntaxError, TypeError) as exc:
        raise DecodeError(f"not an .npy array: {exc}") from None
    if dtype.hasobject or dtype.itemsize == 0 and dtype.kind not in "SUV":
        raise DecodeError(f"unsupported array dtype {dtype}")
    count = math.prod(shape)
    if count * max(dtype.itemsize, 1) > max_bytes or count * dtype.itemsize != len(raw) - stream.tell():
        raise DecodeError(f"the array header (shape {shape}, dtype {dtype}) does not match its "
                          f"{len(raw) - stream.tell()} bytes of data, or exceeds {max_bytes} bytes")
    array = np.frombuffer(raw, dtype=dtype, count=count, offset=stream.tell())
    return array.reshape(shape, order="F" if fortran else "C").copy()


def array_text(array: np.ndarray) -> str:
    """An array as text (base64 of its ``.npy`` bytes): a black-box call's rows and values."""
    return _array_to_text(np.asarray(array))


def text_array(text: str, max_bytes: int | None = None) -> np.ndarray:
    """The array :func:`array_text` wrote, checked (:class:`DecodeError`) before anything is allocated."""
    return _text_to_array(text, max_bytes)


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
    if isinstance(value, torch.nn.Module):
        return _encode_module(value, _depth)
    return {"__unsupported__": type(value).__name__}


# --------------------------------------------------------------------------- layers
# The layers an exercise may return, with the constructor arguments that describe each. A returned
# layer travels as its type, those settings and its state (parameters and buffers); the grader
# rebuilds it from them, so what it runs there is the learner's layer and nothing else.
_LAYERS: dict[str, tuple[str, ...]] = {
    "Linear": ("in_features", "out_features"),
    "Conv1d": ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
               "padding_mode"),
    "Conv2d": ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
               "padding_mode"),
    "BatchNorm1d": ("num_features", "eps", "momentum", "affine", "track_running_stats"),
    "BatchNorm2d": ("num_features", "eps", "momentum", "affine", "track_running_stats"),
    "ReLU": (), "Identity": (), "Flatten": ("start_dim", "end_dim"), "Dropout": ("p",),
    "MaxPool2d": ("kernel_size", "stride", "padding", "dilation", "ceil_mode"),
    "AvgPool2d": ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad"),
    "AdaptiveAvgPool2d": ("output_size",),
    "Sequential": (),
}
_WITH_BIAS = ("Linear", "Conv1d", "Conv2d")
# Settings that size the work a layer does on an input of fixed size: bounded, so a returned layer
# cannot make the grader compute (or allocate) without limit when it runs it (a padding of 2500 would).
_SETTING_LIMITS = {"kernel_size": 64, "stride": 64, "padding": 64, "dilation": 64, "output_size": 1024,
                   "start_dim": 8, "end_dim": 8}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _encode_module(module: torch.nn.Module, depth: int) -> Any:
    kind = type(module).__name__
    if kind not in _LAYERS or type(module) is not getattr(torch.nn, kind):
        return {"__unsupported__": f"{kind} (a layer type the grader does not rebuild)"}
    config = {name: _plain(getattr(module, name)) for name in _LAYERS[kind]}
    if kind in _WITH_BIAS:
        config["bias"] = module.bias is not None
    children = [[name, encode(child, depth + 1)] for name, child in module.named_children()] \
        if kind == "Sequential" else []
    state = {k: encode(v, depth + 1) for k, v in module.state_dict().items()} if kind != "Sequential" else {}
    return {"__module__": kind, "config": config, "state": state, "children": children,
            "training": bool(module.training)}


def _decode_module(data: dict, depth: int) -> torch.nn.Module:
    left = _layers_left.get()
    if left is not None:
        left[0] -= 1
        if left[0] < 0:
            raise DecodeError(f"an answer may hold at most {MAX_LAYERS} layers")
    kind = data.get("__module__")
    if kind not in _LAYERS or not isinstance(data.get("config"), dict):
        raise DecodeError(f"unknown layer {kind!r}")
    if kind == "Sequential":
        children = data.get("children")
        if not isinstance(children, list) or len(children) > 256:
            raise DecodeError("a Sequential needs a list of at most 256 children")
        module = torch.nn.Sequential()
        for item in children:
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
                raise DecodeError("malformed Sequential child")
            child = decode(item[1], depth + 1)
            if not isinstance(child, torch.nn.Module):
                raise DecodeError("a Sequential child must be a layer")
            module.add_module(item[0], child)
    else:
        config = {k: tuple(v) if isinstance(v, list) else v for k, v in data["config"].items()
                  if k in _LAYERS[kind] + (("bias",) if kind in _WITH_BIAS else ())}
        for key, limit in _SETTING_LIMITS.items():
            values = config.get(key, 0)
            values = values if isinstance(values, tuple) else (values,)
            if key == "padding" and values in (("same",), ("valid",)):
                continue
            if len(values) > 3 or not all(v is None or (isinstance(v, int) and abs(v) <= limit) for v in values):
                raise DecodeError(f"the {kind}'s {key} must be at most {limit}, got {config.get(key)!r}")
        state = data.get("state")
        if not isinstance(state, dict):
            raise DecodeError("a layer needs its state")
        tensors = {str(k): decode(v, depth + 1) for k, v in state.items()}
        if not all(isinstance(t, torch.Tensor) for t in tensors.values()):
            raise DecodeError("a layer's state must hold tensors")
        try:
            with torch.device("meta"):            # no allocation from the settings: only the state's tensors
                module = getattr(torch.nn, kind)(**config)
            expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
            got = {k: tuple(v.shape) for k, v in tensors.items()}
            if expected != got:
                raise DecodeError(f"the {kind}'s state {got} does not match its settings {expected}")
            module.load_state_dict(tensors, strict=True, assign=True)
        except DecodeError:
            raise
        except Exception as exc:  # noqa: BLE001 - any bad setting is a malformed answer
            raise DecodeError(f"cannot rebuild the {kind}: {type(exc).__name__}: {exc}") from None
        module.requires_grad_(False)
    module.train(bool(data.get("training", False)))
    return module


def decode(data: Any, _depth: int = 0) -> Any:
    """Inverse of :func:`encode`; raises :class:`DecodeError` on anything it did not write, or on more than
    :data:`MAX_LAYERS` layers in one answer (a tree of thousands of tiny layers costs the grader seconds and
    hundreds of MB to rebuild before any comparison)."""
    if _depth == 0:
        token = _layers_left.set([MAX_LAYERS])
        try:
            return decode(data, 1)
        finally:
            _layers_left.reset(token)
    if _depth > MAX_DEPTH + 2:
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
    if tag == "__module__":
        return _decode_module(data, _depth)
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
         runner: Callable[[Callable, tuple, dict], Any] | None = None, *, roundtrip: bool = True) -> Outcome:
    """Call ``fn`` (through the exercise's ``runner`` if it has one) and record what happened. With
    ``roundtrip`` the value goes through the codec, as an answer from the sandbox does."""
    try:
        value = runner(fn, args, kwargs) if runner is not None else fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - a learner's error is data here
        return Outcome(error_types=tuple(c.__name__ for c in type(exc).__mro__), error_message=str(exc))
    if not roundtrip:
        return Outcome(value=value)
    try:
        return Outcome(value=decode(encode(value)))
    except (DecodeError, RecursionError) as exc:
        return Outcome(value=Unsupported(f"value that cannot be sent ({exc})"))
