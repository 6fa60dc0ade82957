"""The calibrated user-detector ensemble: each detector's raw score calibrated to [0, 1], the
ordinary ones combined, the decisive ones on their own share of the false-positive budget, and
one threshold from the target false-positive rate (PyOD's shared post-fit step).

The references are fitted on the users the robust fit keeps (trimmed), but what the verdicts spend
of the budget is measured on every training user: the combination and each decisive detector
against the null of the log's own scores (:class:`~.calibration.NullCalibrator`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .calibration import (BUDGET, Calibrator, NullCalibrator, budget_scale, combine, ensemble_share, sorted_reference,
                          tail_logp, verdict)
from .detectors import (ACCOUNT, DECISIVE, DETECTORS, KNN, CopyDetector, Detector, PartCopyDetector, ReplayDetector,
                        SurprisalDetector)
from .iforest import IForest
from .stage import check_is_fitted, nest, unnest

_COMBINED = [i for i, d in enumerate(DETECTORS) if d not in DECISIVE]


def decisive(p: np.ndarray, names: Sequence[str] = DECISIVE) -> np.ndarray:
    """(n,) the verdict of the decisive detectors ``names`` from calibrated scores p (n, len(DETECTORS)),
    on the ensemble's scale: each crosses the threshold at its BUDGET share of the target false-positive rate."""
    out = np.zeros(len(p))
    for d in names:
        out = np.maximum(out, verdict(p[:, [DETECTORS.index(d)]], BUDGET[d]))
    return out


