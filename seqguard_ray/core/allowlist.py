"""The allow-list: users and items a team vouches for (internal crawlers, QA accounts, a launch it
knows about). Given at scoring time, honoured by every stage: an allowed user is never flagged nor
repaired, an allowed item is never a campaign target and its events are never dropped as part of a
push; the reasons say so.

File format (JSON or YAML): ``{"users": ["u1", 42], "items": ["sku-9"]}``; ids are matched as text,
the way ids are read (``007`` stays ``007``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MAX_ENTRIES = 1_000_000  # ids per list: an allow-list is a curated list, not a second log
_KEYS = ("users", "items")


@dataclass(frozen=True)
class AllowList:
    """Allowed user and item ids, as text."""

    users: frozenset[str] = field(default_factory=frozenset)
    items: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def of(cls, users: Iterable[object] = (), items: Iterable[object] = ()) -> AllowList:
        return cls(frozenset(_ids(users, "users")), frozenset(_ids(items, "items")))

    @classmethod
    def from_dict(cls, d: dict) -> AllowList:
        if not isinstance(d, dict):
            raise ValueError(f"an allow-list is a mapping with keys {list(_KEYS)}, got {type(d).__name__}")
        unknown = set(d) - set(_KEYS)
        if unknown:
            raise ValueError(f"unknown allow-list key(s) {sorted(unknown)}; known: {list(_KEYS)}")
        return cls.of(d.get("users") or (), d.get("items") or ())

    @classmethod
    def read(cls, path: str | Path) -> AllowList:
        """An allow-list from a JSON or YAML file; a clear ValueError names what is wrong."""
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as exc:
            raise ValueError(f"cannot read the allow-list {p}: {exc.strerror or exc}") from None
        try:
            if p.suffix.lower() in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except Exception as exc:  # noqa: BLE001 - any parse error is the file's fault
            raise ValueError(f"the allow-list {p} is not valid {'YAML' if p.suffix.lower() in ('.yaml', '.yml') else 'JSON'}: {exc}") from None
        return cls.from_dict(data or {})

    def __bool__(self) -> bool:
        return bool(self.users or self.items)

    def user_mask(self, user_ids: np.ndarray) -> np.ndarray:
        """(U,) bool: which of these user ids (any type) are allowed."""
        return _isin(user_ids, self.users)

    def item_mask(self, item_ids: np.ndarray) -> np.ndarray:
        """(N,) bool: which of these item ids (any type) are allowed."""
        return _isin(item_ids, self.items)


def _ids(values: Iterable[object], key: str) -> list[str]:
    if isinstance(values, (str, bytes)):
        raise ValueError(f"allow-list {key} must be a list of ids, got the single string {values!r}")
    out = []
    for v in values:
        if v is None or isinstance(v, (dict, list, tuple, set, bool)):
            raise ValueError(f"allow-list {key} holds {v!r}: ids are strings or integers")
        if isinstance(v, float):
            if not v.is_integer():
                raise ValueError(f"allow-list {key} holds {v!r}: ids are strings or integers")
            v = int(v)
        out.append(str(v))
        if len(out) > MAX_ENTRIES:
            raise ValueError(f"allow-list {key} holds more than {MAX_ENTRIES:,} ids")
    return out


def _isin(ids: np.ndarray, allowed: frozenset[str]) -> np.ndarray:
    ids = np.asarray(ids)
    if not allowed or len(ids) == 0:
        return np.zeros(len(ids), bool)
    return np.fromiter((str(v) in allowed for v in ids), bool, len(ids))
