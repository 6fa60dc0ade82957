"""Server-side state of ScoreStream: each user's recent window and each stream's record of what it
has applied. Framework-free (no gRPC, no Ray): two stores behind one :class:`SessionStore` protocol.

- :class:`MemoryStore`: in this process, bounded: at most ``window`` events per user, ``max_users``
  users (least recently used dropped first), ``max_streams`` stream records, everything idle for
  ``ttl_s`` dropped. A user's events must reach this process (one replica holds a user).
- :class:`RedisStore`: in Redis (``redis.asyncio``), so any replica serves any user; keys carry a
  prefix and expire after ``ttl_s``; bound the number of users with Redis' own ``maxmemory`` and a
  ``volatile-lru`` policy (docs/serving.md, "Streaming").

Values are JSON (never pickle): a user's window as parallel arrays, a stream record as its last
applied seq and its last ``answers_kept`` answers (opaque bytes, base64). Writes are optimistic: a
:meth:`SessionStore.commit` applies only if nothing it read has changed since (each value carries a
version), so two callers updating one user never lose an event; the loser reads again and retries.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Protocol

log = logging.getLogger(__name__)

REDIS_URL_ENV = "SEQGUARD_REDIS_URL"            # the Redis URL, when not given as an option
REDIS_PASSWORD_ENV = "SEQGUARD_REDIS_PASSWORD"  # its password (AUTH), never on a command line


@dataclass(frozen=True)
class StreamConfig:
    """ScoreStream settings (``seqguard serve --stream-...``, app args ``stream``). Unknown keys are errors."""

    # events in a user's window, the event itself included; None: the bundle's encoder window
    # (TrainConfig.max_len). Never above the bundle's history cap (max_events_per_user).
    window: int | None = None
    ttl_s: float = 7 * 24 * 3600.0   # a user's state, or a stream's record, idle this long is dropped
    max_users: int = 100_000         # in-process store: users held; the least recently used go first
    max_streams: int = 10_000        # in-process store: stream records held (LRU)
    answers_kept: int = 64           # answers kept per stream: a resent seq among them is replayed (>= the
                                     # client's unanswered messages: StreamSession's max_unacked, 64)
    max_batch: int = 32              # messages of one stream scored in one backend call
    max_in_flight: int = 64          # messages read ahead of their answers per stream; reading stops when full
    max_open_streams: int = 1_000    # streams open at once per server (replica); more: RESOURCE_EXHAUSTED
    max_pending_events: int = 8_192  # events read off all of a server's streams, not yet answered: over it
                                     # streams stop reading and a new stream gets RESOURCE_EXHAUSTED
    redis_url: str | None = None     # redis://host:6379/0 or rediss:// (TLS); None: in-process store
    redis_prefix: str = "seqguard:"  # key prefix, so several apps can share one Redis
    redis_ca_file: str | None = None     # TLS: CA bundle to trust (rediss://)
    redis_cert_file: str | None = None   # TLS: client certificate (mutual TLS)
    redis_key_file: str | None = None    # TLS: its private key

    def __post_init__(self) -> None:
        if self.window is not None and (isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1):
            raise ValueError(f"stream window must be a positive integer or None, got {self.window!r}")
        for name in ("max_users", "max_streams", "answers_kept", "max_batch", "max_in_flight", "max_open_streams",
                     "max_pending_events"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"stream {name} must be a positive integer, got {v!r}")
        if not (isinstance(self.ttl_s, (int, float)) and math.isfinite(self.ttl_s) and self.ttl_s > 0):
            raise ValueError(f"stream ttl_s must be a positive number of seconds, got {self.ttl_s!r}")
        if self.max_in_flight < self.max_batch:
            raise ValueError(f"stream max_in_flight ({self.max_in_flight}) must be >= max_batch ({self.max_batch})")
        if self.redis_url is not None and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"stream redis_url must start with redis://, rediss:// or unix://, got {_redacted(self.redis_url)!r}")

    @classmethod
    def from_dict(cls, d: dict | None) -> StreamConfig:
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown stream setting(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)

    def window_for(self, max_len: int | None, history_cap: int | None) -> int:
        """The window actually used: this config's (or the encoder's ``max_len``), within the history cap."""
        w = self.window or max_len or 128
        return int(min(w, history_cap)) if history_cap else int(w)


def _redacted(url: str) -> str:
    """``url`` without its password (for messages and logs)."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        cred, _, host = rest.rpartition("@")
        user = cred.split(":", 1)[0]
        return f"{scheme}{sep}{user}:***@{host}" if user else f"{scheme}{sep}***@{host}"
    return url


