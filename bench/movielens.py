"""MovieLens 100K as a clean behaviour log, read from the RecBole 1.2.1 wheel's example data.

The data is fetched with ``pip download`` into a cache directory (default ``~/.cache/seqguard``)
and read straight from the wheel (a zip): nothing is extracted, and nothing lands in the
repository (the MovieLens licence forbids redistribution).

    python bench/movielens.py      # load, inject the default attack mix, print a summary
"""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from seqguard_ray.synth import AttackMix, LabeledEvents, inject_attacks

log = logging.getLogger(__name__)

RECBOLE = "recbole==1.2.1"
WHEEL_GLOB = "recbole-1.2.1-*.whl"
INTER_PATH = "recbole/dataset_example/ml-100k/ml-100k.inter"
ITEM_PATH = "recbole/dataset_example/ml-100k/ml-100k.item"
# RecBole atomic-file headers are "name:type"; these names must be present
INTER_FIELDS = {"user_id": "user_id", "item_id": "item_id", "rating": "value", "timestamp": "ts"}
ITEM_FIELDS = ("item_id", "movie_title", "class")
RATING_RANGE = (1.0, 5.0)


def fetch_wheel(cache_dir: str | Path = "~/.cache/seqguard") -> Path:
    """Path of the cached RecBole 1.2.1 wheel; ``pip download`` it first if it is missing."""
    cache = Path(cache_dir).expanduser()
    found = sorted(cache.glob(WHEEL_GLOB))
    if found:
        return found[0]
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(cache), RECBOLE]
    log.info("downloading %s into %s", RECBOLE, cache)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    found = sorted(cache.glob(WHEEL_GLOB))
    if proc.returncode != 0 or not found:
        tail = (proc.stderr or proc.stdout).strip()[-2000:]
        raise RuntimeError(f"could not download {RECBOLE} with `{' '.join(cmd)}` (exit {proc.returncode}): {tail}")
    return found[0]


def _read_atomic(zf: zipfile.ZipFile, member: str, required: tuple[str, ...]) -> pd.DataFrame:
    """A RecBole atomic file (tab-separated, header ``name:type``) with plain column names."""
    try:
        raw = zf.read(member)
    except KeyError:
        raise RuntimeError(f"{zf.filename} has no {member}: the RecBole wheel layout changed") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    header = text.split("\n", 1)[0].rstrip("\r").split("\t")
    names = [h.split(":", 1)[0] for h in header]
    missing = [r for r in required if r not in names]
    if missing or any(":" not in h for h in header):
        raise RuntimeError(
            f"unexpected header in {member}: {header}; expected 'name:type' fields including {list(required)}"
        )
    df = pd.read_csv(io.StringIO(text), sep="\t", header=0, names=names, dtype=str, keep_default_na=False,
                     quoting=3)
    return df


def load_movielens_100k(cache_dir: str | Path = "~/.cache/seqguard") -> pd.DataFrame:
    """MovieLens 100K ratings as a clean log.

    Columns: user_id (str), item_id (int64), ts (int64 unix seconds), action ("rating"),
    value (float64 rating 1-5), title ("Toy Story (1995)"), category (first genre).
    Sorted by (user_id, ts), RangeIndex.
    """
    wheel = fetch_wheel(cache_dir)
    with zipfile.ZipFile(wheel) as zf:
        inter = _read_atomic(zf, INTER_PATH, tuple(INTER_FIELDS))
        items = _read_atomic(zf, ITEM_PATH, ITEM_FIELDS)

    df = inter[list(INTER_FIELDS)].rename(columns=INTER_FIELDS)
    try:
        df["item_id"] = df["item_id"].astype(np.int64)
        df["ts"] = df["ts"].astype(np.float64).round().astype(np.int64)
        df["value"] = df["value"].astype(np.float64)
    except ValueError as exc:
        raise RuntimeError(f"unexpected values in {INTER_PATH}: {exc}") from exc
    df["user_id"] = df["user_id"].astype(str)
    df["action"] = "rating"

    items = items.drop_duplicates("item_id")
    item_ids = items["item_id"].astype(np.int64)
    year = items["release_year"] if "release_year" in items.columns else pd.Series("", index=items.index)
    title = items["movie_title"].str.strip()
    title = title.where(year.str.strip() == "", title + " (" + year.str.strip() + ")")
    genre = items["class"].str.split().str[0].fillna("unknown")
    meta = pd.DataFrame({"title": title.to_numpy(), "category": genre.to_numpy()}, index=item_ids.to_numpy())
    meta = meta.reindex(df["item_id"].to_numpy())
    no_meta = meta["title"].isna().to_numpy()
    df["title"] = np.where(no_meta, "Movie " + df["item_id"].astype(str), meta["title"].to_numpy(dtype=object))
    df["category"] = np.where(no_meta, "unknown", meta["category"].to_numpy(dtype=object))
    df["title"] = df["title"].astype(str)
    df["category"] = df["category"].astype(str)

    df = df[["user_id", "item_id", "ts", "action", "value", "title", "category"]]
    codes, _ = pd.factorize(df["user_id"], sort=True)
    order = np.lexsort((np.arange(len(df)), df["ts"].to_numpy(), codes))
    return df.take(order).reset_index(drop=True)


def movielens_with_attacks(
    mix: AttackMix = AttackMix(), seed: int = 0, *, cache_dir: str | Path = "~/.cache/seqguard",
) -> LabeledEvents:
    """MovieLens 100K with ``mix`` attacks injected (ratings 1-5, single action "rating")."""
    return inject_attacks(load_movielens_100k(cache_dir), mix=mix, seed=seed, value_range=RATING_RANGE)


def main() -> None:
    import time

    t0 = time.perf_counter()
    df = load_movielens_100k()
    t1 = time.perf_counter()
    labeled = movielens_with_attacks(AttackMix.all(0.02))
    t2 = time.perf_counter()
    print(f"load: {len(df)} ratings, {df.user_id.nunique()} users, {df.item_id.nunique()} items in {t1 - t0:.2f} s")
    print(f"inject (all types at 0.02): {int(labeled.event_injected.sum())} injected events in {t2 - t1:.2f} s")
    print(labeled.user_type.value_counts().to_string())


if __name__ == "__main__":
    main()
