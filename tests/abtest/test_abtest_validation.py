"""The canary's false-promotion rate on logged A/A traffic, one `analyze_logs` run a day through
the ledger, against the naive restart-at-look-1 test on the same data (the core of
bench/bench_abtest_validation.py at a small scale)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from crops.abtest.synthlogs import SynthSpec

_PATH = Path(__file__).resolve().parents[2] / "bench" / "bench_abtest_validation.py"
_spec = importlib.util.spec_from_file_location("bench_abtest_validation", _PATH)
assert _spec is not None and _spec.loader is not None
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench  # spawned workers unpickle run_experiment by module name
_spec.loader.exec_module(bench)

SEEDS, USERS = 40, 600


@pytest.mark.slow
def test_the_ledger_keeps_false_promotions_within_alpha_and_the_naive_way_does_not() -> None:
    results = bench.run_many(
        [SynthSpec(users=USERS, seed=s) for s in range(SEEDS)], True, procs=1, label="A/A"
    )
    assert len(results) == SEEDS
    for r in results:
        # every experiment ends within its 5 daily invocations
        assert r["sequential"]["outcome"] in ("promote", "harm", "no_evidence")
        # the naive look is the ledger's look on the same rows: same z, look for look
        for a, b in zip(r["sequential"]["z"], r["naive"]["z"], strict=False):
            assert a == pytest.approx(b, abs=1e-9)
    seq = bench.tally(results, "sequential")["false_promotion"]
    naive = bench.tally(results, "naive")["false_promotion"]
    # alpha / 2 = 0.025 in theory; P(Binomial(40, 0.05) > 6) < 0.01 even at the full alpha
    assert seq["k"] <= 6
    assert naive["rate"] >= seq["rate"]
    assert 0.0 <= seq["ci95"][0] <= seq["rate"] <= seq["ci95"][1] <= 1.0
