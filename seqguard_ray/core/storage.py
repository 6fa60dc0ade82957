"""Where seqguard's files live: local paths and pyarrow filesystem URIs, through one resolver.

Every read and write of events, outputs, bundles, reports, campaign tables and checkpoints goes
through :func:`resolve`, which turns a location into ``(pyarrow FileSystem, path in it)``:

- a plain path (``data/events.parquet``): the local filesystem, the path made absolute (Ray
  workers do not share the driver's working directory);
- a URI (``s3://bucket/key``, ``gs://bucket/key``, ``file:///abs/path``, ``hdfs://...``):
  ``pyarrow.fs.FileSystem.from_uri``. Credentials come from the usual environment (for S3:
  ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, instance roles), and an
  S3-compatible store's endpoint from ``AWS_ENDPOINT_URL``, as boto3 and the AWS CLI read it
  (``from_uri`` honours it; the ``S3FileSystem()`` constructor does not, so nothing here builds
  one). URI query options (``?endpoint_override=...&region=...``) work too.

A location stays a string (a URI or an absolute path) wherever it travels, so it means the same
on every process and node; :func:`join` appends names to it (before a URI's query options).
"""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path, PurePosixPath

import pyarrow as pa
from pyarrow import fs


class StorageError(ValueError):
    """A location that cannot be resolved to a filesystem (bad or unsupported URI)."""


def is_uri(location: str | Path) -> bool:
    """Whether ``location`` is a URI (``scheme://...``) rather than a plain path."""
    return "://" in str(location)


def resolve(location: str | Path) -> tuple[fs.FileSystem, str]:
    """(filesystem, path in it) of a local path or a pyarrow filesystem URI (see the module doc)."""
    s = str(location)
    if not is_uri(s):
        return fs.LocalFileSystem(), os.path.abspath(os.path.expanduser(s))
    try:
        return fs.FileSystem.from_uri(s)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
        raise StorageError(f"cannot open {s!r}: {exc} (use a local path or a URI such as s3://bucket/key, "
                           f"gs://bucket/key or file:///absolute/path)") from None


def is_local(filesystem: fs.FileSystem) -> bool:
    """Whether ``filesystem`` is the local one (renames are atomic there; not on object stores)."""
    return isinstance(filesystem, fs.LocalFileSystem)


def absolute(location: str | Path) -> str:
    """``location`` as it means the same on every process: a URI unchanged, a path made absolute."""
    s = str(location)
    return s if is_uri(s) else os.path.abspath(os.path.expanduser(s))


def join(base: str | Path, *names: str) -> str:
    """``base`` / names: a path joined, or names appended to a URI's path (before its ``?query``)."""
    s = str(base)
    if not is_uri(s):
        return os.path.join(s, *names)
    head, q, query = s.partition("?")
    return "/".join([head.rstrip("/"), *(n.strip("/") for n in names)]) + q + query


def name(location: str | Path) -> str:
    """The last part of a location's path (``s3://b/x/model?region=r`` -> ``model``)."""
    return str(location).partition("?")[0].rstrip("/").rsplit("/", 1)[-1] if is_uri(location) \
        else os.path.basename(os.path.normpath(str(location)))


def suffixes(location: str | Path) -> list[str]:
    """The extensions of a location's name (``s3://b/ev.csv.gz`` -> ``[".csv", ".gz"]``)."""
    return PurePosixPath(name(location)).suffixes


def suffix(location: str | Path) -> str:
    """The last extension of a location's name (``""`` when none)."""
    return PurePosixPath(name(location)).suffix


def sibling(location: str | Path, new_name: str) -> str:
    """The location named ``new_name`` in the same folder as ``location``."""
    s = str(location)
    if not is_uri(s):
        return os.path.join(os.path.dirname(os.path.abspath(s)), new_name)
    head, q, query = s.partition("?")
    return head.rstrip("/").rsplit("/", 1)[0] + "/" + new_name + q + query


def info(location: str | Path) -> fs.FileInfo:
    """The location's FileInfo (``type`` NotFound when nothing is there)."""
    filesystem, path = resolve(location)
    return filesystem.get_file_info(path)


def exists(location: str | Path) -> bool:
    return info(location).type != fs.FileType.NotFound


