"""The model bundle: one directory that training writes and every way of running reads, on a local
disk or an object store (a location :mod:`~seqguard_ray.core.storage` resolves).

```
manifest.json        format version, package and library versions, training config, repair policy,
                     each stage's metadata (vocabulary, encoder config, detectors with thresholds),
                     training metrics, sha256 of every other file
encoder.safetensors  the Encoder stage's arrays (weights)
state.npz            every other stage's arrays (loaded with allow_pickle=False)
```
Each stage writes ``to_state() -> (arrays, meta)`` and is rebuilt with ``from_state(arrays, meta)``;
state.npz holds the arrays under the stage's prefix (:func:`~seqguard_ray.core.stage.nest`):
``vocab.*``, ``stats.*`` (ItemStats), ``event.*`` (EventDetector), ``user.*`` and ``short<i>.*``
(LengthStrata: the main stratum's and each shorter one's UserDetectors), and the Explainer's
``event.residual_check`` and ``user.length_trend`` (names kept from format 11, so bundles of that
format read unchanged), and the campaign stage's ``campaigns.*`` (format 12; its scalars in the
manifest's ``campaigns``) and the change-point stage's ``changepoint.*`` (format 12; manifest
``changepoint``; absent: scored with the best taste segments, as format 11). The drift reference
(:mod:`~seqguard_ray.core.drift`) is the manifest's ``drift`` object, plain JSON, no arrays: added
within format 12 (an optional key; a bundle without one loads with ``drift`` None and reports "no
reference"; an older seqguard ignores it). A format-11 bundle loads with the campaign stage off
(``config.campaigns`` False): it has no reference to calibrate one. Nothing is unpickled. Loading checks the format version and every file's
hash, so a truncated or tampered bundle gets a clear :class:`BundleError`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from . import storage
from .campaigns import CampaignDetector
from .changepoint import ChangePoint
from .config import TrainConfig
from .drift import DriftReference
from .encoder import Encoder
from .event_detector import EventDetector
from .explain import Explainer
from .features import EVENT_FEATURES, USER_FEATURES, ItemStats
from .repair import RepairPolicy
from .stage import nest, unnest
from .strata import LengthStrata
from .tokens import N_SPECIAL, Vocab

log = logging.getLogger(__name__)

FORMAT_VERSION = "12"  # bump when an array name or manifest key changes meaning (history: docs/decisions.md)
READABLE = ("11", FORMAT_VERSION)  # format 11: no campaign stage
MANIFEST = "manifest.json"
FILES = ("encoder.safetensors", "state.npz")


class BundleError(ValueError):
    """A model bundle that is missing, corrupt, tampered with or of another format version."""


def file_sha256(path: str | Path) -> str:
    """The hex SHA-256 of a file (a local path or a URI: core.storage), read in 1 MiB chunks."""
    h = hashlib.sha256()
    with storage.open_input_stream(path, decompress=False) as f:
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


def save_bundle(sg, path: str | Path) -> str:
    """Write a fitted SeqGuard's stages to directory ``path``, a local path or a URI (created;
    existing bundle files replaced); returns its location. The data files are written first and
    the manifest, which holds their checksums, last: a reader sees a whole bundle, or a
    BundleError while a write is under way (never a mix of two bundles' files taken as one)."""
    from safetensors.numpy import save as safetensors_bytes

    out = storage.absolute(path)
    if storage.is_file(out):
        raise BundleError(f"model bundle {out} exists and is not a directory")
    storage.make_dirs(out)
    weights, enc_meta = sg.encoder.to_state()
    blobs = {"encoder.safetensors": safetensors_bytes({k: np.ascontiguousarray(v) for k, v in weights.items()})}
    vocab, vocab_meta = sg.vocab.to_state()
    strata, strata_meta = sg.strata.to_state()
    explained, explainer_meta = sg.explainer.to_state()
    arrays = {
        **nest("stats", sg.stats.to_state()[0]),  # the vocabulary keeps the item ids (ItemStats' meta)
        **strata, **nest("event", sg.event_detector.to_state()[0]),
        "event.residual_check": explained["residual_check"], "user.length_trend": explained["length_trend"],
        **nest("vocab", vocab),
    }
    changepoint_meta = None  # format 12: the change-point stage (None: scored with taste segments)
    if getattr(sg, "changepoint", None) is not None:
        cp_arrays, changepoint_meta = sg.changepoint.to_state()
        arrays.update(nest("changepoint", cp_arrays))
    campaigns_meta = None
    if sg.campaign_detector is not None:
        campaign_arrays, campaigns_meta = sg.campaign_detector.to_state()
        arrays.update(nest("campaigns", campaign_arrays))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    blobs["state.npz"] = buf.getvalue()
    for f in FILES:
        storage.write_bytes(storage.join(out, f), blobs[f])
    manifest = {
        "format_version": FORMAT_VERSION,
        "versions": _versions(),
        "train_config": asdict(sg.config),
        "encoder_config": enc_meta["config"],
        "repair_policy": sg.policy.to_state()[1],
        "detectors": {**strata_meta, "user_features": list(USER_FEATURES), "event_features": list(EVENT_FEATURES)},
        "explainer": explainer_meta,
        "campaigns": campaigns_meta,
        "changepoint": changepoint_meta,
        "drift": sg.drift.to_state()[1] if getattr(sg, "drift", None) is not None else None,
        "vocab": vocab_meta,
        "metrics": {**sg.metrics, "feature_quantiles": explained["quantiles"]},
        "files": {f: hashlib.sha256(blobs[f]).hexdigest() for f in FILES},
    }
    manifest["model_version"] = hashlib.sha256(json.dumps(manifest["files"], sort_keys=True).encode()).hexdigest()[:12]
    storage.write_text(storage.join(out, MANIFEST), json.dumps(manifest, indent=1, default=_json_default), atomic=True)
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
    return _read_checked(path)[0]


def _read_checked(path: str | Path) -> tuple[dict, dict[str, bytes]]:
    """(manifest, the other files' bytes) of a bundle, each file read once and checked."""
    p = str(path)
    if not storage.is_dir(p):
        raise BundleError(f"model bundle {p} does not exist or is not a directory")
    try:
        text = storage.read_bytes(storage.join(p, MANIFEST))
    except (FileNotFoundError, IsADirectoryError):
        raise BundleError(f"model bundle {p} has no {MANIFEST}: not a seqguard bundle, or training did not finish") from None
    try:
        manifest = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"model bundle {p}: {MANIFEST} is corrupt ({exc})") from exc
    if not isinstance(manifest, dict):
        raise BundleError(f"model bundle {p}: {MANIFEST} is not a JSON object")
    fv = manifest.get("format_version")
    if fv not in READABLE:
        raise BundleError(f"model bundle {p} has format version {fv!r}; this seqguard reads versions "
                          f"{', '.join(map(repr, READABLE))}: retrain or use a matching seqguard")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise BundleError(f"model bundle {p}: {MANIFEST} has no 'files' checksums (got {type(files).__name__})")
    blobs = {}
    for f in FILES:
        try:
            blobs[f] = storage.read_bytes(storage.join(p, f))
        except (FileNotFoundError, IsADirectoryError):
            raise BundleError(f"model bundle {p} is missing {f}") from None
        if files.get(f) != hashlib.sha256(blobs[f]).hexdigest():
            raise BundleError(f"model bundle {p}: {f} does not match the manifest's checksum (corrupt or tampered with)")
    return manifest, blobs