def _robust_scale(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    med = np.median(x, axis=0)
    iqr = np.quantile(x, 0.75, axis=0) - np.quantile(x, 0.25, axis=0)
    std = x.std(axis=0)
    scale = np.where(iqr > 1e-9, iqr / 1.349, np.where(std > 1e-9, std, 1.0))
    return med, scale


class UserDetectors:
    """The per-user detector ensemble over user features (which include the encoder's surprisal).

    Parameters (stored unchanged, checked in :meth:`fit`):
        target_fpr (float, default 0.01): the false-positive budget: share of the users of a log
            without attacks flagged at the threshold (by the ensemble and the decisive detectors
            together: see ``share``).
        share (float | None, default None: ``ensemble_share()``): the combination's share of that
            budget; each decisive detector spends its BUDGET share beside it, the campaign stage its own.
        trim_share (float, default 0.05): most anomalous share of the training users left out of
            the references (robustness to a poisoned training log).
        seed (int, default 0): the forest, the kNN sample and its clusters.
        encoder_columns (tuple[int, ...]): feature columns carrying the encoder's surprisal.
        copy_column, part_copy_column, replay_column (int | None): the decisive detectors' feature
            columns (copy overlap, partial-copy nats, replay share); None: that detector is silent.

    Fitted: ``center_``, ``scale_`` (F,) the robust scaling; ``tail_ref_`` (m, F) sorted scaled
    features (feature tails); ``detectors_`` name -> fitted :class:`~.detectors.Detector`;
    ``calibrators_`` name -> :class:`Calibrator`; ``combined_`` the combination's
    :class:`NullCalibrator`; ``own_`` decisive name -> :class:`NullCalibrator` of its raw scores
    over every training user; ``threshold_`` = 1 - target_fpr; ``n_trimmed_`` training users left
    out of the detectors' calibration.

    Fit is robust to poisoned training logs: after a first fit the clearest outliers (the top
    ``trim_share``) are left out of the references and everything is refitted, up to three times.
    Each detector is calibrated on the kept users less those beyond Tukey's far-out fence. The
    verdicts are not thresholded on that calibration (a clean log's trimmed top would lie beyond
    it, and about target_fpr + trim_share of a clean log was flagged): the combination's tail is
    the null of every training user's combined score, its bulk's shape extrapolated
    (:class:`NullCalibrator`), and the verdict spends ``share`` of ``target_fpr`` on it. A decisive
    detector flags where both its calibration (people's evidence, certain copies left out) and the
    null of the whole log's own evidence call a user extreme: where near-copies are common (short
    profiles, a small catalogue) the latter holds it to its share. Measured (tests/test_fpr_budget.py,
    docs/decisions.md): the exponential extrapolation is a little light where the combined score's
    tail is heavy, so a clean log's flagged share lands between share * target_fpr and 2 * target_fpr.
    """

    FENCE = 3.0  # Tukey's far-out fence (IQRs above Q3): wider lets a poisoned log's attackers set the threshold

    def __init__(self, *, target_fpr: float = 0.01, share: float | None = None, trim_share: float = 0.05,
                 seed: int = 0, encoder_columns: Sequence[int] = (), copy_column: int | None = None,
                 part_copy_column: int | None = None, replay_column: int | None = None) -> None:
        self.target_fpr = target_fpr
        self.share = share
        self.trim_share = trim_share
        self.seed = seed
        self.encoder_columns = encoder_columns
        self.copy_column = copy_column
        self.part_copy_column = part_copy_column
        self.replay_column = replay_column

    def get_params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("target_fpr", "share", "trim_share", "seed", "encoder_columns",
                                              "copy_column", "part_copy_column", "replay_column")}

    def fit(self, feats: np.ndarray, presumed: np.ndarray | None = None) -> UserDetectors:
        """feats: (U, F) user features of the training users (possibly poisoned); presumed: (U,)
        bool, users presumed anomalous on other evidence, left out of every reference and of the
        calibration (they are scored like everyone else)."""
        if not 0 < self.target_fpr < 0.5:
            raise ValueError(f"target_fpr must be in (0, 0.5), got {self.target_fpr!r}")
        if self.share is not None and not 0 < self.share <= 1:
            raise ValueError(f"share must be in (0, 1], got {self.share!r}")
        if not 0 <= self.trim_share < 0.5:
            raise ValueError(f"trim_share must be in [0, 0.5), got {self.trim_share!r}")
        presumed = np.zeros(len(feats), bool) if presumed is None else np.asarray(presumed, bool)
        if presumed.shape != (len(feats),):
            raise ValueError(f"presumed must be a bool per user ({len(feats)}), got shape {presumed.shape}")
        if len(feats) - presumed.sum() < 5:
            raise ValueError(f"need at least 5 users not presumed anomalous to fit the detectors, got "
                             f"{len(feats) - presumed.sum()} of {len(feats)}")
        keep = ~presumed
        self.own_: dict[str, NullCalibrator] = {}  # set below, once the detectors are calibrated
        for _ in range(3):  # the references: robust to a poisoned log's attackers (trimmed)
            self._fit_reference(feats[keep])
            self._fit_calibration(feats[keep])
            raw = self._combined_raw(feats)
            new_keep = ~presumed & (raw <= np.quantile(raw[~presumed], 1.0 - self.trim_share))
            if new_keep.sum() < 5 or (new_keep == keep).all():
                break
            keep = new_keep
        self._fit_reference(feats[keep])
        # Each detector is calibrated on the kept users less those beyond Tukey's far-out fence
        # (robust: a poisoned log's attackers do not calibrate the detectors that should find them).
        self._fit_calibration(feats[keep])
        raw = self._combined_raw(feats)
        q1, q3 = np.quantile(raw[keep], [0.25, 0.75])
        normal = (raw <= q3 + self.FENCE * (q3 - q1)) & ~presumed
        if normal.sum() < 5:
            normal = keep
        self.n_trimmed_ = int((~normal).sum())
        self._fit_calibration(feats[normal])
        # The verdicts' nulls are fitted on every training user's scores, trimmed or not: the bulk
        # sets the tail's shape (NullCalibrator), the top tenth (a poisoned log's attackers) does
        # not, so a log without attacks is not flagged at target_fpr + trim_share by design.
        raw = self._raw(feats)
        self.own_ = {d: NullCalibrator().fit(raw[~presumed, DETECTORS.index(d)]) for d in DECISIVE}
        self.combined_ = NullCalibrator().fit(self._combined_raw(feats[~presumed]))
        self.share_ = ensemble_share() if self.share is None else float(self.share)
        self.threshold_ = 1.0 - self.target_fpr  # verdicts are on the budget scale (budget_scale, verdict)
        return self

    def _ensemble_columns(self, n_features: int) -> list[int]:
        return [j for j in range(n_features) if j not in (self.copy_column, self.part_copy_column)]

    @property
    def ensemble_columns(self) -> list[int]:
        """Feature columns the Isolation Forest and the kNN distance see: all but the copy detectors'."""
        check_is_fitted(self, ["center_"])
        return self._ensemble_columns(len(self.center_))

    @property
    def decisive_columns(self) -> tuple[int, ...]:
        """Feature columns the decisive detectors (copy, partial copy, replay) read."""
        return tuple(c for c in (self.copy_column, self.part_copy_column, self.replay_column) if c is not None)

    def _new_detectors(self, n_features: int) -> dict[str, Detector]:
        ens = self._ensemble_columns(n_features)
        return {"iforest": IForest(columns=ens, seed=self.seed), "knn": KNN(columns=ens, seed=self.seed),
                "encoder": SurprisalDetector(columns=tuple(self.encoder_columns)),
                "copy": CopyDetector(column=self.copy_column), "part_copy": PartCopyDetector(column=self.part_copy_column),
                "replay": ReplayDetector(column=self.replay_column)}

    def _fit_reference(self, feats: np.ndarray) -> None:
        self.center_, self.scale_ = _robust_scale(feats)
        z = self._z(feats)
        self.tail_ref_ = sorted_reference(z)
        self.detectors_ = {d: det.fit(z if det.scaled else feats) for d, det in self._new_detectors(feats.shape[1]).items()}

    def _fit_calibration(self, feats: np.ndarray) -> None:
        raw = self._raw(feats)
        self.calibrators_ = {d: Calibrator().fit(self.detectors_[d].reference(raw[:, i], feats))
                             for i, d in enumerate(DETECTORS)}

    def _z(self, feats: np.ndarray) -> np.ndarray:
        return np.clip((feats - self.center_) / self.scale_, -50, 50)

    def _raw(self, feats: np.ndarray) -> np.ndarray:
        """(n, len(DETECTORS)) raw scores, higher = more anomalous."""
        z = self._z(feats)
        return np.stack([self.detectors_[d].decision_function(z if self.detectors_[d].scaled else feats)
                         for d in DETECTORS], axis=1)

    def _calibrated(self, feats: np.ndarray) -> np.ndarray:
        raw = self._raw(feats)
        p = np.stack([self.calibrators_[d].score(raw[:, i]) for i, d in enumerate(DETECTORS)], axis=1)
        for d, own in self.own_.items():  # extreme only if also so for the log's own evidence
            i = DETECTORS.index(d)
            p[:, i] = np.minimum(p[:, i], own.score(raw[:, i]))
        for i, d in enumerate(DETECTORS):
            p[self.detectors_[d].silent(feats), i] = 0.0
        return p

    def _combined_raw(self, feats: np.ndarray) -> np.ndarray:
        """(n,) the combination of the calibrated detectors other than the decisive ones."""
        return combine(self._calibrated(feats)[:, _COMBINED])

    def score(self, feats: np.ndarray, *, whole: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated ensemble score (n,) in [0, 1] (higher = more anomalous) and per-detector (n, D);
        without ``whole``, for parts of histories, which are no accounts: the ACCOUNT detectors do
        not judge them."""
        check_is_fitted(self, ["combined_"])
        p = self._calibrated(feats)
        combined = budget_scale(np.exp(-self.combined_.nats(combine(p[:, _COMBINED]))), self.share_, self.target_fpr)
        judged = DECISIVE if whole else tuple(d for d in DECISIVE if d not in ACCOUNT)
        return np.maximum(combined, decisive(p, judged)), p

    def feature_tails(self, feats: np.ndarray) -> np.ndarray:
        """(n, F) -log two-sided tail probability of each feature: what makes a user unusual."""
        check_is_fitted(self, ["tail_ref_"])
        return tail_logp(self.tail_ref_, self._z(feats), two_sided=True)

    def to_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays (the bundle's names since format 11): ``center``, ``scale``, ``tail_ref``,
        ``knn_ref`` (+ ``knn_centroids``, ``knn_groups``), ``iforest.*``, ``cal.<detector>``,
        ``combined`` (since format 12 the reference of every training user, a null's), ``own.<decisive
        detector>`` (format 12); meta: the parameters, ``threshold``, ``n_trimmed`` and ``null_band``
        (format 12: the combination's and the decisive detectors' null band)."""
        check_is_fitted(self, ["combined_"])
        knn = self.detectors_["knn"].to_state()[0]
        arrays = {"center": self.center_, "scale": self.scale_, "tail_ref": self.tail_ref_,
                  **{f"knn_{k}": v for k, v in knn.items()}, "combined": self.combined_.reference_,
                  **nest("iforest", self.detectors_["iforest"].to_state()[0]),
                  **{f"cal.{d}": cal.reference_ for d, cal in self.calibrators_.items()},
                  **{f"own.{d}": own.reference_ for d, own in self.own_.items()}}
        meta = {"target_fpr": self.target_fpr, "threshold": self.threshold_, "seed": self.seed,
                "encoder_columns": list(self.encoder_columns), "copy_column": self.copy_column,
                "part_copy_column": self.part_copy_column, "replay_column": self.replay_column,
                "n_trimmed": self.n_trimmed_, "trim_share": self.trim_share, "share": self.share_,
                "null_band": list(self.combined_.band)}
        return arrays, meta

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> UserDetectors:
        """The ensemble :meth:`to_state` wrote; ValueError naming what does not fit. Format 11 (no
        ``null_band``): the combination calibrated on the kept users, on the whole budget, and the
        decisive detectors on their calibration alone, as that format was fitted."""
        legacy = "null_band" not in meta
        ud = cls(target_fpr=meta["target_fpr"], share=1.0 if legacy else meta["share"],
                 trim_share=meta.get("trim_share", 0.05), seed=meta["seed"],
                 encoder_columns=tuple(meta["encoder_columns"]), copy_column=meta["copy_column"],
                 part_copy_column=meta["part_copy_column"], replay_column=meta["replay_column"])
        ud.center_, ud.scale_, ud.tail_ref_ = arrays["center"], arrays["scale"], arrays["tail_ref"]
        F = len(ud.center_)
        if ud.center_.ndim != 1 or ud.scale_.shape != (F,) or ud.tail_ref_.ndim != 2 or ud.tail_ref_.shape[1] != F:
            raise ValueError(f"its feature scaling ({ud.scale_.shape}) and tails ({ud.tail_ref_.shape}) do not fit "
                             f"its {F} features")
        ens = ud._ensemble_columns(F)
        knn = {k[4:]: arrays[k] for k in ("knn_ref", "knn_centroids", "knn_groups") if k in arrays}
        enc = list(ud.encoder_columns)
        column = {"n_features_in": F}
        ud.detectors_ = {
            "iforest": IForest.from_state(unnest("iforest", arrays), {"columns": ens, "seed": ud.seed}),
            "knn": KNN.from_state(knn, {"columns": ens, "seed": ud.seed}),
            "encoder": SurprisalDetector.from_state({"ref": ud.tail_ref_[:, enc]}, {"columns": enc}),
            "copy": CopyDetector.from_state({}, {**column, "column": ud.copy_column}),
            "part_copy": PartCopyDetector.from_state({}, {**column, "column": ud.part_copy_column}),
            "replay": ReplayDetector.from_state({}, {**column, "column": ud.replay_column}),
        }
        ud.calibrators_ = {k[4:]: Calibrator.from_state({"reference": arrays[k]}, {}) for k in arrays if k.startswith("cal.")}
        if set(ud.calibrators_) != set(DETECTORS):
            raise ValueError(f"its detectors are {sorted(ud.calibrators_)}, this seqguard runs {sorted(DETECTORS)}")
        if legacy:
            ud.combined_, ud.own_ = Calibrator.from_state({"reference": arrays["combined"]}, {}), {}
        else:
            null = {"band": meta["null_band"]}
            missing = [d for d in DECISIVE if f"own.{d}" not in arrays]
            if missing:
                raise ValueError(f"it has no null of the log's own evidence for {missing}")
            ud.combined_ = NullCalibrator.from_state({"reference": arrays["combined"]}, null)
            ud.own_ = {d: NullCalibrator.from_state({"reference": arrays[f"own.{d}"]}, null) for d in DECISIVE}
        ud.threshold_, ud.n_trimmed_ = float(meta["threshold"]), int(meta["n_trimmed"])
        ud.share_ = float(ud.share)
        return ud