def is_dir(location: str | Path) -> bool:
    """A directory, or on an object store a prefix that holds objects."""
    return info(location).type == fs.FileType.Directory


def is_file(location: str | Path) -> bool:
    return info(location).type == fs.FileType.File


def list_files(location: str | Path) -> list[tuple[str, int]]:
    """(location, size) of every file under a directory, recursively, sorted by location."""
    filesystem, root = resolve(location)
    found = filesystem.get_file_info(fs.FileSelector(root, recursive=True, allow_not_found=True))
    prefix = root.rstrip("/") + "/"
    return sorted((join(location, f.path[len(prefix):]), f.size) for f in found
                  if f.type == fs.FileType.File and f.path.startswith(prefix))


def relative_parts(location: str | Path, root: str | Path) -> list[str]:
    """The folder names between ``root`` and the file ``location`` (both as :func:`list_files` gives)."""
    loc, base = str(location).partition("?")[0], str(root).partition("?")[0].rstrip("/\\")
    if not is_uri(loc):
        return list(Path(loc).parent.relative_to(base).parts)
    rest = loc[len(base):].strip("/")
    return rest.split("/")[:-1] if rest else []


def subdirs(location: str | Path) -> list[str]:
    """The names of the directories right below ``location`` (none when it does not exist)."""
    filesystem, root = resolve(location)
    found = filesystem.get_file_info(fs.FileSelector(root, allow_not_found=True))
    return sorted(f.base_name for f in found if f.type == fs.FileType.Directory)


def move(src: str | Path, dst: str | Path) -> None:
    """Rename ``src`` to ``dst`` on one filesystem (atomic on a local disk; a copy on an object store)."""
    filesystem, a = resolve(src)
    filesystem.move(a, resolve(dst)[1])


def _open(location: str | Path, how: str, **kw):
    filesystem, path = resolve(location)
    try:
        return getattr(filesystem, how)(path, **kw)
    except FileNotFoundError:
        raise FileNotFoundError(f"{location} does not exist") from None


def open_input_file(location: str | Path):
    """A random-access file (Parquet); FileNotFoundError names ``location``."""
    return _open(location, "open_input_file")


def open_input_stream(location: str | Path, *, decompress: bool = True):
    """A sequential stream (``decompress``: by the name's extension, ``.gz``); FileNotFoundError
    names ``location``."""
    return _open(location, "open_input_stream", compression="detect" if decompress else None)


def read_bytes(location: str | Path) -> bytes:
    """The file's bytes as stored."""
    with open_input_stream(location, decompress=False) as f:
        return f.read()


def read_text(location: str | Path) -> str:
    return read_bytes(location).decode("utf-8")


def make_dirs(location: str | Path) -> None:
    """Create a local directory and its parents; on an object store nothing (a prefix exists once
    an object is written below it; no empty marker objects are left behind)."""
    filesystem, path = resolve(location)
    if is_local(filesystem):
        filesystem.create_dir(path, recursive=True)


def write_bytes(location: str | Path, data: bytes, *, atomic: bool = False) -> None:
    """Write a file (local parents created). ``atomic``: readers see the old content or the new,
    never part of it: a local file is written beside and renamed over; one object store PUT is
    atomic by itself."""
    filesystem, path = resolve(location)
    local = is_local(filesystem)
    if local:
        filesystem.create_dir(os.path.dirname(path), recursive=True)
    target = path
    if atomic and local:
        target = os.path.join(os.path.dirname(path),
                              f".{os.path.basename(path)}.{os.getpid()}.{threading.get_ident()}.{uuid.uuid4().hex[:8]}.tmp")
    with filesystem.open_output_stream(target, compression=None) as f:
        f.write(data)
    if target != path:
        filesystem.move(target, path)


def write_text(location: str | Path, text: str, *, atomic: bool = False) -> None:
    write_bytes(location, text.encode("utf-8"), atomic=atomic)


def delete(location: str | Path) -> None:
    """Remove a file or a directory tree; nothing there is fine."""
    filesystem, path = resolve(location)
    kind = filesystem.get_file_info(path).type
    if kind == fs.FileType.File:
        filesystem.delete_file(path)
    elif kind == fs.FileType.Directory:
        filesystem.delete_dir(path)
