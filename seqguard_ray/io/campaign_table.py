"""Publishing a campaign table next to a model bundle, and reading the latest one.

``seqguard score`` writes OUT/campaigns.parquet and OUT/items.parquet; :func:`publish` validates
them and copies them into the bundle:

```
MODEL/campaigns/CURRENT.json         {"version": ..., ...}: which table is served (replaced atomically)
MODEL/campaigns/<version>/           campaigns.parquet, items.parquet (suspicious rows), table.json
```

The version is a hash of the table's content (publishing the same table again changes nothing).
A new version is written to a temporary directory, renamed into place, and only then named by
CURRENT.json (``os.replace``), so a reader sees the old table or the new one, never half of one;
the previous versions are kept a while for readers that read CURRENT.json just before a swap.
Parquet only (read with pyarrow, never unpickled); files over :data:`MAX_FILE_BYTES` are refused.
:class:`CampaignWatch` is what a serving process holds: the table loaded with the bundle, swapped
when CURRENT.json changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..core.bundle import file_sha256, read_manifest
from ..core.campaigns.published import CampaignTable, CampaignTableError

log = logging.getLogger(__name__)

DIR = "campaigns"
POINTER = "CURRENT.json"
META = "table.json"
FILES = ("campaigns.parquet", "items.parquet")
MAX_FILE_BYTES = 1 << 30   # each Parquet file
KEEP = 3                   # published versions kept (the current one and the latest before it)


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise CampaignTableError(f"{path} does not exist: run `seqguard score` with a model that has the "
                                 f"campaign stage (it writes campaigns.parquet and items.parquet)")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise CampaignTableError(f"{path} is {size:,} bytes, over the limit of {MAX_FILE_BYTES:,}")
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(max(size - 4, 0))
        tail = f.read(4)
    if size < 12 or head != b"PAR1" or tail != b"PAR1":
        raise CampaignTableError(f"{path} is not a Parquet file")


def _read(path: Path, columns: tuple[str, ...], **kw) -> pd.DataFrame:
    _check_file(path)
    try:
        have = pq.read_schema(path).names
        missing = [c for c in columns if c not in have]
        if missing:
            raise CampaignTableError(f"{path} is missing column(s) {missing}; has {have}")
        return pq.read_table(path, columns=list(columns), **kw).to_pandas()
    except CampaignTableError:
        raise
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise CampaignTableError(f"{path} cannot be read as Parquet: {exc}") from None


def read_table(folder: str | Path, *, version: str = "") -> CampaignTable:
    """The campaign table in ``folder`` (campaigns.parquet + items.parquet), validated."""
    from ..core.campaigns.published import CAMPAIGN_COLUMNS, ITEM_COLUMNS

    p = Path(folder)
    campaigns = _read(p / "campaigns.parquet", CAMPAIGN_COLUMNS)
    items = _read(p / "items.parquet", ITEM_COLUMNS, filters=[("suspicious", "==", True)])
    try:
        return CampaignTable.from_frames(campaigns, items, version=version)
    except CampaignTableError as exc:
        raise CampaignTableError(f"{p}: {exc}") from None


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def publish(out: str | Path, model_dir: str | Path) -> dict:
    """Validate OUT/campaigns.parquet + OUT/items.parquet and make them the table served with
    the bundle ``model_dir``; returns the published table's metadata (version, counts)."""
    src, model = Path(out), Path(model_dir)
    manifest = read_manifest(model)  # a bad bundle fails before anything is written
    table = read_table(src)
    hashes = {f: file_sha256(src / f) for f in FILES}
    version = hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()[:12]
    root = model / DIR
    root.mkdir(exist_ok=True)
    meta = {"version": version, "published_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "source": str(src.resolve()), "model_version": manifest.get("model_version", ""),
            "campaigns": table.n_campaigns, "members": table.n_members, "targets": table.n_targets, "files": hashes}
    dest = root / version
    if not (dest / META).is_file():
        tmp = root / f".tmp-{version}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        shutil.copyfile(src / "campaigns.parquet", tmp / "campaigns.parquet")
        # only the suspicious rows: what serving reads (the whole items table can be every item of a log)
        items = pq.read_table(src / "items.parquet", filters=[("suspicious", "==", True)])
        pq.write_table(items, tmp / "items.parquet")
        meta["files"] = {f: file_sha256(tmp / f) for f in FILES}
        (tmp / META).write_text(json.dumps(meta, indent=1))
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    else:
        meta = {**json.loads((dest / META).read_text()), "published_at": meta["published_at"]}
    _write_json(root / POINTER, {"version": version, "published_at": meta["published_at"]})
    _prune(root, version)
    log.info("published campaign table %s (%d campaigns, %d members, %d targets) with model %s",
             version, table.n_campaigns, table.n_members, table.n_targets, model)
    return meta


def _prune(root: Path, current: str) -> None:
    old = sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and d.name != current),
                 key=lambda d: d.stat().st_mtime, reverse=True)
    for d in old[KEEP - 1:]:
        shutil.rmtree(d, ignore_errors=True)


def current_meta(model_dir: str | Path) -> dict | None:
    """The served table's table.json (version, published_at, counts), or None when none is published."""
    root = Path(model_dir) / DIR
    pointer = root / POINTER
    if not pointer.is_file():
        return None
    try:
        version = json.loads(pointer.read_text())["version"]
        meta = json.loads((root / str(version) / META).read_text())
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CampaignTableError(f"{pointer} or the table it names cannot be read ({exc}): publish the table again") from None
    return meta


def read_current(model_dir: str | Path) -> CampaignTable | None:
    """The table published with ``model_dir`` (None: none), checked against its table.json."""
    meta = current_meta(model_dir)
    if meta is None:
        return None
    folder = Path(model_dir) / DIR / meta["version"]
    for f, want in (meta.get("files") or {}).items():
        if f in FILES and file_sha256(folder / f) != want:
            raise CampaignTableError(f"{folder / f} does not match {META}'s checksum (corrupt or tampered with)")
    return read_table(folder, version=meta["version"])


@dataclass
class _Seen:
    stat: tuple | None
    table: CampaignTable | None


class CampaignWatch:
    """The campaign table of a bundle for a serving process: loaded at construction (a broken
    table raises :class:`CampaignTableError`), then re-read when CURRENT.json changes, looked at
    at most every ``check_s`` seconds. A table that fails to load later is logged and the one
    being served is kept. Thread-safe."""

    def __init__(self, model_dir: str | Path, *, check_s: float = 1.0):
        self.model_dir = Path(model_dir)
        self.check_s = check_s
        self._lock = threading.Lock()
        self._checked = time.monotonic()
        self._seen = _Seen(self._stat(), read_current(self.model_dir))

    def _stat(self) -> tuple | None:
        try:
            st = os.stat(self.model_dir / DIR / POINTER)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def current(self) -> CampaignTable | None:
        """The table to apply now (None: none published)."""
        now = time.monotonic()
        if now - self._checked < self.check_s:
            return self._seen.table
        with self._lock:
            self._checked = now
            stat = self._stat()
            if stat != self._seen.stat:
                try:
                    table = read_current(self.model_dir)
                    self._seen = _Seen(stat, table)
                    log.info("serving campaign table %s from %s", table.version if table else "(none)", self.model_dir)
                except CampaignTableError as exc:
                    log.error("keeping campaign table %s: the new one cannot be served: %s",
                              self._seen.table.version if self._seen.table else "(none)", exc)
                    self._seen = _Seen(stat, self._seen.table)
            return self._seen.table
