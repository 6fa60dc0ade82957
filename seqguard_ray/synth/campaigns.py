"""Coordinated campaigns from the published shilling / campaign attack models, injected into any
clean log (see /work/shared/notes/attack-models.md and docs/decisions.md).

A campaign is a group of accounts pushing (or nuking) the same 1-5 target items inside one time
window. Accounts are either new fake profiles (target + selected + filler items, after Mobasher
et al. 2007: random, average, bandwagon, reverse bandwagon, segment, love/hate, average-over-
popular) or real accounts whose histories get farmed events on the targets (hijacked or paid
users). ``CAMPAIGN_SETTINGS`` names a dozen settings spanning group size 5-200, filler 1-10% of
the catalogue, camouflage on and off and spreads from one hour to 30 days.

    >>> lc = inject_campaign(clean, "bandwagon_50_week", seed=0)
    >>> lc.events, lc.event_injected, lc.members, lc.target_items
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .assemble import assemble
from .attacks import Injector
from .logstats import LogStats, normalize_log
from .mix import LabeledEvents

CAMPAIGN = "campaign"  # user_type of every campaign member
HOUR, DAY = 3600, 86400
PROFILES = ("random", "average", "bandwagon", "reverse_bandwagon", "segment", "love_hate", "aop", "farm")
_PUSH_ONLY = ("bandwagon", "segment", "aop")
_NUKE_ONLY = ("reverse_bandwagon", "love_hate")
_POPULAR_SHARE = 0.05  # "very popular": the top 5% of items by events
_AOP_SHARE = 0.20  # average-over-popular draws its fillers from the top 20%


@dataclass(frozen=True)
class CampaignSetting:
    """One campaign to inject. Every field is checked at construction."""

    name: str
    accounts: str  # "new" fake accounts, or "real": farmed events inside real users' histories
    n_accounts: int  # group size
    profile: str  # a name in PROFILES; "farm" (targets only) is the profile of real accounts
    filler: float  # filler items per fake profile, as a share of the catalogue (0 for "farm")
    camouflage: bool  # popular items mixed in, rated near their mean (bandwagon / aop: by definition)
    n_targets: int  # items pushed or nuked
    goal: str  # "push" (targets at the log's max value) or "nuke" (at its min)
    spread_s: int  # length of the campaign's time window, seconds
    target_share: float = 1.0  # share of the targets each account acts on (at least one)

    def __post_init__(self) -> None:
        bad = {
            "name": isinstance(self.name, str) and self.name.isidentifier(),
            "accounts": self.accounts in ("new", "real"),
            "n_accounts": isinstance(self.n_accounts, int) and self.n_accounts >= 1,
            "profile": self.profile in PROFILES and (self.profile == "farm") == (self.accounts == "real"),
            "filler": 0.0 <= self.filler <= 0.5 and (self.filler > 0) == (self.accounts == "new"),
            "camouflage": isinstance(self.camouflage, bool)
            and (self.camouflage or self.profile not in ("bandwagon", "aop")),
            "n_targets": isinstance(self.n_targets, int) and 1 <= self.n_targets <= 20,
            "goal": self.goal in ("push", "nuke") and not (self.profile in _PUSH_ONLY and self.goal != "push")
            and not (self.profile in _NUKE_ONLY and self.goal != "nuke"),
            "spread_s": isinstance(self.spread_s, int) and self.spread_s >= 60,
            "target_share": 0.0 < self.target_share <= 1.0,
        }
        wrong = [k for k, ok in bad.items() if not ok]
        if wrong:
            raise ValueError(f"invalid campaign setting {self.name!r}: "
                             + ", ".join(f"{k}={getattr(self, k)!r}" for k in wrong))

    @property
    def in_target_scope(self) -> bool:
        """True for the settings issue 29's targets cover: >= 20 accounts spread over <= 7 days."""
        return self.n_accounts >= 20 and self.spread_s <= 7 * DAY


def _s(name: str, accounts: str, n: int, profile: str, filler: float, camo: bool, targets: int, goal: str,
       spread: int, share: float = 1.0) -> tuple[str, CampaignSetting]:
    return name, CampaignSetting(name, accounts, n, profile, filler, camo, targets, goal, spread, share)


