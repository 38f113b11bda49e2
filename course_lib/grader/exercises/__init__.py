"""The exercise registry: what each exercise is graded on, without its reference.

An exercise is a pure top-level function with a fixed name. Its reference implementation is
``course_lib.<topic>.<name>``; this package holds only how to *grade* it:

- ``make_cases(rng)``: JSON-able descriptions of inputs, smallest and most telling first;
- ``build(case)``: turns one description into real arguments ``(args, kwargs)`` (tensors, models);
- ``describe(case)``: a short text of those inputs, printed with a counterexample;
- ``compare(expected, got)``: ``None`` when ``got`` is right, else the reason it is not;
- ``forbidden``: dotted names a submission may not call to get the answer (the reference, or the
  library function that computes the same thing);
- ``harness`` (optional): ``harness(fn, args, kwargs)`` calls the function and returns what is graded,
  when that is more than the return value (e.g. the value *and* the gradient it lets through).

Nothing here imports a topic module, so a grading subprocess can build inputs without ever
holding a reference implementation or an expected result.
"""
from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Exercise", "get", "names", "by_chapter", "chapters", "case_rng", "ALWAYS_FORBIDDEN"]

# Every module that holds references (or wraps them) is unavailable while a submission is graded.
ALWAYS_FORBIDDEN = tuple(f"course_lib.{m}" for m in (
    "measurement", "timing", "grader.grading", "pruning", "quantization", "lowrank", "distillation",
    "local_explanation", "global_explanation", "compress_explain"))


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
    harness: Callable[[Callable, tuple, dict], Any] | None = None

    @property
    def reference_path(self) -> str:
        return f"course_lib.{self.topic}.{self.name}"

    @property
    def all_forbidden(self) -> tuple[str, ...]:
        return ALWAYS_FORBIDDEN + self.forbidden


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


def by_chapter(chapter: str) -> list[Exercise]:
    return [ex for ex in _REGISTRY.values() if ex.chapter == chapter]


def case_rng(seed: int, name: str) -> np.random.Generator:
    """The generator of exercise ``name``'s hidden inputs for a given grading ``seed``."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


# One spec module per chapter module, named like it; each defines EXERCISES. Listed in course order.
_CHAPTER_SPECS = ("measurement", "pruning", "quantization", "lowrank", "distillation", "local_explanation",
                  "global_explanation", "compress_explain")


def _load_specs() -> None:
    import importlib
    import importlib.util

    for topic in _CHAPTER_SPECS:
        if importlib.util.find_spec(f"{__name__}.{topic}") is not None:
            _register(*importlib.import_module(f"{__name__}.{topic}").EXERCISES)


_load_specs()
