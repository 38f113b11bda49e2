"""The exercise registry: what each exercise is graded on, without its reference.

An exercise is a pure top-level function with a fixed name. Its reference implementation is
``course_lib.<topic>.<name>``; this package holds only how to *grade* it:

- ``make_cases(rng)``: JSON-able descriptions of inputs, smallest and most telling first;
- ``build(case)``: turns one description into real arguments ``(args, kwargs)`` (tensors, models);
- ``describe(case)``: a short text of those inputs, printed with a counterexample;
- ``compare(expected, got)``: ``None`` when ``got`` is right, else the reason it is not;
- ``forbidden``: what computes the answer and is off limits while grading: library **modules**
  (``"torch.nn.utils.prune"``, ``"captum"``: every function in them is disabled, whatever path
  reaches it) and dispatcher operators (``"aten::fake_quantize_per_tensor_affine"``); see
  :mod:`course_lib.grader.guards`. The course's reference modules are always off limits;
- ``runner`` (optional): ``runner(fn, args, kwargs)`` runs where the learner's function runs (the
  sandboxed child, or the notebook): it calls ``fn`` and packages only what ``fn`` returned (call it
  twice to see it is deterministic; the gradient of the returned tensor). It holds nothing that
  decides the grade;
- ``derive`` (optional): ``derive(case, answer)`` runs in the grader only, on the decoded answer:
  it computes what ``compare`` sees (outputs of returned layers rebuilt from their state, the scores
  a pruning rule ranks, the truth a LIME fit is compared with). The expected value is
  ``derive(case, runner(reference, *build(case)))``, computed in the grader;
- ``blackbox`` (optional): ``blackbox(case)`` gives ``(public_case, BlackBox)`` for an exercise whose input is
  a function the learner may only *call* (``lime_tabular``'s ``f``). The graded child gets only the public
  case, and ``build(public_case)`` hands the learner a :class:`RemoteBlackBox`, which holds no parameter:
  each call travels to the grader process, which evaluates the :class:`BlackBox` and answers. The grader
  splits the case before it sends it, so the zygote the child is forked from never holds the parameters
  either (:class:`course_lib.grader.sandbox._Oracle`).
  In the grader and in the notebook ``build(case)`` of the full case gives the :class:`BlackBox` itself,
  with the same checks and the same row budget, so ``check()`` and the classroom grader agree.

Nothing here imports a topic module, so a grading subprocess can build inputs without ever
holding a reference implementation or an expected result.
"""
from __future__ import annotations

from collections.abc import Sequence

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Exercise", "get", "names", "by_chapter", "chapters", "case_rng", "keep_inputs", "inputs_changed",
           "BlackBox", "RemoteBlackBox", "remote_blackbox"]



@dataclass(frozen=True)
class Exercise:
    name: str
    chapter: str
    topic: str
    make_cases: Callable[[np.random.Generator], list[dict]]
    build: Callable[[dict], tuple[tuple, dict]]
    describe: Callable[[dict], str]
    compare: Callable[[Any, Any], str | None]
    forbidden: tuple[str, ...] = ()
    max_score: float = 1.0
    runner: Callable[[Callable, tuple, dict], Any] | None = None
    derive: Callable[[dict, Any], Any] | None = None
    blackbox: Callable[[dict], tuple[dict, "BlackBox"]] | None = None

    @property
    def reference_path(self) -> str:
        return f"course_lib.{self.topic}.{self.name}"



# --------------------------------------------------------------------------- functions the learner may only call
MAX_CALL_ROWS = 20_000           # rows of one call of a black-box function
MAX_CASE_ROWS = 100_000          # rows of all calls in one case (the runner's calls together)
MAX_CASE_CALLS = 64              # calls in one case: each is a round trip to the grader, so f takes a batch
BLACKBOX_SECONDS = 5.0           # the grader's time evaluating one graded job's calls (rows are bounded too)


class BlackBox:
    """A function of rows ``z`` (shape ``(n, columns)``, or one row ``(columns,)``) that the learner may call
    within a budget: at most :data:`MAX_CALL_ROWS` rows a call, :data:`MAX_CASE_ROWS` rows and
    :data:`MAX_CASE_CALLS` calls in all (the runner's calls of one case together). It runs in the
    grader's processes only (the notebook's kernel, the grader; never the zygote); a graded child gets a
    :class:`RemoteBlackBox` instead. Inputs are converted with ``np.asarray(z, dtype=np.float64)``; a wrong shape
    or an exhausted budget raises ``ValueError`` (the same message in the notebook and in the classroom grader).
    ``evaluate`` takes a float64 array of shape ``(n, columns)`` and returns ``n`` values."""

    __slots__ = ("_evaluate", "columns", "rows_left", "calls_left")

    def __init__(self, evaluate: Callable[[np.ndarray], np.ndarray], columns: int):
        self._evaluate, self.columns = evaluate, int(columns)
        self.rows_left, self.calls_left = MAX_CASE_ROWS, MAX_CASE_CALLS

    def rows(self, z: np.ndarray) -> np.ndarray:
        """``z`` as a 2-D float64 array after the checks, its rows taken from the budget."""
        if z.dtype != np.float64 or z.ndim not in (1, 2) or z.shape[-1] != self.columns:
            raise ValueError(f"f takes a float64 array of shape (n, {self.columns}) (or one row of shape "
                             f"({self.columns},)), got {z.dtype} of shape {tuple(z.shape)}")
        rows = z.reshape(-1, self.columns)
        if len(rows) > MAX_CALL_ROWS:
            raise ValueError(f"f takes at most {MAX_CALL_ROWS:,} rows a call, got {len(rows):,}")
        if len(rows) > self.rows_left:
            raise ValueError(f"f was called on more than {MAX_CASE_ROWS:,} rows for one case")
        if self.calls_left <= 0:
            raise ValueError(f"f was called more than {MAX_CASE_CALLS} times for one case: call it once on all "
                             f"your samples, an array of shape (n, {self.columns})")
        self.rows_left -= len(rows)
        self.calls_left -= 1
        return rows

    def __call__(self, z):
        z = np.asarray(z, dtype=np.float64)
        y = np.asarray(self._evaluate(self.rows(z)), dtype=np.float64)
        return y[0] if z.ndim == 1 else y

    def __repr__(self) -> str:
        return f"<a function of {self.columns} inputs, hidden>"


