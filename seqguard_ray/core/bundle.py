"""The model bundle: one directory that training writes and every way of running reads.

```
manifest.json        format version, package and library versions, training config, repair policy,
                     vocabulary, thresholds, training metrics, sha256 of every other file
encoder.safetensors  encoder weights (config in the manifest)
state.npz            item statistics and detector state, the Isolation Forest's trees included, as
                     plain arrays (loaded with allow_pickle=False)
```
Nothing is unpickled. Loading checks the format version and every file's hash, so a truncated or
tampered bundle gets a clear :class:`BundleError`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .features import EVENT_FEATURES, USER_FEATURES

log = logging.getLogger(__name__)

FORMAT_VERSION = "11"  # 11: user.length_trend (flagged heavy users judged at a typical length); 10: no "unknown_item_share" (unknown items carry no item statistics); 9: "part_copy" and the partial-copy detector (stats.neighbours.miss_rate, stats.neighbours.part_source, user.cal.part_copy, "part_copy_column"); 8: the replay detector (user.cal.replay, "replay_column"); 7: "copy_overlap" and the copy detector (stats.neighbours.span, user.cal.copy), detectors per short-history length (short<i>.*); 6: leave-cluster-out kNN (user.knn_centroids, user.knn_groups), "neighbour_lift" (stats.neighbours.*); 5: kNN detector in place of ECOD (user.knn_ref, user.tail_ref); 4: event.residual_check; 3: Isolation Forest as arrays in state.npz (was iforest.skops); 2: "catalogue_order"
MANIFEST = "manifest.json"
FILES = ("encoder.safetensors", "state.npz")


class BundleError(ValueError):
    """A model bundle that is missing, corrupt, tampered with or of another format version."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _versions() -> dict[str, str]:
    import sklearn
    import torch
    import transformers

    from .. import __version__
    return {"seqguard": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "scikit-learn": sklearn.__version__, "numpy": np.__version__}


def _detector_arrays(ud, prefix: str) -> dict[str, np.ndarray]:
    return {
        f"{prefix}center": ud.center_, f"{prefix}scale": ud.scale_, f"{prefix}tail_ref": ud.tail_ref_,
        f"{prefix}knn_ref": ud.knn_ref_,
        **({} if ud.knn_centroids_ is None else {f"{prefix}knn_centroids": ud.knn_centroids_, f"{prefix}knn_groups": ud.knn_groups_}),
        f"{prefix}combined": ud.combined_.reference, **ud.iforest_.to_arrays(f"{prefix}iforest."),
        **{f"{prefix}cal.{name}": cal.reference for name, cal in ud.calibrators_.items()},
    }


def _detector_meta(ud) -> dict:
    return {"target_fpr": ud.target_fpr, "threshold": ud.threshold_, "seed": ud.seed,
            "encoder_columns": list(ud.encoder_columns), "copy_column": ud.copy_column,
            "part_copy_column": ud.part_copy_column, "replay_column": ud.replay_column, "n_trimmed": ud.n_trimmed_}


