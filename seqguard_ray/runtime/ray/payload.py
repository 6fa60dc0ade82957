"""The model travels to Ray workers as bytes in the object store, so no node needs the bundle on a
shared disk: a saved bundle's files, or during training the parts fitted so far."""

from __future__ import annotations

import tempfile
from dataclasses import asdict
from pathlib import Path


def bundle_payload(model_dir: str | Path) -> dict[str, bytes]:
    """A saved bundle's files by name (a local directory or a URI: read once, by the driver)."""
    from ...core import storage
    from ...core.bundle import FILES, MANIFEST, BundleError

    if not storage.is_dir(model_dir):
        raise BundleError(f"model bundle directory does not exist: {model_dir}")
    out = {}
    for name in (MANIFEST, *FILES):
        try:
            out[name] = storage.read_bytes(storage.join(model_dir, name))
        except FileNotFoundError:
            pass  # loading the payload names what is missing
    return out


def has_campaign_stage(payload: dict[str, bytes]) -> bool:
    """Whether a :func:`bundle_payload`'s bundle scores with the campaign stage (its manifest
    holds the stage's state; a format-11 bundle or one trained without it does not)."""
    import json

    manifest = payload.get("manifest.json")
    return manifest is not None and isinstance(json.loads(manifest).get("campaigns"), dict)


def history_cap(payload: dict[str, bytes]) -> int:
    """The bundle's cap on one user's events (``TrainConfig.max_events_per_user``; older bundles: the default)."""
    import json

    from ...core.validate import MAX_EVENTS_PER_USER

    cfg = json.loads(payload["manifest.json"]).get("train_config", {}) if "manifest.json" in payload else {}
    return int(cfg.get("max_events_per_user", MAX_EVENTS_PER_USER))


def partial_payload(sg, *, encoder: bool = True) -> dict:
    """A SeqGuard in training: its config and vocabulary, and (``encoder``) its encoder if it has one."""
    out = {"train_config": asdict(sg.config), "vocab": sg.vocab.to_state()}
    if encoder and sg.model is not None:
        out["encoder"] = sg.encoder.to_state()
    return out


def load_payload(payload):
    """The SeqGuard of a :func:`bundle_payload` or a :func:`partial_payload` (or an ObjectRef of one)."""
    import ray

    if isinstance(payload, ray.ObjectRef):
        payload = ray.get(payload)

    from ...core.config import TrainConfig
    from ...core.pipeline import SeqGuard

    if "train_config" not in payload:
        with tempfile.TemporaryDirectory(prefix="seqguard-bundle-") as tmp:
            for name, data in payload.items():
                (Path(tmp) / name).write_bytes(data)
            return SeqGuard.load(tmp)

    from ...core.encoder import Encoder
    from ...core.tokens import Vocab

    sg = SeqGuard(TrainConfig(**payload["train_config"]))
    sg.vocab = Vocab.from_state(*payload["vocab"])
    if "encoder" in payload:
        sg.encoder = Encoder.from_state(*payload["encoder"])
    return sg