def read_drift(manifest: dict, *, token_count: np.ndarray | None = None, path: str = "") -> DriftReference | None:
    """The drift reference of a bundle's manifest (None: trained before it); ``token_count`` (the
    vocabulary's counts by token) lets it count batches, without it it only reports."""
    meta = manifest.get("drift")
    if not isinstance(meta, dict):
        return None
    return _restore(path, DriftReference, {} if token_count is None else {"token_count": token_count}, meta)


def _restore(p: str, stage, arrays, meta):
    """``stage.from_state(arrays, meta)``; what does not fit is the bundle's error."""
    try:
        return stage.from_state(arrays, meta)
    except ValueError as e:
        raise BundleError(f"model bundle {p}: {e}") from None


def load_stages(path: str | Path) -> dict:
    """The fitted stages of a bundle written by :func:`save_bundle`: ``config``, ``policy``, ``vocab``,
    ``encoder``, ``stats``, ``event_detector``, ``strata``, ``explainer``, ``campaign_detector``, ``changepoint``
    (None: no campaign stage), ``drift`` (None: no drift reference); its ``metrics`` and ``model_version``."""
    from safetensors.numpy import load as safetensors_load

    p = str(path)
    m, blobs = _read_checked(p)
    try:
        config = TrainConfig.from_dict(m["train_config"])
        policy = RepairPolicy.from_state({}, m["repair_policy"])
        with np.load(io.BytesIO(blobs["state.npz"]), allow_pickle=False) as npz:
            a = {k: npz[k] for k in npz.files}
        campaign_detector = None
        if m["format_version"] == "11":  # before the campaign stage: nothing calibrates one
            log.info("model bundle %s has format 11: scoring without the campaign stage (retrain to add it)", p)
            config = replace(config, campaigns=False)
        elif config.campaigns:
            if not isinstance(m.get("campaigns"), dict):
                raise BundleError(f"model bundle {p} was trained with the campaign stage but holds no campaign state")
            campaign_detector = _restore(p, CampaignDetector, unnest("campaigns", a), m["campaigns"])
        # the manifest is not covered by the checksums: its vocabulary must fit the checked arrays
        vm, enc = m["vocab"], m["encoder_config"]
        n_items = len(vm["items"]) + N_SPECIAL
        sizes = {len(a["vocab.item_counts"]) + N_SPECIAL, len(a["stats.log_count"]), enc["n_items"]}
        if sizes != {n_items} or len(vm["actions"]) + N_SPECIAL != enc["n_actions"]:
            raise BundleError(f"model bundle {p}: the vocabulary in {MANIFEST} ({len(vm['items'])} items, "
                              f"{len(vm['actions'])} actions) does not fit the encoder and state.npz (edited manifest?)")
        d = m["detectors"]
        for kind, names in (("user", USER_FEATURES), ("event", EVENT_FEATURES)):
            if d.get(f"{kind}_features") != list(names) or (kind == "event" and a["event.ref"].shape[-1] != len(names)):
                raise BundleError(f"model bundle {p}: its detectors use other {kind} features than this seqguard "
                                  f"computes ({len(d.get(f'{kind}_features') or [])} vs {len(names)}): retrain with this version")
        vocab = _restore(p, Vocab, unnest("vocab", a), vm)
        strata = _restore(p, LengthStrata, a, d)
        for name, ud in zip([f"short{i}" for i in range(len(strata.detectors_) - 1)] + ["user"], strata.detectors_):
            if ud.center_.shape != (len(USER_FEATURES),):
                raise BundleError(f"model bundle {p}: its {name} detectors use {ud.center_.shape} user features, "
                                  f"this seqguard computes {len(USER_FEATURES)}: retrain with this version")
        quantiles = m.get("metrics", {}).get("feature_quantiles")
        explainer = _restore(p, Explainer, {"residual_check": a["event.residual_check"], "length_trend": a["user.length_trend"],
                                            **({} if quantiles is None else {"quantiles": np.asarray(quantiles)})},
                             m.get("explainer", {}))
        slopes = len(explainer.length_trend_.coef_) - 1
        if slopes != len(USER_FEATURES):
            raise BundleError(f"model bundle {p}: its length trend has {slopes} feature slopes "
                              f"for {len(USER_FEATURES)} user features")
        return {
            "config": config, "policy": policy, "vocab": vocab,
            "encoder": _restore(p, Encoder, safetensors_load(blobs["encoder.safetensors"]),
                                {**config.encoder_params(), "config": enc}),
            "stats": _restore(p, ItemStats, unnest("stats", a), {"items": vocab.items_}),
            "event_detector": _restore(p, EventDetector, unnest("event", a), {"seed": config.seed}),
            "strata": strata, "explainer": explainer, "campaign_detector": campaign_detector,
            "changepoint": (_restore(p, ChangePoint, unnest("changepoint", a), m["changepoint"])
                            if isinstance(m.get("changepoint"), dict) else None),
            "drift": read_drift(m, token_count=np.r_[np.zeros(N_SPECIAL, np.int64), vocab.item_counts_], path=p),
            "metrics": m.get("metrics", {}), "model_version": m.get("model_version", ""),
        }
    except BundleError:
        raise
    except (KeyError, TypeError, ValueError, OSError, RuntimeError) as exc:
        raise BundleError(f"model bundle {p} cannot be read: {type(exc).__name__}: {exc}") from exc