def _load_detectors(p: Path, a, d: dict, prefix: str):
    """A UserDetectors from state.npz arrays under ``prefix`` and its manifest entry ``d``, checked."""
    from .detectors import DETECTORS, Calibrator, FlatForest, UserDetectors

    ud = UserDetectors(target_fpr=d["target_fpr"], seed=d["seed"],
                       encoder_columns=tuple(d["encoder_columns"]), copy_column=d["copy_column"],
                       part_copy_column=d["part_copy_column"], replay_column=d["replay_column"])
    ud.center_, ud.scale_, ud.tail_ref_ = a[f"{prefix}center"], a[f"{prefix}scale"], a[f"{prefix}tail_ref"]
    if ud.center_.shape != (len(USER_FEATURES),):
        raise BundleError(f"model bundle {p}: its {prefix[:-1]} detectors use {ud.center_.shape} user features, "
                          f"this seqguard computes {len(USER_FEATURES)}: retrain with this version")
    ud.knn_ref_ = a[f"{prefix}knn_ref"]
    n_ens = len(ud.ensemble_columns)
    if ud.knn_ref_.ndim != 2 or ud.knn_ref_.shape[1] != n_ens or len(ud.knn_ref_) < 2:
        raise BundleError(f"model bundle {p}: its kNN reference has shape {ud.knn_ref_.shape}, "
                          f"not (users >= 2, {n_ens})")
    if f"{prefix}knn_centroids" in a.files:
        ud.knn_centroids_, ud.knn_groups_ = a[f"{prefix}knn_centroids"], a[f"{prefix}knn_groups"]
        K = len(ud.knn_centroids_)
        if (ud.knn_centroids_.shape != (K, n_ens) or ud.knn_groups_.shape != (len(ud.knn_ref_),)
                or K < 2 or ud.knn_groups_.min() < 0 or ud.knn_groups_.max() >= K):
            raise BundleError(f"model bundle {p}: its kNN groups do not fit its kNN reference "
                              f"({ud.knn_centroids_.shape} centroids, {ud.knn_groups_.shape} labels)")
    ud.calibrators_ = {k[len(prefix) + 4:]: Calibrator(a[k]) for k in a.files if k.startswith(f"{prefix}cal.")}
    if set(ud.calibrators_) != set(DETECTORS):
        raise BundleError(f"model bundle {p}: its detectors are {sorted(ud.calibrators_)}, this seqguard runs {sorted(DETECTORS)}")
    ud.combined_ = Calibrator(a[f"{prefix}combined"])
    ud.threshold_, ud.n_trimmed_ = float(d["threshold"]), int(d["n_trimmed"])
    ud.iforest_ = FlatForest.from_arrays(a, f"{prefix}iforest.")
    return ud


def save_bundle(sg, path: str | Path) -> Path:
    """Write a fitted SeqGuard to directory ``path`` (created; existing bundle files replaced)."""
    from safetensors.torch import save_file

    sg._check_fitted()
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sg.model.state_dict().items()}, str(out / "encoder.safetensors"))
    ud, ed, st = sg.user_detectors, sg.event_detector, sg.stats
    arrays = {
        "stats.log_count": st.log_count, "stats.value_mean": st.value_mean, "stats.taste": st.taste,
        "stats.value_std": np.array(st.value_std), "stats.main_action": np.array(st.main_action),
        "stats.value_range": np.array([st.value_lo, st.value_hi]),
        **({} if st.neighbours is None else {
            "stats.neighbours.indptr": st.neighbours.ref.indptr.astype(np.int64),
            "stats.neighbours.indices": st.neighbours.ref.indices.astype(np.int64),
            "stats.neighbours.null": np.stack([st.neighbours.sizes, st.neighbours.null]),
            "stats.neighbours.span": st.neighbours.span,
            **({} if st.neighbours.miss_sizes is None else {
                "stats.neighbours.miss_rate": np.stack([st.neighbours.miss_sizes, st.neighbours.miss_rate])}),
            **({} if st.neighbours.part_source is None else {"stats.neighbours.part_source": st.neighbours.part_source})}),
        **_detector_arrays(ud, "user."),
        **{k: v for i, (_, sd) in enumerate(sg.short_detectors) for k, v in _detector_arrays(sd, f"short{i}.").items()},
        "event.ref": ed.ref_, "event.calibrator": ed.calibrator_.reference,
        "event.residual_check": sg.residual_check.coef,
        "user.length_trend": sg.length_trend.coef,
        "vocab.item_counts": sg.vocab.item_counts,
    }
    np.savez(out / "state.npz", **arrays)
    manifest = {
        "format_version": FORMAT_VERSION,
        "versions": _versions(),
        "train_config": asdict(sg.config),
        "encoder_config": sg.model.config.to_dict(),
        "repair_policy": asdict(sg.policy),
        "detectors": {**_detector_meta(ud), "user_features": list(USER_FEATURES), "event_features": list(EVENT_FEATURES),
                      "main_stratum": sg.main_stratum,
                      "short": [{**_detector_meta(sd), "min_events": lo} for lo, sd in sg.short_detectors]},
        "vocab": {"items": sg.vocab.items, "actions": sg.vocab.actions},
        "metrics": sg.metrics,
        "files": {f: _sha256(out / f) for f in FILES},
    }
    manifest["model_version"] = hashlib.sha256(json.dumps(manifest["files"], sort_keys=True).encode()).hexdigest()[:12]
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, default=_json_default))
    log.info("wrote model bundle %s (version %s)", out, manifest["model_version"])
    return out


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def read_manifest(path: str | Path) -> dict:
    """The bundle's manifest, after checking the format version and every file's hash."""
    p = Path(path)
    if not p.is_dir():
        raise BundleError(f"model bundle {p} does not exist or is not a directory")
    mf = p / MANIFEST
    if not mf.is_file():
        raise BundleError(f"model bundle {p} has no {MANIFEST}: not a seqguard bundle, or training did not finish")
    try:
        manifest = json.loads(mf.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"model bundle {p}: {MANIFEST} is corrupt ({exc})") from exc
    if not isinstance(manifest, dict):
        raise BundleError(f"model bundle {p}: {MANIFEST} is not a JSON object")
    fv = manifest.get("format_version")
    if fv != FORMAT_VERSION:
        raise BundleError(f"model bundle {p} has format version {fv!r}; this seqguard reads version {FORMAT_VERSION!r}: retrain or use a matching seqguard")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise BundleError(f"model bundle {p}: {MANIFEST} has no 'files' checksums (got {type(files).__name__})")
    for f in FILES:
        fp = p / f
        if not fp.is_file():
            raise BundleError(f"model bundle {p} is missing {f}")
        if files.get(f) != _sha256(fp):
            raise BundleError(f"model bundle {p}: {f} does not match the manifest's checksum (corrupt or tampered with)")
    return manifest


