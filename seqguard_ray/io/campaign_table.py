"""Publishing a campaign table next to a model bundle, and reading the latest one.

``seqguard score`` writes OUT/campaigns.parquet and OUT/items.parquet; :func:`publish` validates
them and copies them into the bundle:

```
MODEL/campaigns/CURRENT.json         {"version": ..., ...}: which table is served (replaced atomically)
MODEL/campaigns/<version>/           campaigns.parquet, items.parquet (suspicious rows), table.json
```

The version is a hash of the table's content (publishing the same table again changes nothing).
A new version is written to a temporary directory, renamed into place (on an object store, which
has no rename: written in place, table.json last), and only then named by CURRENT.json (replaced
atomically: a rename, or one PUT), so a reader sees the old table or the new one, never half of one;
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
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow.fs import FileType

from ..core import storage
from ..core.bundle import file_sha256, read_manifest
from ..core.campaigns.published import CampaignTable, CampaignTableError

log = logging.getLogger(__name__)

DIR = "campaigns"
POINTER = "CURRENT.json"
META = "table.json"
FILES = ("campaigns.parquet", "items.parquet")
MAX_FILE_BYTES = 1 << 30   # each Parquet file
KEEP = 3                   # published versions kept (the current one and the latest before it)


def _check_file(path: str) -> None:
    found = storage.info(path)
    if found.type != FileType.File:
        raise CampaignTableError(f"{path} does not exist: run `seqguard score` with a model that has the "
                                 f"campaign stage (it writes campaigns.parquet and items.parquet)")
    size = found.size
    if size > MAX_FILE_BYTES:
        raise CampaignTableError(f"{path} is {size:,} bytes, over the limit of {MAX_FILE_BYTES:,}")
    with storage.open_input_file(path) as f:
        head = f.read(4)
        f.seek(max(size - 4, 0))
        tail = f.read(4)
    if size < 12 or head != b"PAR1" or tail != b"PAR1":
        raise CampaignTableError(f"{path} is not a Parquet file")


def _read(path: str, columns: tuple[str, ...], **kw) -> pd.DataFrame:
    _check_file(path)
    filesystem, where = storage.resolve(path)
    try:
        have = pq.read_schema(where, filesystem=filesystem).names
        missing = [c for c in columns if c not in have]
        if missing:
            raise CampaignTableError(f"{path} is missing column(s) {missing}; has {have}")
        return pq.read_table(where, filesystem=filesystem, columns=list(columns), **kw).to_pandas()
    except CampaignTableError:
        raise
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise CampaignTableError(f"{path} cannot be read as Parquet: {exc}") from None


def read_table(folder: str | Path, *, version: str = "") -> CampaignTable:
    """The campaign table in ``folder`` (campaigns.parquet + items.parquet), validated."""
    from ..core.campaigns.published import CAMPAIGN_COLUMNS, ITEM_COLUMNS

    campaigns = _read(storage.join(folder, "campaigns.parquet"), CAMPAIGN_COLUMNS)
    items = _read(storage.join(folder, "items.parquet"), ITEM_COLUMNS, filters=[("suspicious", "==", True)])
    try:
        return CampaignTable.from_frames(campaigns, items, version=version)
    except CampaignTableError as exc:
        raise CampaignTableError(f"{folder}: {exc}") from None


def publish(out: str | Path, model_dir: str | Path) -> dict:
    """Validate OUT/campaigns.parquet + OUT/items.parquet and make them the table served with
    the bundle ``model_dir``; returns the published table's metadata (version, counts). Either
    may be a local path or a URI (core.storage)."""
    src, model = storage.absolute(out), storage.absolute(model_dir)
    manifest = read_manifest(model)  # a bad bundle fails before anything is written
    table = read_table(src)
    hashes = {f: file_sha256(storage.join(src, f)) for f in FILES}
    version = hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()[:12]
    root = storage.join(model, DIR)
    meta = {"version": version, "published_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "source": src, "model_version": manifest.get("model_version", ""),
            "campaigns": table.n_campaigns, "members": table.n_members, "targets": table.n_targets, "files": hashes}
    dest = storage.join(root, version)
    if not storage.is_file(storage.join(dest, META)):
        # local: written to a temporary folder, then renamed into place; an object store has no
        # rename, so the version is written in place with table.json last: nothing names it
        # before CURRENT.json is replaced below, and a version without table.json is unfinished
        local = storage.is_local(storage.resolve(root)[0])
        tmp = storage.join(root, f".tmp-{version}-{os.getpid()}") if local else dest
        storage.delete(tmp)
        storage.write_bytes(storage.join(tmp, "campaigns.parquet"), storage.read_bytes(storage.join(src, "campaigns.parquet")))
        # only the suspicious rows: what serving reads (the whole items table can be every item of a log)
        filesystem, items_path = storage.resolve(storage.join(src, "items.parquet"))
        items = pq.read_table(items_path, filesystem=filesystem, filters=[("suspicious", "==", True)])
        buf = pa.BufferOutputStream()
        pq.write_table(items, buf)
        storage.write_bytes(storage.join(tmp, "items.parquet"), buf.getvalue().to_pybytes())
        meta["files"] = {f: file_sha256(storage.join(tmp, f)) for f in FILES}
        storage.write_text(storage.join(tmp, META), json.dumps(meta, indent=1))
        if tmp != dest:
            storage.delete(dest)
            storage.move(tmp, dest)
    else:
        meta = {**json.loads(storage.read_text(storage.join(dest, META))), "published_at": meta["published_at"]}
    storage.write_text(storage.join(root, POINTER), json.dumps({"version": version, "published_at": meta["published_at"]}),
                       atomic=True)
    _prune(root, version)
    log.info("published campaign table %s (%d campaigns, %d members, %d targets) with model %s",
             version, table.n_campaigns, table.n_members, table.n_targets, model)
    return meta


def _prune(root: str, current: str) -> None:
    """Keep the KEEP latest finished versions (by their table.json's time); unfinished ones are
    left to whoever is writing them."""
    done = [(storage.info(storage.join(root, d, META)).mtime, d) for d in storage.subdirs(root)
            if not d.startswith(".") and d != current]
    old = sorted(((t, d) for t, d in done if t is not None), reverse=True)
    for _, d in old[KEEP - 1:]:
        storage.delete(storage.join(root, d))


def current_meta(model_dir: str | Path) -> dict | None:
    """The served table's table.json (version, published_at, counts), or None when none is published."""
    root = storage.join(model_dir, DIR)
    pointer = storage.join(root, POINTER)
    if not storage.is_file(pointer):
        return None
    try:
        version = json.loads(storage.read_text(pointer))["version"]
        meta = json.loads(storage.read_text(storage.join(root, str(version), META)))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CampaignTableError(f"{pointer} or the table it names cannot be read ({exc}): publish the table again") from None
    return meta


def read_current(model_dir: str | Path) -> CampaignTable | None:
    """The table published with ``model_dir`` (None: none), checked against its table.json."""
    meta = current_meta(model_dir)
    if meta is None:
        return None
    folder = storage.join(model_dir, DIR, meta["version"])
    for f, want in (meta.get("files") or {}).items():
        if f in FILES and file_sha256(storage.join(folder, f)) != want:
            raise CampaignTableError(f"{storage.join(folder, f)} does not match {META}'s checksum (corrupt or tampered with)")
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
        self.model_dir = str(model_dir)
        self.check_s = check_s
        self._lock = threading.Lock()
        self._checked = time.monotonic()
        self._seen = _Seen(self._stat(), read_current(self.model_dir))

    def _stat(self) -> tuple | bytes | None:
        """What tells a new CURRENT.json: on a local disk its inode, time and size; on an object
        store its content (one small GET: an object's time has one-second steps)."""
        pointer = storage.join(self.model_dir, DIR, POINTER)
        try:
            if storage.is_uri(pointer):
                return storage.read_bytes(pointer)
            st = os.stat(pointer)
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
