"""The canary ledger: looks across pods, idempotent reruns, refused conflicts, one writer."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from crops.abtest import ledger as L
from crops.abtest.ledger import (
    Ledger,
    LedgerError,
    LedgerLocked,
    Look,
    LookConflict,
    PolicyMismatch,
    break_lock,
    format_status,
    status,
)
from crops.evaluate.sequential import CanaryPolicy, Decision, boundaries, nominal_level, spent_alpha

T0 = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)
CTL, CAND = "sha256:control-aaaa", "sha256:candidate-bbbb"
POLICY = CanaryPolicy(looks=5)


def make_look(k: int, policy: CanaryPolicy = POLICY, action: str = "hold", **inputs) -> Look:
    """Look k as the CronJob would record it on day k (inputs beyond the day: `inputs`)."""
    frac = k / policy.looks
    nominal, c, t = nominal_level(k, policy, frac, [j / policy.looks for j in range(1, k)])
    decision = Decision(
        action=action,
        reasons=[f"look {k} reason"],
        look=k,
        looks=policy.looks,
        information_fraction=t,
        nominal_alpha=nominal,
        boundary_z=None if math.isinf(c) else c,
    )
    return Look.from_decision(
        decision,
        policy,
        window_start=T0,
        window_end=T0 + timedelta(days=k),
        users={"control": 400 * k, "treatment": 410 * k},
        z=0.3 * k,
        inputs={"day": k, **inputs},
        written_at=T0 + timedelta(days=k, minutes=5),
    )


def start(root, candidate: str = CAND, policy: CanaryPolicy = POLICY, **kw) -> Ledger:
    return Ledger.open_or_start(root, CTL, candidate, policy, T0, **kw)


def test_start_then_five_looks_spend_alpha_across_pods(tmp_path):
    led = start(tmp_path)
    assert Path(led.path).exists() and not Path(led.lock_path).exists()
    assert led.next_look().model_dump() == {
        "index": 1,
        "history": [],
        "alpha_spent": 0.0,
        "window_start": None,
    }
    spent = [0.0]
    for k in range(1, 6):
        # every look is a new pod: reopen (a later `now` keeps the stored start time)
        led = Ledger.open_or_start(tmp_path, CTL, CAND, POLICY, T0 + timedelta(days=k))
        assert led.experiment.started_at == T0
        nxt = led.next_look()
        assert nxt.index == k and nxt.alpha_spent == spent[-1]
        # the stored history is what the sequential test needs to continue at look k
        _, c, t = nominal_level(k, POLICY, k / 5, nxt.history)
        assert c == boundaries((*nxt.history, t), POLICY.alpha, POLICY.spending)[-1]
        look = led.record_look(make_look(k))
        assert look.alpha_spent > spent[-1]
        assert look.alpha_spent <= POLICY.alpha
        spent.append(look.alpha_spent)
    assert spent[-1] == pytest.approx(POLICY.alpha, abs=1e-15)
    assert led.next_look() is None and led.finished
    reread = Ledger.load(tmp_path, CTL, CAND)
    assert [lk.index for lk in reread.looks] == [1, 2, 3, 4, 5]
    assert [lk.information_fraction for lk in reread.looks] == [0.2, 0.4, 0.6, 0.8, 1.0]
    with pytest.raises(LookConflict, match="beyond the policy's 5 looks"):
        led.record_look(make_look(5).model_copy(update={"index": 6}))


def test_next_look_continues_the_window_and_stops_after_a_stopping_decision(tmp_path):
    led = start(tmp_path)
    led.record_look(make_look(1))
    assert led.next_look().window_start == T0 + timedelta(days=1)
    led.record_look(make_look(2, action="rollback"))
    assert led.next_look() is None and led.last_action == "rollback"
    with pytest.raises(LookConflict, match="stopped at look 2 \\(rollback\\)"):
        led.record_look(make_look(3))


def test_rerun_of_the_same_look_is_a_no_op(tmp_path):
    led = start(tmp_path)
    first = led.record_look(make_look(1))
    before = Path(led.path).read_bytes()
    again = make_look(1).model_copy(update={"written_at": T0 + timedelta(days=1, hours=3)})
    # another pod, after a crash past the write
    stored = Ledger.open_or_start(tmp_path, CTL, CAND, POLICY, T0).record_look(again)
    assert stored == first and stored.written_at == first.written_at
    assert Path(led.path).read_bytes() == before


def test_conflicting_rerun_is_refused(tmp_path):
    led = start(tmp_path)
    led.record_look(make_look(1))
    before = Path(led.path).read_bytes()
    with pytest.raises(LookConflict, match="look 1 already recorded with other inputs"):
        led.record_look(make_look(1, extra_rows=12))
    other_result = make_look(1).model_copy(update={"action": "promote"})
    with pytest.raises(LookConflict, match="already recorded with the same inputs but other"):
        led.record_look(other_result)
    assert Path(led.path).read_bytes() == before


def test_out_of_order_and_inconsistent_looks_are_refused(tmp_path):
    led = start(tmp_path)
    with pytest.raises(LookConflict, match="look 2 is out of order"):
        led.record_look(make_look(2))
    bad_alpha = make_look(1).model_copy(update={"alpha_spent": 0.01})
    with pytest.raises(LookConflict, match="claims alpha spent 0.01"):
        led.record_look(bad_alpha)
    led.record_look(make_look(1))
    back = make_look(2).model_copy(update={"information_fraction": 0.1})
    with pytest.raises(LookConflict, match="does not exceed look 1's"):
        led.record_look(back)
    same_day = make_look(2).model_copy(update={"window_end": T0 + timedelta(days=1)})
    with pytest.raises(LookConflict, match="not past look 1"):
        led.record_look(same_day)
    assert len(Ledger.load(tmp_path, CTL, CAND).looks) == 1


def test_new_candidate_starts_a_new_experiment(tmp_path):
    a = start(tmp_path)
    a.record_look(make_look(1))
    b = start(tmp_path, candidate="sha256:candidate-cccc")
    assert b.experiment.id != a.experiment.id and b.path != a.path
    assert b.looks == [] and b.next_look().index == 1
    assert len(Ledger.load(tmp_path, CTL, CAND).looks) == 1  # the old one is untouched
    rows = status(tmp_path)
    assert {r["candidate"]: r["looks"] for r in rows} == {
        CAND: "1/5",
        "sha256:candidate-cccc": "0/5",
    }
    # the id is deterministic in (control, candidate, policy)
    again = Ledger.open_or_start(tmp_path / "elsewhere", CTL, CAND, POLICY, T0 + timedelta(1))
    assert again.experiment.id == a.experiment.id


def test_same_pair_under_another_policy_is_refused(tmp_path):
    start(tmp_path).record_look(make_look(1))
    before = Path(Ledger.load(tmp_path, CTL, CAND).path).read_bytes()
    other = CanaryPolicy(looks=5, alpha=0.1)
    with pytest.raises(PolicyMismatch) as err:
        start(tmp_path, policy=other)
    msg = str(err.value)
    assert L.policy_fingerprint(POLICY) in msg and L.policy_fingerprint(other) in msg
    assert "alpha 0.05 vs 0.1" in msg and "cannot be continued" in msg
    assert Path(Ledger.load(tmp_path, CTL, CAND).path).read_bytes() == before


def test_a_tampered_or_foreign_ledger_is_refused(tmp_path):
    led = start(tmp_path)
    raw = json.loads(Path(led.path).read_text())
    raw["experiment"]["policy"]["alpha"] = 0.2  # edited without its fingerprint
    Path(led.path).write_text(json.dumps(raw))
    with pytest.raises(LedgerError, match="policy fingerprint .* does not match"):
        Ledger.load(tmp_path, CTL, CAND)
    Path(led.path).write_text("{not json")
    with pytest.raises(LedgerError, match="is not JSON"):
        start(tmp_path)
    raw["ledger_version"] = 99
    Path(led.path).write_text(json.dumps(raw))
    with pytest.raises(LedgerError, match="version 99"):
        status(tmp_path)


def _race(root: str, inputs: int, barrier, results) -> None:
    led = Ledger.open_or_start(root, CTL, CAND, POLICY, T0)
    barrier.wait()
    try:
        led.record_look(make_look(1, writer=inputs))
        results.put(("won", inputs))
    except (LedgerLocked, LookConflict) as e:
        results.put((type(e).__name__, str(e)))


def _check_race(outcomes, root) -> None:
    won = [o for o in outcomes if o[0] == "won"]
    assert len(won) == 1, outcomes
    for kind, msg in outcomes:
        if kind == "LedgerLocked":
            assert "is locked by" in msg and "another run is taking" in msg
        elif kind == "LookConflict":
            assert "look 1 already recorded with other inputs" in msg
    looks = Ledger.load(root, CTL, CAND).looks
    assert len(looks) == 1 and looks[0].inputs_digest == L.digest({"day": 1, "writer": won[0][1]})
    assert not Path(Ledger.load(root, CTL, CAND).lock_path).exists()


def test_two_threads_racing_for_a_look_one_wins(tmp_path):
    import queue

    for round_ in range(10):
        root = str(tmp_path / str(round_))
        start(root)
        barrier, results = threading.Barrier(2, timeout=60), queue.Queue()
        threads = [
            threading.Thread(target=_race, args=(root, i, barrier, results)) for i in range(2)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        _check_race([results.get_nowait() for _ in threads], root)


def test_processes_racing_for_a_look_one_wins(tmp_path):
    ctx = mp.get_context("fork")
    root = str(tmp_path)
    start(root)
    barrier, results = ctx.Barrier(3, timeout=60), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(root, i, barrier, results)) for i in range(3)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    _check_race(outcomes, root)


def test_a_writer_killed_between_read_and_write_leaves_the_ledger(tmp_path, monkeypatch):
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    for root in (clean, crashed):
        led = start(root)
        led.record_look(make_look(1))
        led.record_look(make_look(2))
    led = Ledger.open_or_start(crashed, CTL, CAND, POLICY, T0)
    before = Path(led.path).read_bytes()

    def killed(src, dst):
        raise KeyboardInterrupt("killed after writing the temporary file, before the rename")

    with monkeypatch.context() as m:
        m.setattr(os, "replace", killed)
        with pytest.raises(KeyboardInterrupt):
            led.record_look(make_look(3))
    assert Path(led.path).read_bytes() == before
    assert len(led.looks) == 2  # the in-memory copy rolled back too
    assert sorted(p.name for p in crashed.iterdir()) == [Path(led.path).name]  # no temp, no lock

    # a hard kill leaves its lock: the rerun is refused until the stale lock is broken
    clock = [T0 + timedelta(days=3)]
    dead = Ledger.open_or_start(crashed, CTL, CAND, POLICY, T0, clock=lambda: clock[0])
    held = dead.lock()
    held.__enter__()  # never exited: the process died holding it
    fresh = Ledger.open_or_start(crashed, CTL, CAND, POLICY, T0, clock=lambda: clock[0])
    with pytest.raises(LedgerLocked, match="another run is taking") as err:
        fresh.record_look(make_look(3))
    assert not err.value.stale and err.value.holder.holder.endswith(f":{os.getpid()}")
    with pytest.raises(LedgerLocked, match="not broken"):
        break_lock(crashed, CTL, CAND, clock=lambda: clock[0])
    clock[0] += timedelta(hours=7)
    with pytest.raises(LedgerLocked, match="the lock is stale") as err:
        fresh.record_look(make_look(3))
    assert err.value.stale
    assert status(crashed)[0]["locked_by"] == err.value.holder.holder
    assert break_lock(crashed, CTL, CAND, clock=lambda: clock[0]) == err.value.holder
    # the dead writer's token no longer matches: it cannot write behind the new one's back
    dead.state.looks.append(make_look(3))
    with pytest.raises(LedgerLocked, match="broken while this run held it"):
        dead._write()

    fresh.record_look(make_look(3))
    Ledger.open_or_start(clean, CTL, CAND, POLICY, T0).record_look(make_look(3))
    assert (crashed / Path(led.path).name).read_bytes() == (
        clean / Path(led.path).name
    ).read_bytes()

    # with real timestamps the two differ in written_at only
    late = make_look(4).model_copy(update={"written_at": datetime.now(UTC)})
    Ledger.load(crashed, CTL, CAND).record_look(late)
    Ledger.load(clean, CTL, CAND).record_look(make_look(4))

    def without_times(root):
        raw = json.loads((root / Path(led.path).name).read_text())
        for look in raw["looks"]:
            look.pop("written_at")
        return raw

    assert without_times(crashed) == without_times(clean)


def test_status_rows_and_table(tmp_path):
    assert status(tmp_path / "missing") == []
    assert format_status([]) == "no experiments in the ledger"
    led = start(tmp_path)
    led.record_look(make_look(1))
    led.record_look(make_look(2, action="promote"))
    (row,) = status(tmp_path)
    assert row["experiment"] == led.experiment.id
    assert row["looks"] == "2/5" and row["last_decision"] == "promote"
    assert row["alpha_spent"] == spent_alpha(0.4, 0.05, "obrien-fleming")
    assert row["locked_by"] is None
    # status reads through pyarrow filesystem URIs too
    assert status(f"file://{tmp_path}") == [row]
    table = format_status([row])
    assert led.experiment.id in table and "promote" in table and "of 0.05" in table


def test_writes_outside_the_local_filesystem_are_not_implemented():
    with pytest.raises(NotImplementedError, match="no exclusive create or conditional put"):
        start("mock:///ledgers")
    with pytest.raises(NotImplementedError):
        break_lock("mock:///ledgers", CTL, CAND)
    assert status("mock:///ledgers") == []


def test_same_model_as_control_and_candidate_is_refused(tmp_path):
    with pytest.raises(ValueError, match="same model hash"):
        Ledger.open_or_start(tmp_path, CTL, CTL, POLICY, T0)