# --------------------------------------------------------------------------- values
@dataclass
class UserWindow:
    """A user's last events (at most the stream window), oldest first, as sent (raw ``ts``)."""

    item: list[str] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)        # as sent: seconds or milliseconds
    action: list[str] = field(default_factory=list)    # "" = unset (the default action)
    value: list[float | None] = field(default_factory=list)
    seen: int = 0        # events applied for this user in total (a running count; not capped)
    version: int = 0     # 0: not stored; bumped by every write

    def __len__(self) -> int:
        return len(self.ts)

    def appended(self, item: str, ts: int, action: str, value: float | None, cap: int) -> UserWindow:
        """A copy with one more event, keeping the last ``cap``."""
        k = max(0, len(self) + 1 - cap)
        return UserWindow(self.item[k:] + [item], self.ts[k:] + [int(ts)], self.action[k:] + [action],
                          self.value[k:] + [value], self.seen + 1, self.version)

    def to_json(self) -> str:
        return json.dumps({"i": self.item, "t": self.ts, "a": self.action, "v": self.value, "n": self.seen,
                           "ver": self.version}, separators=(",", ":"))

    @classmethod
    def from_json(cls, s: str | bytes) -> UserWindow:
        d = json.loads(s)
        return cls(list(d["i"]), [int(x) for x in d["t"]], list(d["a"]), list(d["v"]), int(d["n"]), int(d["ver"]))


@dataclass
class StreamRecord:
    """What a stream has applied: its last seq and the answers to its last seqs (serialized)."""

    last_seq: int = 0
    answers: OrderedDict[int, bytes] = field(default_factory=OrderedDict)
    version: int = 0     # 0: not stored

    def add(self, seq: int, answer: bytes, keep: int) -> None:
        self.answers[seq] = answer
        self.last_seq = max(self.last_seq, seq)
        while len(self.answers) > keep:
            self.answers.popitem(last=False)

    def to_json(self) -> str:
        return json.dumps({"last": self.last_seq, "seq": list(self.answers),
                           "ans": [base64.b64encode(a).decode() for a in self.answers.values()], "ver": self.version},
                          separators=(",", ":"))

    @classmethod
    def from_json(cls, s: str | bytes) -> StreamRecord:
        d = json.loads(s)
        return cls(int(d["last"]), OrderedDict((int(q), base64.b64decode(a)) for q, a in zip(d["seq"], d["ans"])),
                   int(d["ver"]))


@dataclass
class Loaded:
    """What :meth:`SessionStore.load` read: the stream's record and each user's window (None = none held)."""

    stream: StreamRecord | None
    users: dict[str, UserWindow | None]


class Conflict(Exception):
    """A commit found a value changed since it was loaded (another stream updated the same user)."""


class SessionStore(Protocol):
    """Where stream state lives. ``epoch`` names the store's contents: it changes when they are lost."""

    epoch: str

    async def load(self, stream_id: str, users: Iterable[str]) -> Loaded: ...

    async def commit(self, stream_id: str, loaded: Loaded, stream: StreamRecord,
                     users: dict[str, UserWindow | None]) -> None:
        """Write ``stream`` and ``users`` (None deletes) at once, if none of them changed since
        ``loaded``; else raise :class:`Conflict` and write nothing."""

    async def close(self) -> None: ...


def _expected(loaded: Loaded, user: str) -> int:
    w = loaded.users.get(user)
    return 0 if w is None else w.version