class RemoteBlackBox:
    """What a graded child gets for a :class:`BlackBox`: a function that holds no parameter. Each call sends
    ``z`` to the grader over the job's own socket and waits for the values (or the ``ValueError``'s message)
    on it: :func:`connect_blackbox` installs that channel in the child."""

    __slots__ = ("columns",)

    def __init__(self, columns: int):
        self.columns = int(columns)

    def __call__(self, z):
        if _channel is None:
            raise RuntimeError("this function is evaluated by the grader, and no grader is connected")
        return _channel(np.asarray(z, dtype=np.float64))

    def __repr__(self) -> str:
        return f"<a function of {self.columns} inputs, hidden>"

    def __reduce__(self):
        raise TypeError("this function cannot be pickled")


_channel: Callable[[np.ndarray], Any] | None = None


def connect_blackbox(channel: Callable[[np.ndarray], Any]) -> None:
    """In a graded child: the function that sends a call to the grader and returns its answer."""
    global _channel
    _channel = channel


def remote_blackbox(columns: int) -> RemoteBlackBox:
    """The stand-in ``build`` gives the learner for a black box when the case holds no parameter."""
    return RemoteBlackBox(columns)


_REGISTRY: dict[str, Exercise] = {}


def _register(*exercises: Exercise) -> None:
    for ex in exercises:
        if ex.name in _REGISTRY:
            raise RuntimeError(f"exercise {ex.name!r} is registered twice")
        _REGISTRY[ex.name] = ex


def get(name: str) -> Exercise:
    """The exercise called ``name``; ValueError listing the known names otherwise."""
    if name not in _REGISTRY:
        raise ValueError(f"exercise must be one of {sorted(_REGISTRY)}, got {name!r}")
    return _REGISTRY[name]


def names() -> list[str]:
    return list(_REGISTRY)


def chapters() -> list[str]:
    return sorted({ex.chapter for ex in _REGISTRY.values()})


def resolve_chapter(text: str, known: Sequence[str] | None = None) -> str:
    """The chapter id (``"00_measurement"``) that ``text`` names: the full id or its number (``"00"``, ``"0"``).
    Raises ``ValueError`` naming the allowed values otherwise."""
    known = list(chapters() if known is None else known)
    text = str(text).strip()
    if text in known:
        return text
    if text.isdigit():
        matches = [c for c in known if c.split("_")[0].isdigit() and int(c.split("_")[0]) == int(text)]
        if len(matches) == 1:
            return matches[0]
    raise ValueError(f"chapter must be one of {', '.join(known)} or its number (e.g. 00), got {text!r}")


def by_chapter(chapter: str) -> list[Exercise]:
    return [ex for ex in _REGISTRY.values() if ex.chapter == chapter]


def case_rng(seed: int, name: str) -> np.random.Generator:
    """The generator of exercise ``name``'s hidden inputs for a given grading ``seed``."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


# One spec module per chapter module, named like it; each defines EXERCISES. Listed in course order.
_CHAPTER_SPECS = ("measurement", "pruning", "quantization", "lowrank", "distillation", "local_explanation",
                  "global_explanation", "compression_explanation", "transformer_compression")


def keep_inputs(fn: Callable, args: tuple, kwargs: dict) -> dict:
    """A ``runner`` that sends back the result *and* the positional arguments as they are after the
    call, so the grader can see whether the function changed its inputs in place."""
    result = fn(*args, **kwargs)
    return {"result": result, "inputs_after": list(args)}


def inputs_changed(original: tuple, after: list) -> bool:
    """Whether ``after`` (decoded in the grader) differs from the freshly built ``original`` arguments."""
    import torch

    def same(a, b) -> bool:
        if isinstance(a, torch.Tensor):
            return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a.detach().to(b.dtype), b)
        if isinstance(a, torch.nn.Module):
            if not isinstance(b, torch.nn.Module):
                return False
            sa, sb = a.state_dict(), b.state_dict()
            return sa.keys() == sb.keys() and all(same(sa[k], sb[k]) for k in sa)
        if isinstance(a, (list, tuple)):
            return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(same, a, b))
        return True
    return not (isinstance(after, list) and len(after) == len(original) and all(map(same, original, after)))


def _load_specs() -> None:
    import importlib
    import importlib.util

    for topic in _CHAPTER_SPECS:
        if importlib.util.find_spec(f"{__name__}.{topic}") is not None:
            _register(*importlib.import_module(f"{__name__}.{topic}").EXERCISES)


_load_specs()
