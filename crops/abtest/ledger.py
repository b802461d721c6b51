"""The canary ledger: one experiment's sequential looks, kept where a restarted pod finds them.

A canary CronJob runs one look per invocation and spends alpha across days, so the state the
group-sequential test (`crops.evaluate.sequential`) needs to continue at look k+1 cannot live in the
pod: the information fractions of the earlier looks (the boundaries of look k+1 depend on them),
the alpha spent so far, and whether an earlier look already stopped the test. This module owns
that state, as one JSON file per experiment under a root folder (the artifacts volume, or any
`pyarrow.fs` URI for reading), and the rules for changing it:

* An experiment is (control model hash, candidate model hash, start time, policy). Its file is
  named by the (control, candidate) pair, so a new candidate hash starts a new experiment, and
  the same pair under another policy is refused (the error names both fingerprints and the
  differing fields): alpha spent under one policy cannot be continued under another.
* `record_look` is idempotent: the same look index with the same content (digest of the inputs
  and of what was derived from them, timestamps excluded) is a no-op returning the stored look;
  the same index with other content is an error. Looks are appended in order (1, 2, ...), never
  after a stopping decision (promote / rollback) and never beyond the policy's planned looks.
  The alpha spent is checked against the spending function at the look's information fraction,
  so it increases and never exceeds the policy's alpha.
* Overlapping writers are excluded by a lock file next to the ledger, created exclusively: the
  holder's record is written to a private file, then hard-linked to the lock's name (`link`
  fails when the name exists, atomically, on local disks and NFS alike; the lock never appears
  half-written); a second writer fails at once with `LedgerLocked`
  naming the holder (no waiting: the CronJob retries on its next schedule). A lock older than
  `stale_after` is reported as stale and can be broken explicitly (`break_lock`); it is never
  broken silently, since a slow look is indistinguishable from a dead one. Under the lock the
  ledger is re-read before it is changed, and written to a temporary file then renamed over the
  old one, so a writer killed at any point leaves the previous ledger intact.
* Writing to `s3://` (or any non-local filesystem) raises NotImplementedError: S3 through
  pyarrow has no exclusive create or conditional put, so neither the lock nor a
  compare-and-swap of the ledger can be made safe (a lock object with a lease is racy between
  "absent?" and "put": two writers both see it absent and both write). Reading (`status`,
  `Ledger.load`, `open_or_start` of an existing experiment) works on any pyarrow
  filesystem. Keep the writable ledger on the artifacts volume (a PVC, which must allow hard
  links), or add an S3 backend using S3's conditional writes (If-None-Match) through boto3.

Timestamps (start time, `written_at`, lock times) come from the caller or an injectable clock,
and the JSON is written with sorted keys, so the same looks give the same bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, NoReturn

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from crops.evaluate.sequential import CanaryPolicy, Decision, spent_alpha

LEDGER_VERSION = 1
Action = Literal["promote", "hold", "rollback"]
STOPPING: tuple[str, ...] = ("promote", "rollback")
ALPHA_TOL = 1e-12


class LedgerError(Exception):
    """A ledger that cannot be read, started or changed as asked."""


class PolicyMismatch(LedgerError):
    """The experiment's ledger was written under another canary policy."""


class LookConflict(LedgerError):
    """A look that contradicts the ledger (already recorded otherwise, out of order, ...)."""


class LedgerLocked(LedgerError):
    """Another writer holds the experiment's lock."""

    def __init__(self, message: str, holder: LockInfo | None, stale: bool) -> None:
        super().__init__(message)
        self.holder = holder
        self.stale = stale


# --------------------------------------------------------------------------- digests


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no spaces: the form every digest here is taken of."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def digest(obj: Any) -> str:
    """sha256 of the canonical JSON of `obj` (a dict of inputs, a policy, ...)."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def policy_fingerprint(policy: CanaryPolicy | dict[str, Any]) -> str:
    """The digest of the policy with every field filled in (defaults included)."""
    if not isinstance(policy, CanaryPolicy):
        policy = CanaryPolicy.model_validate(policy)
    return digest(policy.model_dump(mode="json"))


def pair_key(control_hash: str, candidate_hash: str) -> str:
    """The ledger file's key: one file per (control, candidate) pair, whatever the policy."""
    return digest({"control": control_hash, "candidate": candidate_hash})[:20]