CAMPAIGN_SETTINGS: dict[str, CampaignSetting] = dict([
    # dozens of new accounts, each rating a few unpopular targets among popular items within hours
    _s("lockstep_new_accounts_hours", "new", 50, "aop", 0.02, True, 3, "push", 6 * HOUR),
    _s("bandwagon_50_week", "new", 50, "bandwagon", 0.01, True, 2, "push", 7 * DAY),
    _s("average_100_month", "new", 100, "average", 0.05, False, 1, "push", 30 * DAY),
    _s("farm_in_real_accounts_day", "real", 40, "farm", 0.0, True, 2, "push", DAY),
    _s("farm_in_real_accounts_month", "real", 100, "farm", 0.0, False, 1, "push", 30 * DAY),
    _s("small_group_5", "new", 5, "random", 0.05, True, 1, "push", 2 * DAY),
    _s("huge_group_200", "new", 200, "random", 0.03, True, 5, "push", 3 * DAY, 0.6),
    _s("segment_week", "new", 30, "segment", 0.01, False, 2, "push", 7 * DAY),
    _s("nuke_love_hate", "new", 40, "love_hate", 0.04, False, 2, "nuke", 2 * DAY),
    _s("reverse_bandwagon_nuke", "new", 25, "reverse_bandwagon", 0.02, True, 1, "nuke", 5 * DAY),
    _s("aop_30_days", "new", 30, "aop", 0.05, True, 1, "push", 30 * DAY),
    _s("no_camouflage_random", "new", 60, "random", 0.10, False, 3, "push", HOUR),
])


@dataclass
class LabeledCampaign(LabeledEvents):
    """A log with one injected campaign: :class:`LabeledEvents` (members typed ``"campaign"``,
    ``target_items`` its targets) plus the members, the setting and the campaign's time window."""

    members: np.ndarray  # (M,) member user ids (str), sorted
    setting: CampaignSetting
    window: tuple[int, int]  # (first, last) second of the window the campaign's events lie in


def inject_campaign(
    clean_events: pd.DataFrame,
    setting: str | CampaignSetting,
    seed: int = 0,
    *,
    value_range: tuple[float, float] | None = None,
    actions: tuple[str, ...] | None = None,
) -> LabeledCampaign:
    """Inject one campaign into a clean log (columns user_id, item_id, ts[, action, value]).

    ``setting``: a name in ``CAMPAIGN_SETTINGS`` or a :class:`CampaignSetting`. Popularity, values,
    actions, timing and categories come from the log (:class:`~.logstats.LogStats`); ``value_range``
    bounds values (default: the log's min and max) and ``actions`` is the vocabulary injected events
    use, weakest first (default: the log's). Events lie inside the log's time range, sorted by
    (user_id, ts); the output has the input's columns. Same seed and setting, same output.
    """
    st_ = _resolve(setting)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if not isinstance(clean_events, pd.DataFrame):
        raise ValueError(f"clean_events must be a pandas DataFrame, got {type(clean_events).__name__}")
    df, added, item_uniq, ts_dtype = _prepare(clean_events)
    clean = normalize_log(df)
    rng = np.random.default_rng([int(seed), zlib.crc32(st_.name.encode())])
    stats = LogStats.build(clean, rng=rng, value_range=value_range, actions=actions)
    inj = Injector(stats, rng)
    targets = _targets(stats, st_, rng)
    lo, hi = _window(stats, st_, rng)
    if st_.accounts == "new":
        n_real = len(stats.users)
        for j in range(st_.n_accounts):
            inj.types[n_real + j] = CAMPAIGN
            _fake_profile(inj, n_real + j, st_, _member_targets(targets, st_, rng), targets, lo, hi)
        inj.n_fake = st_.n_accounts
    else:
        for u in _real_accounts(stats, st_, targets, lo, hi, rng):
            inj.types[int(u)] = CAMPAIGN
            _farm(inj, int(u), st_, _member_targets(targets, st_, rng), targets, lo, hi)
    inj.targets.update(int(t) for t in targets)
    le = assemble(inj)
    events = _restore(le.events, added, item_uniq, ts_dtype)
    target_items = stats.items[np.sort(targets)]
    if item_uniq is not None:
        target_items = np.asarray(item_uniq[target_items])
    members = np.sort(le.user_type.index[le.user_type == CAMPAIGN].to_numpy(dtype=str))
    return LabeledCampaign(events=events, event_injected=le.event_injected, user_type=le.user_type,
                           target_items=target_items, members=members, setting=st_, window=(int(lo), int(hi)))