# --------------------------------------------------------------------------- in process
class MemoryStore:
    """The in-process store: bounded by ``max_users`` and ``max_streams`` (LRU) and ``ttl_s``.
    A user's window is held as its JSON bytes (as in Redis): ~5x less memory than Python lists of
    str/int objects (bench/serve.py measured 22 KB vs 5 KB a user at W=128). ``clock`` (seconds)
    is injectable for tests."""

    def __init__(self, config: StreamConfig, *, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.clock = clock
        self.epoch = f"mem-{uuid.uuid4().hex[:16]}"
        self._users: OrderedDict[str, tuple[float, tuple[int, bytes]]] = OrderedDict()  # (version, JSON)
        self._streams: OrderedDict[str, tuple[float, StreamRecord]] = OrderedDict()

    def _get(self, table: OrderedDict, key: str):
        hit = table.get(key)
        if hit is None:
            return None
        expires, v = hit
        if expires <= self.clock():
            del table[key]
            return None
        table.move_to_end(key)
        return v

    @staticmethod
    def _put(table: OrderedDict, key: str, v, expires: float, cap: int) -> None:
        table[key] = (expires, v)
        table.move_to_end(key)
        while len(table) > cap:
            table.popitem(last=False)

    async def load(self, stream_id: str, users: Iterable[str]) -> Loaded:
        rec = self._get(self._streams, stream_id)
        rec = None if rec is None else StreamRecord(rec.last_seq, OrderedDict(rec.answers), rec.version)
        out = {}
        for u in users:
            w = self._get(self._users, u)
            out[u] = None if w is None else UserWindow.from_json(w[1])
        return Loaded(rec, out)

    async def commit(self, stream_id: str, loaded: Loaded, stream: StreamRecord,
                     users: dict[str, UserWindow | None]) -> None:
        cur = self._get(self._streams, stream_id)
        if (0 if cur is None else cur.version) != (0 if loaded.stream is None else loaded.stream.version):
            raise Conflict(f"stream {stream_id}")
        for u in users:
            w = self._get(self._users, u)
            if (0 if w is None else w[0]) != _expected(loaded, u):
                raise Conflict(f"user {u}")
        expires = self.clock() + self.config.ttl_s
        stream.version += 1
        self._put(self._streams, stream_id, stream, expires, self.config.max_streams)
        for u, w in users.items():
            if w is None:
                self._users.pop(u, None)
            else:
                w.version += 1
                self._put(self._users, u, (w.version, w.to_json().encode()), expires, self.config.max_users)

    def __len__(self) -> int:
        return len(self._users)

    async def close(self) -> None:
        return None


# --------------------------------------------------------------------------- Redis
def redis_client(config: StreamConfig, env: dict | None = None):
    """A ``redis.asyncio.Redis`` for ``config.redis_url`` (or ``$SEQGUARD_REDIS_URL``): AUTH from the
    URL's password or ``$SEQGUARD_REDIS_PASSWORD``; TLS with ``rediss://`` and the CA / client
    certificate files of the config."""
    import redis.asyncio as aioredis

    env = os.environ if env is None else env
    url = config.redis_url or env.get(REDIS_URL_ENV)
    if not url:
        raise ValueError(f"no Redis URL: set stream redis_url or ${REDIS_URL_ENV}")
    kw: dict = {}
    password = env.get(REDIS_PASSWORD_ENV)
    if password:
        kw["password"] = password
    if url.startswith("rediss://"):
        if config.redis_ca_file:
            kw["ssl_ca_certs"] = config.redis_ca_file
        if config.redis_cert_file:
            kw["ssl_certfile"] = config.redis_cert_file
        if config.redis_key_file:
            kw["ssl_keyfile"] = config.redis_key_file
    elif config.redis_ca_file or config.redis_cert_file or config.redis_key_file:
        raise ValueError("stream redis_ca_file / redis_cert_file / redis_key_file need a rediss:// (TLS) URL")
    return aioredis.Redis.from_url(url, **kw)


class RedisStore:
    """State in Redis: ``<prefix>u:<user_id>`` (a window), ``<prefix>s:<stream_id>`` (a stream
    record), ``<prefix>epoch``; every write sets the TTL. A commit is one WATCH / MULTI / EXEC:
    all of a batch's writes, or none. ``client``: a ``redis.asyncio.Redis`` (or fakeredis' in tests)."""

    def __init__(self, config: StreamConfig, client=None):
        self.config = config
        self.client = client if client is not None else redis_client(config)
        self.prefix = config.redis_prefix
        self.epoch = ""

    @classmethod
    async def open(cls, config: StreamConfig, client=None) -> RedisStore:
        """A store whose ``epoch`` is read from (or first written to) Redis: it changes only when
        Redis loses its data."""
        self = cls(config, client)
        key = self.prefix + "epoch"
        await self.client.set(key, f"redis-{uuid.uuid4().hex[:16]}", nx=True)
        self.epoch = _text(await self.client.get(key))
        return self

    def _ukey(self, user: str) -> str:
        return f"{self.prefix}u:{user}"

    def _skey(self, stream_id: str) -> str:
        return f"{self.prefix}s:{stream_id}"

    async def load(self, stream_id: str, users: Iterable[str]) -> Loaded:
        users = list(users)
        vals = await self.client.mget([self._skey(stream_id), *map(self._ukey, users)])
        return Loaded(None if vals[0] is None else StreamRecord.from_json(vals[0]),
                      {u: None if v is None else UserWindow.from_json(v) for u, v in zip(users, vals[1:])})

    async def commit(self, stream_id: str, loaded: Loaded, stream: StreamRecord,
                     users: dict[str, UserWindow | None]) -> None:
        from redis.exceptions import WatchError

        keys = [self._skey(stream_id), *map(self._ukey, users)]
        expected = [0 if loaded.stream is None else loaded.stream.version, *(_expected(loaded, u) for u in users)]
        ttl = max(1, math.ceil(self.config.ttl_s))
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                await pipe.watch(*keys)
                now = await pipe.mget(keys)
                if [0 if v is None else int(json.loads(v)["ver"]) for v in now] != expected:
                    raise Conflict(f"stream {stream_id}")
                pipe.multi()
                stream.version += 1
                pipe.set(keys[0], stream.to_json(), ex=ttl)
                for key, w in zip(keys[1:], users.values()):
                    if w is None:
                        pipe.delete(key)
                    else:
                        w.version += 1
                        pipe.set(key, w.to_json(), ex=ttl)
                await pipe.execute()
        except WatchError:
            raise Conflict(f"stream {stream_id}") from None

    async def close(self) -> None:
        await self.client.aclose()


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


async def open_store(config: StreamConfig, env: dict | None = None) -> SessionStore:
    """The store ``config`` asks for: Redis when it (or ``$SEQGUARD_REDIS_URL``) names one, else in-process."""
    env = os.environ if env is None else env
    if config.redis_url or env.get(REDIS_URL_ENV):
        store = await RedisStore.open(config, redis_client(config, env))
        log.info("ScoreStream state in Redis %s (prefix %r)", _redacted(config.redis_url or env[REDIS_URL_ENV]),
                 config.redis_prefix)
        return store
    log.info("ScoreStream state in process (max %d users, TTL %.0f s): route each user to one replica",
             config.max_users, config.ttl_s)
    return MemoryStore(config)


def state_sizes(window: int, *, item_len: int = 10, answers: int = 64, answer_bytes: int = 210) -> dict[str, int]:
    """Serialized bytes of one user's full window and one stream's record (docs/serving.md's sizes)."""
    w = UserWindow(["x" * item_len] * window, [1_700_000_000_000] * window, ["click"] * window, [1.5] * window,
                   window, 7)
    rec = StreamRecord(10**6, OrderedDict((10**6 - i, b"\0" * answer_bytes) for i in range(answers)), 7)
    return {"user_window": len(w.to_json()), "stream_record": len(rec.to_json())}


__all__: Sequence[str] = (
    "REDIS_PASSWORD_ENV", "REDIS_URL_ENV", "Conflict", "Loaded", "MemoryStore", "RedisStore", "SessionStore",
    "StreamConfig", "StreamRecord", "UserWindow", "open_store", "redis_client", "state_sizes",
)