def experiment_id(control_hash: str, candidate_hash: str, fingerprint: str) -> str:
    return digest({"control": control_hash, "candidate": candidate_hash, "policy": fingerprint})[
        :16
    ]


# --------------------------------------------------------------------------- models


class Experiment(BaseModel):
    """One canary experiment: the two models, when it started, and the policy it runs under."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    control_hash: str = Field(min_length=1)
    candidate_hash: str = Field(min_length=1)
    started_at: datetime
    policy: dict[str, Any]
    policy_fingerprint: str

    @classmethod
    def start(
        cls, control_hash: str, candidate_hash: str, policy: CanaryPolicy, now: datetime
    ) -> Experiment:
        fp = policy_fingerprint(policy)
        return cls(
            id=experiment_id(control_hash, candidate_hash, fp),
            control_hash=control_hash,
            candidate_hash=candidate_hash,
            started_at=now,
            policy=policy.model_dump(mode="json"),
            policy_fingerprint=fp,
        )

    @model_validator(mode="after")
    def _consistent(self) -> Experiment:
        if self.control_hash == self.candidate_hash:
            raise ValueError("control and candidate are the same model hash")
        fp = policy_fingerprint(self.policy)
        if fp != self.policy_fingerprint:
            raise ValueError(
                f"policy fingerprint {self.policy_fingerprint} does not match the stored "
                f"policy (whose fingerprint is {fp}): the ledger was edited or is corrupt"
            )
        if self.id != experiment_id(self.control_hash, self.candidate_hash, fp):
            raise ValueError(f"experiment id {self.id} does not match its hashes and policy")
        return self

    @property
    def canary_policy(self) -> CanaryPolicy:
        return CanaryPolicy.model_validate(self.policy)


class Look(BaseModel):
    """One sequential look as decided: what was analysed and what the test concluded."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    index: int = Field(ge=1, description="1-based look number")
    window_start: datetime = Field(description="data analysed from (inclusive)")
    window_end: datetime = Field(description="data analysed through (exclusive)")
    information_fraction: float = Field(gt=0, le=1, description="t of this look's boundary")
    users: dict[str, int] = Field(description="users per arm, cumulative: control, treatment")
    alpha_spent: float = Field(ge=0, description="cumulative two-sided alpha spent through here")
    nominal_alpha: float = Field(ge=0, description="this look's nominal two-sided level")
    boundary_z: float | None = Field(description="|Z| boundary of this look (None: no stop)")
    z: float | None = Field(description="the primary metric's z statistic (None: no data)")
    action: Action
    reasons: list[str] = Field(min_length=1)
    inputs_digest: str = Field(min_length=1, description="digest of the analysed inputs")
    counts: dict[str, dict[str, int]] = Field(
        default_factory=dict,
        description="rows analysed per table and event day: the next look's late events",
    )
    record: dict[str, Any] = Field(
        default_factory=dict, description="what the look saw, for reports (metrics, guardrails)"
    )
    written_at: datetime

    @model_validator(mode="after")
    def _valid(self) -> Look:
        if self.window_end < self.window_start:
            raise ValueError("the look's window ends before it starts")
        if set(self.users) != {"control", "treatment"} or min(self.users.values()) < 0:
            raise ValueError(f"users must count control and treatment, got {self.users}")
        for name in ("alpha_spent", "nominal_alpha", "boundary_z", "z"):
            v = getattr(self, name)
            if v is not None and not math.isfinite(v):
                raise ValueError(f"{name} must be finite, got {v}")
        return self

    @classmethod
    def from_decision(
        cls,
        decision: Decision,
        policy: CanaryPolicy,
        *,
        window_start: datetime,
        window_end: datetime,
        users: dict[str, int],
        z: float | None,
        inputs: Any,
        written_at: datetime,
        counts: dict[str, dict[str, int]] | None = None,
        record: dict[str, Any] | None = None,
    ) -> Look:
        """The look `canary.decide` concluded; `inputs` (JSON-able) is digested, not stored."""
        return cls(
            index=decision.look,
            window_start=window_start,
            window_end=window_end,
            information_fraction=decision.information_fraction,
            users=dict(users),
            alpha_spent=spent_alpha(decision.information_fraction, policy.alpha, policy.spending),
            nominal_alpha=decision.nominal_alpha,
            boundary_z=decision.boundary_z,
            z=z,
            action=decision.action,
            reasons=list(decision.reasons),
            inputs_digest=digest(inputs),
            counts=counts or {},
            record=record or {},
            written_at=written_at,
        )

    @property
    def content_digest(self) -> str:
        """Digest of everything but `written_at`: equal digests are the same look."""
        return digest(self.model_dump(mode="json", exclude={"written_at"}))