def _resolve(setting: str | CampaignSetting) -> CampaignSetting:
    if isinstance(setting, CampaignSetting):
        return setting
    if isinstance(setting, str) and setting in CAMPAIGN_SETTINGS:
        return CAMPAIGN_SETTINGS[setting]
    raise ValueError(f"setting must be a CampaignSetting or one of {list(CAMPAIGN_SETTINGS)}, got {setting!r}")


# input and output columns ------------------------------------------------------------------------

def _prepare(events: pd.DataFrame) -> tuple[pd.DataFrame, list[str], np.ndarray | None, object]:
    """A copy normalize_log accepts: missing action / value added, non-integer item ids coded.

    Returns (frame, added column names, item id values by code or None, the input ts dtype)."""
    missing = [c for c in ("user_id", "item_id", "ts") if c not in events.columns]
    if missing:
        raise ValueError(f"clean_events lacks column(s) {missing}; needs user_id, item_id, ts")
    df = events.copy()
    added = []
    if "action" not in df.columns:
        df["action"], added = "event", added + ["action"]
    if "value" not in df.columns:
        df["value"], added = np.nan, added + ["value"]
    item_uniq = None
    if not pd.api.types.is_integer_dtype(df["item_id"]):
        if df["item_id"].isna().any():
            raise ValueError(f"clean_events.item_id has {int(df['item_id'].isna().sum())} null value(s)")
        codes, item_uniq = pd.factorize(df["item_id"])
        df["item_id"] = codes.astype(np.int64)
        item_uniq = np.asarray(item_uniq, dtype=object)
    return df, added, item_uniq, events["ts"].dtype


def _restore(events: pd.DataFrame, added: list[str], item_uniq: np.ndarray | None, ts_dtype) -> pd.DataFrame:
    """The assembled log with the input's columns and id / time types back."""
    out = events.drop(columns=added)
    if item_uniq is not None:
        out["item_id"] = item_uniq[out["item_id"].to_numpy()]
    if pd.api.types.is_datetime64_any_dtype(ts_dtype):
        ts = pd.to_datetime(out["ts"].to_numpy(), unit="s")
        tz = getattr(ts_dtype, "tz", None)
        out["ts"] = ts.tz_localize(tz) if tz is not None else ts.astype(ts_dtype)
    return out


# what and when ------------------------------------------------------------------------------------

def _popular(st: LogStats, share: float) -> np.ndarray:
    """Item indices of the top ``share`` of items by events (at least 10 of them)."""
    order = np.argsort(-st.pop, kind="stable")
    return order[: min(st.n_items, max(10, int(round(share * st.n_items))))]