def _neighbours(p: Path, a, n_items: int):
    """The neighbour reference (binary item sets, null curve) from state.npz, checked; None if absent."""
    import scipy.sparse as sp

    from .features import Neighbours

    if "stats.neighbours.indptr" not in a.files:
        return None
    indptr, indices, null = a["stats.neighbours.indptr"], a["stats.neighbours.indices"], a["stats.neighbours.null"]
    span = a["stats.neighbours.span"]
    if (indptr.ndim != 1 or len(indptr) < 2 or indptr[0] != 0 or indptr[-1] != len(indices)
            or (np.diff(indptr) < 0).any() or (len(indices) and (indices.min() < 0 or indices.max() >= n_items))
            or null.ndim != 2 or len(null) != 2 or span.shape != (len(indptr) - 1, 2)):
        raise BundleError(f"model bundle {p}: its neighbour reference does not fit its vocabulary of {n_items} ids")
    ref = sp.csr_matrix((np.ones(len(indices)), indices, indptr), shape=(len(indptr) - 1, n_items))
    miss = a["stats.neighbours.miss_rate"] if "stats.neighbours.miss_rate" in a.files else None
    if miss is not None and (miss.ndim != 2 or len(miss) != 2):
        raise BundleError(f"model bundle {p}: its neighbour miss-rate curve has shape {miss.shape}, not (2, sizes)")
    source = a["stats.neighbours.part_source"].astype(bool) if "stats.neighbours.part_source" in a.files else None
    try:
        return Neighbours(ref, null[0], null[1], span, *((None, None) if miss is None else (miss[0], miss[1])), source)
    except ValueError as e:
        raise BundleError(f"model bundle {p}: {e}") from None


