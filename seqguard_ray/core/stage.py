"""The stage protocol: the one shape every learned step of the pipeline has.

A stage (vocabulary, encoder, featurizer, each detector, the calibrated combination, the
explainer, the repair policy) follows scikit-learn's estimator habits:

- parameters are keyword arguments of ``__init__``, stored unchanged, checked in ``fit``;
- ``fit(...)`` learns and returns ``self``; what it learned lives in attributes ending in ``_``;
- an apply method says what the stage does: ``transform`` (data -> data), ``decision_function``
  (detectors, PyOD's convention: higher = more anomalous, raw scale), ``score`` (calibrated, in
  [0, 1], higher = more anomalous), ``repair``;
- ``to_state()`` returns plain arrays and JSON-able metadata, and ``from_state(arrays, meta)``
  rebuilds an equal, fitted stage from them. Bundles store exactly that: nothing is pickled.

The pipeline (:class:`seqguard_ray.core.pipeline.SeqGuard`) composes stages; the Ray Data and
Ray Serve adapters compose the same objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np

Arrays = dict[str, np.ndarray]
Meta = dict[str, Any]
S = TypeVar("S", bound="Stage")


class NotFittedError(RuntimeError):
    """A stage was used before ``fit`` (or before it was loaded from a bundle)."""


@runtime_checkable
class Stage(Protocol):
    """What every learned step provides (see the module docstring)."""

    def fit(self, *args: Any, **kwargs: Any) -> Stage: ...

    def to_state(self) -> tuple[Arrays, Meta]: ...

    @classmethod
    def from_state(cls: type[S], arrays: Mapping[str, np.ndarray], meta: Meta) -> S: ...


def is_fitted(stage: object) -> bool:
    """True when the stage has at least one fitted attribute (a public name ending in ``_``) set."""
    return any(k.endswith("_") and not k.startswith("_") and v is not None for k, v in vars(stage).items())


def check_is_fitted(stage: object, attributes: Iterable[str] | None = None) -> None:
    """Raise :class:`NotFittedError` unless ``stage`` is fitted (``attributes`` all set, when given)."""
    ok = all(getattr(stage, a, None) is not None for a in attributes) if attributes is not None else is_fitted(stage)
    if not ok:
        raise NotFittedError(f"this {type(stage).__name__} is not fitted: call fit() or load a bundle first")


def nest(prefix: str, arrays: Mapping[str, np.ndarray]) -> Arrays:
    """A sub-stage's arrays under ``prefix.`` (how a composite stage stores its parts)."""
    return {f"{prefix}.{k}": v for k, v in arrays.items()}


def unnest(prefix: str, arrays: Mapping[str, np.ndarray]) -> Arrays:
    """The arrays stored by :func:`nest` under ``prefix.``, with the prefix taken off."""
    head = prefix + "."
    return {k[len(head):]: arrays[k] for k in arrays if k.startswith(head)}