def _targets(st: LogStats, s: CampaignSetting, rng: np.random.Generator) -> np.ndarray:
    """Pushed targets come from the less popular half of the catalogue, nuked ones from the top 10%."""
    order = np.argsort(st.pop, kind="stable")  # least popular first
    pool = order[: max(s.n_targets, st.n_items // 2)] if s.goal == "push" else _popular(st, 0.10)
    if len(pool) < s.n_targets:
        raise ValueError(f"setting {s.name!r} needs {s.n_targets} targets; the log has {st.n_items} items")
    return np.sort(rng.choice(pool, s.n_targets, replace=False))


def _member_targets(targets: np.ndarray, s: CampaignSetting, rng: np.random.Generator) -> np.ndarray:
    k = max(1, int(round(s.target_share * len(targets))))
    return targets if k == len(targets) else np.sort(rng.choice(targets, k, replace=False))


def _window(st: LogStats, s: CampaignSetting, rng: np.random.Generator) -> tuple[int, int]:
    """The campaign's window: ``spread_s`` long (at most the log's span), after the first 30% of
    the log's time so that the targets' normal audience is seen before it."""
    span = st.t_max - st.t_min
    spread = min(s.spread_s, span)
    first = st.t_min + int(0.3 * span)
    lo = int(rng.integers(min(first, st.t_max - spread), st.t_max - spread + 1))
    return lo, lo + spread


# accounts ----------------------------------------------------------------------------------------

def _fake_profile(inj: Injector, u: int, s: CampaignSetting, targets: np.ndarray, all_targets: np.ndarray,
                  lo: int, hi: int) -> None:
    """A new account: selected + filler (+ camouflage) items and ``targets`` (its share of the
    campaign's ``all_targets``, none of which it touches otherwise), inside [lo, hi]."""
    st, rng = inj.st, inj.rng
    n_fill = max(1, int(round(s.filler * st.n_items * rng.uniform(0.8, 1.2))))
    free = np.setdiff1d(np.arange(st.n_items), all_targets)
    popular = np.setdiff1d(_popular(st, _POPULAR_SHARE), all_targets)

    def pick(pool: np.ndarray, k: int, taken: np.ndarray, p: np.ndarray | None = None) -> np.ndarray:
        keep = ~np.isin(pool, taken)
        pool, p = pool[keep], (None if p is None else p[keep] / p[keep].sum())
        return rng.choice(pool, min(k, len(pool)), replace=False, p=p) if len(pool) else np.empty(0, np.int64)

    parts: list[tuple[np.ndarray, str]] = []
    none = np.empty(0, np.int64)
    few = int(rng.integers(3, 8))  # "a few" selected items
    if s.profile == "bandwagon":
        parts.append((pick(popular, few, none), "high"))
    elif s.profile == "reverse_bandwagon":
        wide = np.flatnonzero(st.pop >= np.median(st.pop))
        mean = st.item_mean[0][wide]
        disliked = wide[np.argsort(np.nan_to_num(mean, nan=np.inf), kind="stable")][: max(10, len(wide) // 20)]
        parts.append((pick(np.setdiff1d(disliked, all_targets), few, none), "low"))
    elif s.profile == "segment":  # the best-liked items of the target's own category
        idx, p = st.cat_items[int(st.item_cat[all_targets[0]])]
        parts.append((pick(idx, max(few, n_fill // 2), all_targets, p), "high"))
    taken = np.concatenate([p[0] for p in parts] + [none])
    filler_kind = {"random": "random", "average": "near_mean", "bandwagon": "random", "aop": "near_mean",
                   "reverse_bandwagon": "random", "segment": "low", "love_hate": "high"}[s.profile]
    filler_pool = np.setdiff1d(_popular(st, _AOP_SHARE), all_targets) if s.profile == "aop" else free
    parts.append((pick(filler_pool, n_fill, taken), filler_kind))
    if s.camouflage and s.profile not in ("bandwagon", "aop"):
        taken = np.concatenate([p[0] for p in parts])
        parts.append((pick(popular, max(3, n_fill // 2), taken, st.pop[popular] / st.pop[popular].sum()),
                      "near_mean"))
    _add_profile(inj, u, parts, targets, s.goal, lo, hi)


def _real_accounts(st: LogStats, s: CampaignSetting, targets: np.ndarray, lo: int, hi: int,
                   rng: np.random.Generator) -> np.ndarray:
    """Real users with >= 5 events who never touched a target, those active nearest the window first."""
    n_users = len(st.users)
    lengths = np.diff(st.offsets)
    touched = np.zeros(n_users, bool)
    touched[st.user_codes[np.isin(st.item_idx, targets)]] = True
    ok = np.flatnonzero((lengths >= 5) & ~touched)
    if len(ok) < s.n_accounts:
        raise ValueError(f"setting {s.name!r} needs {s.n_accounts} real accounts; the log has {len(ok)} eligible")
    first, last = st.ts[st.offsets[ok]], st.ts[st.offsets[ok + 1] - 1]
    distance = np.maximum(0, np.maximum(first - hi, lo - last))  # 0 = active during the window
    order = np.lexsort((rng.random(len(ok)), distance))
    return np.sort(ok[order[: s.n_accounts]])


def _farm(inj: Injector, u: int, s: CampaignSetting, targets: np.ndarray, all_targets: np.ndarray,
          lo: int, hi: int) -> None:
    """Farmed events inside a real account: the targets (and with camouflage 1-3 popular items)."""
    st, rng = inj.st, inj.rng
    parts: list[tuple[np.ndarray, str]] = []
    if s.camouflage:
        rows = np.arange(st.offsets[u], st.offsets[u + 1])
        popular = np.setdiff1d(_popular(st, _POPULAR_SHARE), np.r_[all_targets, st.item_idx[rows]])
        if len(popular):
            parts.append((rng.choice(popular, min(len(popular), int(rng.integers(1, 4))), replace=False),
                          "near_mean"))
    _add_profile(inj, u, parts, targets, s.goal, lo, hi)


def _add_profile(inj: Injector, u: int, parts: list[tuple[np.ndarray, str]], targets: np.ndarray, goal: str,
                 lo: int, hi: int) -> None:
    """Events of one account: other items follow the log's funnel; pushed targets get every action
    at the top value, nuked ones the weakest action at the bottom value; times in [lo, hi]."""
    push = goal == "push"
    inj.add_profile(u, parts, targets, "high" if push else "low", len(inj.st.actions) if push else 1, lo, hi)