class NextLook(BaseModel):
    """What the sequential test needs to take look `index`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    index: int
    history: list[float] = Field(description="information fractions of looks 1..index-1")
    alpha_spent: float = Field(description="alpha spent through look index-1")
    window_start: datetime | None = Field(description="where the previous look's data ended")


class LockInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    holder: str
    token: str
    acquired_at: datetime


class LedgerFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ledger_version: int = LEDGER_VERSION
    experiment: Experiment
    looks: list[Look] = Field(default_factory=list)


# --------------------------------------------------------------------------- storage


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _resolve(root: str | os.PathLike[str]) -> tuple[Any, str, bool]:
    """(pyarrow filesystem, path, is_local) of a folder or filesystem URI."""
    root = os.fspath(root)
    if "://" not in root:
        return None, str(Path(root).absolute()), True
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(root)
    return fs, path.rstrip("/"), isinstance(fs, pafs.LocalFileSystem)


def _read_bytes(fs: Any, path: str) -> bytes | None:
    if fs is None:
        try:
            return Path(path).read_bytes()
        except FileNotFoundError:
            return None
    import pyarrow.fs as pafs

    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(path) as fh:
        return fh.read()


def _atomic_write(path: str, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync, then rename over it."""
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    with contextlib.suppress(OSError):  # make the rename itself durable
        fd = os.open(os.path.dirname(path), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _dump(state: LedgerFile) -> bytes:
    return (json.dumps(state.model_dump(mode="json"), indent=2, sort_keys=True) + "\n").encode()


def _parse(data: bytes, path: str) -> LedgerFile:
    try:
        raw = json.loads(data)
    except ValueError as e:
        raise LedgerError(f"ledger {path} is not JSON: {e}") from e
    if isinstance(raw, dict) and raw.get("ledger_version") != LEDGER_VERSION:
        raise LedgerError(
            f"ledger {path} has version {raw.get('ledger_version')!r}, this code reads "
            f"{LEDGER_VERSION}"
        )
    try:
        return LedgerFile.model_validate(raw)
    except ValidationError as e:
        raise LedgerError(f"ledger {path} is not a valid ledger: {e}") from e


def _policy_diff(a: dict[str, Any], b: dict[str, Any]) -> str:
    keys = sorted(set(a) | set(b))
    diffs = [f"{k} {a.get(k)!r} vs {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]
    return ", ".join(diffs) or "no field differs (the policy schema changed)"


# --------------------------------------------------------------------------- the ledger


class Ledger:
    """One experiment's ledger file; change it only through `record_look`."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        state: LedgerFile,
        *,
        clock: Callable[[], datetime] = _utcnow,
        stale_after: timedelta = timedelta(hours=6),
    ) -> None:
        self.root = os.fspath(root)
        self.fs, self._dir, self.local = _resolve(root)
        self.state = state
        self.clock = clock
        self.stale_after = stale_after
        self._token: str | None = None  # set while this instance holds the lock
        key = pair_key(state.experiment.control_hash, state.experiment.candidate_hash)
        self.path = f"{self._dir}/{key}.json"
        self.lock_path = f"{self._dir}/{key}.lock"

    # ---------------------------------------------------------------- opening

    @classmethod
    def load(
        cls, root: str | os.PathLike[str], control_hash: str, candidate_hash: str, **kw: Any
    ) -> Ledger | None:
        """The stored ledger of the pair, or None; read-only use works on any filesystem."""
        fs, d, _ = _resolve(root)
        path = f"{d}/{pair_key(control_hash, candidate_hash)}.json"
        data = _read_bytes(fs, path)
        return None if data is None else cls(root, _parse(data, path), **kw)

    @classmethod
    def open_or_start(
        cls,
        root: str | os.PathLike[str],
        control_hash: str,
        candidate_hash: str,
        policy: CanaryPolicy,
        now: datetime,
        **kw: Any,
    ) -> Ledger:
        """The pair's experiment, started at `now` under `policy` if it has no ledger yet.

        A stored ledger under another policy raises PolicyMismatch; a new candidate hash is
        another pair, hence a new experiment (the old one's ledger stays as it was).
        """
        new = cls(
            root,
            LedgerFile(experiment=Experiment.start(control_hash, candidate_hash, policy, now)),
            **kw,
        )
        data = _read_bytes(new.fs, new.path)  # renames are atomic: no lock to read
        if data is None:
            with new.lock():  # create it, unless an overlapping run just did
                data = _read_bytes(new.fs, new.path)
                if data is None:
                    new._write()
                    return new
        new.state = _parse(data, new.path)
        stored = new.state.experiment
        fp = policy_fingerprint(policy)
        if stored.policy_fingerprint != fp:
            raise PolicyMismatch(
                f"experiment {stored.id} (control {control_hash}, candidate {candidate_hash}) "
                f"was started on {stored.started_at.isoformat()} under policy "
                f"{stored.policy_fingerprint}, not the requested policy {fp} "
                f"({_policy_diff(stored.policy, policy.model_dump(mode='json'))}): alpha spent "
                f"under one policy cannot be continued under another; rerun with the stored "
                f"policy, or deploy a new candidate to start a new experiment ({new.path})"
            )
        return new

    # ---------------------------------------------------------------- reading

    @property
    def experiment(self) -> Experiment:
        return self.state.experiment

    @property
    def policy(self) -> CanaryPolicy:
        return self.experiment.canary_policy

    @property
    def looks(self) -> list[Look]:
        return list(self.state.looks)

    @property
    def alpha_spent(self) -> float:
        return self.state.looks[-1].alpha_spent if self.state.looks else 0.0

    @property
    def last_action(self) -> Action | None:
        return self.state.looks[-1].action if self.state.looks else None

    @property
    def finished(self) -> bool:
        looks = self.state.looks
        return bool(looks) and (looks[-1].action in STOPPING or len(looks) >= self.policy.looks)

    def next_look(self) -> NextLook | None:
        """The look to take next, or None when the test has stopped or used its last look."""
        if self.finished:
            return None
        looks = self.state.looks
        return NextLook(
            index=len(looks) + 1,
            history=[lk.information_fraction for lk in looks],
            alpha_spent=self.alpha_spent,
            window_start=looks[-1].window_end if looks else None,
        )

    def to_json(self) -> bytes:
        return _dump(self.state)

    def refresh(self) -> None:
        """Re-read the stored looks (call under the lock, before deciding the next look)."""
        data = _read_bytes(self.fs, self.path)
        if data is None:
            raise LedgerError(f"ledger {self.path} disappeared; start the experiment again")
        stored = _parse(data, self.path)
        if stored.experiment != self.experiment:
            raise LedgerError(f"ledger {self.path} now holds another experiment")
        self.state = stored

    # ---------------------------------------------------------------- writing

    def _require_local(self) -> None:
        if not self.local:
            raise NotImplementedError(
                f"cannot write the ledger under {self.root}: pyarrow's filesystems other than "
                "the local one have no exclusive create or conditional put, so overlapping "
                "writers cannot be excluded; keep the ledger on the artifacts volume"
            )

    def _read_lock(self) -> LockInfo | None:
        try:
            return LockInfo.model_validate_json(Path(self.lock_path).read_bytes())
        except (OSError, ValidationError):
            return None

    def lock_holder(self) -> LockInfo | None:
        """Who holds the lock now (None: nobody, or a lock file still being written)."""
        return self._read_lock()

    def is_stale(self, held: LockInfo) -> bool:
        """A lock older than `stale_after`, or held by a process of this host that is gone."""
        if self.clock() - held.acquired_at > self.stale_after:
            return True
        host, _, pid = held.holder.rpartition(":")
        if host == socket.gethostname() and pid.isdigit():
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
        return False

    def stale_holder(self) -> LockInfo | None:
        """The holder of a stale lock (see `is_stale`), or None (no lock, or a live one)."""
        held = self._read_lock()
        return held if held is not None and self.is_stale(held) else None

    def _refuse(self, held: LockInfo | None) -> NoReturn:
        if held is None:
            raise LedgerLocked(
                f"ledger {self.path} is locked ({self.lock_path}, holder unreadable: the "
                "lock file is corrupt); break it with crops.abtest.ledger.break_lock if no "
                "run is in progress",
                None,
                False,
            )
        age = self.clock() - held.acquired_at
        stale = self.is_stale(held)
        raise LedgerLocked(
            f"ledger {self.path} is locked by {held.holder} since "
            f"{held.acquired_at.isoformat()} ({age} ago)"
            + (
                f"; the lock is stale (older than {self.stale_after}, or its process is gone): "
                "if that run is dead, break it (`crops abtest analyze --break-stale-lock`, or "
                "crops.abtest.ledger.break_lock)"
                if stale
                else "; another run is taking this experiment's look"
            ),
            held,
            stale,
        )

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the experiment's lock (re-entrant within this instance); fail at once if taken."""
        self._require_local()
        if self._token is not None:
            yield
            return
        os.makedirs(self._dir, exist_ok=True)
        info = LockInfo(
            holder=f"{socket.gethostname()}:{os.getpid()}",
            token=uuid.uuid4().hex,
            acquired_at=self.clock(),
        )
        # the lock appears whole: written to a private file, then hard-linked to the lock's
        # name (link fails if the name exists), so no reader sees a half-written holder
        tmp = f"{self.lock_path}.{info.token}.tmp"
        with open(tmp, "w") as fh:
            fh.write(info.model_dump_json())
            fh.flush()
            os.fsync(fh.fileno())
        try:
            for _ in range(5):  # a lock released between our link and our read: try again
                try:
                    os.link(tmp, self.lock_path)
                    break
                except FileExistsError:
                    held = self._read_lock()
                    if held is None and os.path.exists(self.lock_path):
                        held = self._read_lock()  # re-taken between the two looks: read again
                        if held is None and os.path.exists(self.lock_path):
                            self._refuse(None)  # there and unreadable twice: corrupt
                    if held is not None:
                        self._refuse(held)
            else:
                self._refuse(self._read_lock())
        finally:
            os.unlink(tmp)
        self._token = info.token
        try:
            yield
        finally:
            self._token = None
            held = self._read_lock()
            if held is not None and held.token == info.token:
                os.unlink(self.lock_path)

    def _write(self) -> None:
        held = self._read_lock()
        if self._token is None or held is None or held.token != self._token:
            raise LedgerLocked(
                f"the lock on {self.path} was broken while this run held it"
                + (f" (now held by {held.holder})" if held else "")
                + "; nothing written",
                held,
                False,
            )
        _atomic_write(self.path, _dump(self.state))

    def _check(self, look: Look) -> None:
        policy, looks = self.policy, self.state.looks
        if look.index > policy.looks:
            raise LookConflict(f"look {look.index} is beyond the policy's {policy.looks} looks")
        if look.index != len(looks) + 1:
            raise LookConflict(
                f"look {look.index} is out of order: the ledger holds looks 1..{len(looks)}, "
                f"the next is {len(looks) + 1}"
            )
        if self.finished:
            raise LookConflict(
                f"the experiment stopped at look {len(looks)} ({looks[-1].action}): "
                f"no look {look.index}"
            )
        if look.index == policy.looks and look.information_fraction != 1.0:
            raise LookConflict(f"the final look {look.index} must be at information fraction 1")
        prev = looks[-1] if looks else None
        if prev is not None:
            if look.information_fraction <= prev.information_fraction:
                raise LookConflict(
                    f"look {look.index}'s information fraction {look.information_fraction} "
                    f"does not exceed look {prev.index}'s {prev.information_fraction}"
                )
            if look.window_start < prev.window_end and look.window_start != prev.window_start:
                raise LookConflict(
                    f"look {look.index}'s window starts at {look.window_start.isoformat()}, "
                    f"inside look {prev.index}'s (through {prev.window_end.isoformat()})"
                )
            if look.window_end <= prev.window_end:
                raise LookConflict(
                    f"look {look.index} analyses through {look.window_end.isoformat()}, not "
                    f"past look {prev.index} (through {prev.window_end.isoformat()})"
                )
        expected = spent_alpha(look.information_fraction, policy.alpha, policy.spending)
        if abs(look.alpha_spent - expected) > ALPHA_TOL:
            raise LookConflict(
                f"look {look.index} claims alpha spent {look.alpha_spent}, the policy's "
                f"{policy.spending} spending gives {expected} at t = {look.information_fraction}"
            )

    def record_look(self, look: Look) -> Look:
        """Append `look` (under the lock); the same look again returns the stored one.

        Raises LookConflict when look k is already recorded with other content, or the look
        does not follow the ledger; LedgerLocked when another writer holds the lock.
        """
        with self.lock():
            self.refresh()
            stored = self.state
            if look.index <= len(stored.looks):
                old = stored.looks[look.index - 1]
                if old.content_digest == look.content_digest:
                    return old
                what = (
                    "other inputs"
                    if old.inputs_digest != look.inputs_digest
                    else "the same inputs but other results"
                )
                raise LookConflict(
                    f"look {look.index} already recorded with {what} (at "
                    f"{old.written_at.isoformat()}, {old.action}; inputs {old.inputs_digest[:12]} "
                    f"vs {look.inputs_digest[:12]})"
                )
            self._check(look)
            self.state = LedgerFile(experiment=stored.experiment, looks=[*stored.looks, look])
            try:
                self._write()
            except BaseException:
                self.state = stored
                raise
            return look


def break_lock(
    root: str | os.PathLike[str],
    control_hash: str,
    candidate_hash: str,
    *,
    force: bool = False,
    stale_after: timedelta = timedelta(hours=6),
    clock: Callable[[], datetime] = _utcnow,
) -> LockInfo | None:
    """Remove the pair's lock if stale (or `force`); returns the broken holder, None if none.

    Refuses (LedgerLocked) a lock younger than `stale_after` unless forced: a slow run still
    holding it would otherwise be overtaken.
    """
    _, d, local = _resolve(root)
    if not local:
        raise NotImplementedError(f"no locks outside the local filesystem ({root})")
    path = Path(f"{d}/{pair_key(control_hash, candidate_hash)}.lock")
    if not path.exists():
        return None
    try:
        held: LockInfo | None = LockInfo.model_validate_json(path.read_bytes())
    except (OSError, ValidationError):
        held = None
    if held is not None and not force:
        age = clock() - held.acquired_at
        if age <= stale_after:
            raise LedgerLocked(
                f"lock {path} held by {held.holder} for {age}, not older than {stale_after}: "
                "not broken (force=True to break it anyway)",
                held,
                False,
            )
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return held or LockInfo(holder="unknown (unreadable lock)", token="", acquired_at=clock())


# --------------------------------------------------------------------------- status


def status(root: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """One row per experiment ledger under `root` (any pyarrow filesystem), oldest first."""
    fs, d, local = _resolve(root)
    paths: list[str]
    if fs is None:
        paths = [str(p) for p in Path(d).glob("*.json")] if Path(d).is_dir() else []
    else:
        import pyarrow.fs as pafs

        infos = fs.get_file_info(pafs.FileSelector(d, allow_not_found=True))
        paths = [i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".json")]
    rows = []
    for path in paths:
        data = _read_bytes(fs, path)
        if data is None:
            continue
        state = _parse(data, path)
        exp, looks = state.experiment, state.looks
        last = looks[-1] if looks else None
        lock = None
        if local:
            lock_path = Path(path[: -len(".json")] + ".lock")
            if lock_path.exists():
                try:
                    lock = LockInfo.model_validate_json(lock_path.read_bytes()).holder
                except (OSError, ValidationError):
                    lock = "unknown"
        rows.append(
            {
                "experiment": exp.id,
                "control": exp.control_hash,
                "candidate": exp.candidate_hash,
                "started_at": exp.started_at.isoformat(),
                "policy": exp.policy_fingerprint[:12],
                "looks": f"{len(looks)}/{exp.policy['looks']}",
                "alpha_spent": last.alpha_spent if last else 0.0,
                "alpha": exp.policy["alpha"],
                "information_fraction": last.information_fraction if last else 0.0,
                "last_decision": last.action if last else None,
                "last_written_at": last.written_at.isoformat() if last else None,
                "locked_by": lock,
            }
        )
    rows.sort(key=lambda r: (r["started_at"], r["experiment"]))
    return rows


def format_status(rows: list[dict[str, Any]]) -> str:
    """The rows of `status` as a fixed-width table."""
    if not rows:
        return "no experiments in the ledger"
    cols = [
        "experiment",
        "control",
        "candidate",
        "started_at",
        "looks",
        "alpha_spent",
        "last_decision",
        "locked_by",
    ]

    def cell(r: dict[str, Any], c: str) -> str:
        v = r[c]
        if c == "alpha_spent":
            return f"{v:.4g} of {r['alpha']:g}"
        return "-" if v is None else str(v)

    table = [cols, *[[cell(r, c) for c in cols] for r in rows]]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in table
    )