def load_bundle(path: str | Path):
    """Read a bundle written by :func:`save_bundle` into a ready SeqGuard."""
    from safetensors.torch import load_file

    from .detectors import Calibrator, EventDetector, LengthTrend, ResidualCheck
    from .pipeline import SeqGuard, TrainConfig
    from .features import ItemStats, catalogue_rank
    from .encoder import SeqGuardConfig, SeqGuardEncoder
    from .repair import RepairPolicy
    from .tokens import N_SPECIAL, Vocab

    p = Path(path)
    m = read_manifest(p)
    try:
        sg = SeqGuard(TrainConfig.from_dict(m["train_config"]), RepairPolicy(**m["repair_policy"]))
        a = np.load(p / "state.npz", allow_pickle=False)
        sg.vocab = Vocab(m["vocab"]["items"], m["vocab"]["actions"], a["vocab.item_counts"])
        # the manifest is not covered by the checksums: its vocabulary must fit the checked arrays
        enc = m["encoder_config"]
        sizes = {len(sg.vocab.item_counts) + N_SPECIAL, len(a["stats.log_count"]), enc["n_items"]}
        if sizes != {sg.vocab.n_items} or sg.vocab.n_actions != enc["n_actions"]:
            raise BundleError(f"model bundle {p}: the vocabulary in {MANIFEST} ({len(sg.vocab.items)} items, "
                              f"{len(sg.vocab.actions)} actions) does not fit the encoder and state.npz (edited manifest?)")
        sg.stats = ItemStats(a["stats.log_count"], a["stats.value_mean"], float(a["stats.value_std"]),
                             a["stats.taste"], int(a["stats.main_action"]), *map(float, a["stats.value_range"]),
                             catalogue_rank(sg.vocab.items, sg.vocab.n_items),
                             _neighbours(p, a, sg.vocab.n_items))
        cfg = {k: v for k, v in m["encoder_config"].items()}
        sg.model = SeqGuardEncoder(SeqGuardConfig(**cfg))
        missing, unexpected = sg.model.load_state_dict(load_file(str(p / "encoder.safetensors")), strict=False)
        if missing or unexpected:
            raise BundleError(f"model bundle {p}: encoder weights do not fit its config (missing {missing[:3]}, unexpected {unexpected[:3]})")
        sg.model.eval()
        d = m["detectors"]
        # feature lists by name; each user detector's arrays are checked against them as it loads
        for kind, names in (("user", USER_FEATURES), ("event", EVENT_FEATURES)):
            if d.get(f"{kind}_features") != list(names) or (kind == "event" and a["event.ref"].shape[-1] != len(names)):
                raise BundleError(f"model bundle {p}: its detectors use other {kind} features than this seqguard "
                                  f"computes ({len(d.get(f'{kind}_features') or [])} vs {len(names)}): retrain with this version")
        sg.user_detectors = _load_detectors(p, a, d, "user.")
        sg.short_detectors = [(int(sd["min_events"]), _load_detectors(p, a, sd, f"short{i}.")) for i, sd in enumerate(d["short"])]
        sg.main_stratum = int(d["main_stratum"])
        los = [lo for lo, _ in sg.short_detectors] + [sg.main_stratum]
        if any(b <= a for a, b in zip(los, los[1:])) or los[0] < 1:
            raise BundleError(f"model bundle {p}: its history-length strata {los} are not increasing from 1")
        ed = EventDetector()
        ed.ref_, ed.calibrator_ = a["event.ref"], Calibrator(a["event.calibrator"])
        sg.event_detector = ed
        sg.residual_check = ResidualCheck(a["event.residual_check"])
        sg.length_trend = LengthTrend(a["user.length_trend"])
        if len(sg.length_trend.coef) != len(USER_FEATURES) + 1:
            raise BundleError(f"model bundle {p}: its length trend has {len(sg.length_trend.coef) - 1} feature slopes "
                              f"for {len(USER_FEATURES)} user features")
        sg.metrics = m.get("metrics", {})
        sg.model_version = m.get("model_version", "")
    except BundleError:
        raise
    except (KeyError, TypeError, ValueError, OSError, RuntimeError) as exc:
        raise BundleError(f"model bundle {p} cannot be read: {type(exc).__name__}: {exc}") from exc
    return sg
