"""The contracts' row validation (`crops.schema.check_rows`) computed fast, on runs of rows.

For frames whose columns hold exactly the contract's types (what `crops serve --request-log`
and the apps write; `crops.abtest.logs` reads them with polars), `split_rows` gives the split
and the reasons of `check_rows`, with the contract's own rule expressions
(`crops.schema._row_reasons`). The search log's group rules (a session's timestamps, duplicate
(request_id, video_id), a request's odd query/session/user) cost a hash group-by over every row
each; logs keep a request's rows and a session's rows together, so they are decided on runs of
consecutive rows instead, and the rows of any request or session that is not one clean run are
checked with the rule's own expression. Each rule is replaced only when it is, expression for
expression, the one known here (`meta.eq`), so a change of the contract's rules falls back to
the rules as written. The run helpers (`run_starts`, `chunk_lengths`, `like_chunks`) serve the
A/B analysis's own per-request work as well.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from crops.schema import _row_reasons

SEARCH = "search_log"


def chunk_lengths(df: pl.DataFrame) -> list[int]:
    """Row counts of the chunks of `df`'s first column (all columns alike in frames read here)."""
    if df.width == 0:
        return [df.height]
    return [len(c) for c in df.to_series(0).get_chunks()]


def like_chunks(values: np.ndarray | pl.Series, name: str, lengths: list[int]) -> pl.Series:
    """`values` as a Series cut into chunks of `lengths` rows (zero-copy slices).

    A column chunked unlike the rest of a frame makes polars rechunk the whole frame at the
    next select or filter (a copy of every column): masks and new columns go in cut alike.
    """
    s = (values if isinstance(values, pl.Series) else pl.Series(values)).alias(name)
    if len(lengths) <= 1:
        return s
    parts, start = [], 0
    for n in lengths:
        parts.append(s.slice(start, n))
        start += n
    return pl.concat(parts, rechunk=False)


def split_rows(kind: str, df: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(valid rows, quarantined rows with `reason`): `check_rows` on a table without flags.

    The rules' conditions are evaluated as booleans on every row, and the reason strings
    (`check_rows`'s concatenation) built for the rows that break one: a string column of nulls
    per rule over every row is what costs.
    """
    exprs = _row_reasons(kind, df, None)
    lengths = chunk_lengths(df)
    source = df
    if kind == SEARCH:
        exprs, masks = _search_group_rules(df, exprs)
        source = df.with_columns(like_chunks(m, n, lengths) for n, m in masks.items())
    rules = _conditions(exprs)
    if rules is None:  # not all in the when(bad).then(reason) form: as check_rows does it
        flags = source
        candidates = np.ones(df.height, dtype=bool)
    else:
        names = [f"_bad_{i}" for i in range(len(rules))]
        flags = source.select(
            cond.fill_null(False).alias(n) for n, (cond, _) in zip(names, rules, strict=True)
        )
        candidates = flags.select(pl.any_horizontal(pl.all())).to_series().to_numpy()
        exprs = [_rule(pl.col(n), reason) for n, (_, reason) in zip(names, rules, strict=True)]
    empty = df.clear().with_columns(pl.lit(None, pl.String).alias("reason"))
    if not exprs or not candidates.any():
        return df, empty
    reason = pl.concat_str(exprs, separator="; ", ignore_nulls=True)
    reason = pl.when(reason == "").then(None).otherwise(reason)
    sub = flags if candidates.all() else flags.filter(like_chunks(candidates, "", lengths))
    reasons = sub.select(reason.alias("reason")).to_series()
    rows = np.flatnonzero(candidates)
    kept = reasons.is_not_null().to_numpy()
    if not kept.all():
        rows, reasons = rows[kept], reasons.filter(pl.Series(kept))
    if len(rows) == 0:
        return df, empty
    bad_mask = np.zeros(df.height, dtype=bool)
    bad_mask[rows] = True
    bad = df.filter(like_chunks(bad_mask, "", lengths)).rechunk().with_columns(reasons)
    return df.filter(like_chunks(~bad_mask, "", lengths)), bad


def _conditions(exprs: list[pl.Expr]) -> list[tuple[pl.Expr, str]] | None:
    """Each rule `when(bad).then(reason).otherwise(None)` as (bad, reason); None if one is not."""
    out = []
    for e in exprs:
        try:
            parts = e.meta.pop()
            if len(parts) != 3:
                return None
            bad, then = parts[0], parts[2]
            reason = pl.select(then).item()
        except Exception:  # noqa: BLE001 - another shape of rule: the general way
            return None
        if not isinstance(reason, str) or not _rule(bad, reason).meta.eq(e):
            return None
        out.append((bad, reason))
    return out


def _rule(bad: pl.Expr, reason: str) -> pl.Expr:
    return pl.when(bad).then(pl.lit(reason)).otherwise(None)


def _known_search_rules() -> dict[str, tuple[pl.Expr, str]]:
    """The search log's group rules as `crops.schema` states them: name -> (condition, reason)."""
    c = pl.col
    rules = {
        "ts": (
            c("ts") < c("ts").cum_max().shift(1).over("session_id"),
            "ts earlier than a previous row of its session",
        ),
        "dup": (
            c("request_id").is_not_null()
            & ~pl.struct("request_id", "video_id").is_first_distinct(),
            "duplicate (request_id, video_id)",
        ),
    }
    for col in ("query", "session_id", "user_id"):
        odd = c(col) != c(col).mode().first().over("request_id")
        if col == "query":
            odd = odd & (c(col).str.strip_chars().str.len_bytes() > 0)
        rules[col] = (odd, f"{col} differs from the rest of its request")
    return rules


def _search_group_rules(
    df: pl.DataFrame, exprs: list[pl.Expr]
) -> tuple[list[pl.Expr], dict[str, np.ndarray]]:
    """Replace the known group rules among `exprs` by the same verdicts computed on runs.

    Returns the rules, a replaced one reading column ``_rule_<name>``, and those columns.
    """
    if df.height == 0:
        return exprs, {}
    known = _known_search_rules()
    where: dict[str, int] = {}
    for name, (bad, reason) in known.items():
        rule = _rule(bad, reason)
        hit = [i for i, e in enumerate(exprs) if e.meta.eq(rule)]
        if len(hit) == 1:
            where[name] = hit[0]
    if not where:
        return exprs, {}
    masks: dict[str, np.ndarray] = {}
    per_request = [n for n in ("dup", "query", "session_id", "user_id") if n in where]
    if per_request:
        masks.update(_request_rules(df, per_request, known))
    if "ts" in where:
        masks["ts"] = _session_rule(df, known["ts"][0])
    out = list(exprs)
    for name, i in where.items():
        out[i] = _rule(pl.col(f"_rule_{name}"), known[name][1])
    return out, {f"_rule_{name}": masks[name] for name in where}


def _starts(df: pl.DataFrame, by: list[str]) -> np.ndarray:
    """Boolean: the row starts a run of consecutive rows equal in `by` (nulls equal)."""
    out = np.zeros(df.height, dtype=bool)
    if df.height:
        out[0] = True
    general = []
    for c in by:
        s = df[c]
        if (s.dtype.is_integer() or s.dtype.is_temporal()) and not s.null_count():
            _changes(s.to_physical(), out)
        else:
            general.append(pl.col(c).ne_missing(pl.col(c).shift(1)))
    if general:
        new = df.select(pl.any_horizontal(general).fill_null(True)).to_series().to_numpy()
        out |= new
    return out


def _changes(s: pl.Series, out: np.ndarray) -> None:
    """Set `out` where a null-free numeric `s` differs from the row before (chunk by chunk)."""
    start, prev = 0, None
    for chunk in s.get_chunks():
        a = chunk.to_numpy()
        n = len(a)
        if n == 0:
            continue
        if prev is not None and a[0] != prev:
            out[start] = True
        out[start + 1 : start + n] |= a[1:] != a[:-1]
        start, prev = start + n, a[-1]


def run_starts(df: pl.DataFrame, by: list[str]) -> np.ndarray:
    """Indices of the rows that start a run of consecutive rows equal in `by` (nulls equal)."""
    return np.flatnonzero(_starts(df, by))


def _checked_on(df: pl.DataFrame, rows: np.ndarray, conds: dict[str, pl.Expr]) -> dict:
    """Each condition evaluated on the rows `rows` only (a set closed under its groups)."""
    sub = df.filter(like_chunks(rows, "", chunk_lengths(df)))
    got = sub.select(**{n: e.fill_null(False) for n, e in conds.items()})
    return {n: got[n].to_numpy() for n in conds}


def _request_rules(
    df: pl.DataFrame, names: list[str], known: dict[str, tuple[pl.Expr, str]]
) -> dict[str, np.ndarray]:
    """Duplicate (request_id, video_id) and a request's odd query/session/user, on runs.

    A request is regular when its rows are one run (no other run has its id), its id is not
    null, no video_id is null, and query, session_id and user_id are the same on every row:
    then no row is odd, and a duplicate is a repeat of (run, video_id). The rows of the other
    requests (a set closed under request_id) are checked with the rules' own expressions.
    """
    n = df.height
    starts = _starts(df, ["request_id"])
    first = np.flatnonzero(starts)
    run = np.cumsum(starts) - 1
    inner = _starts(df, ["query", "session_id", "user_id"]) & ~starts
    inner |= df["video_id"].is_null().to_numpy()
    odd_run = np.logical_or.reduceat(inner, first)
    ids = df["request_id"].gather(first)
    odd_run |= (ids.is_duplicated() | ids.is_null()).to_numpy()
    irregular = odd_run[run]
    out = {name: np.zeros(n, dtype=bool) for name in names}
    if "dup" in names:
        vid = df["video_id"]
        lo, hi = vid.min(), vid.max()
        span = (int(hi) - int(lo) + 1) if lo is not None and hi is not None else 1
        if len(first) * span < 2**62:
            key = run.astype(np.int64) * span + (vid.fill_null(lo or 0).to_numpy() - (lo or 0))
            order = np.argsort(key, kind="stable")
            ordered = key[order]
            again = np.empty(n, dtype=bool)
            again[0] = False
            np.equal(ordered[1:], ordered[:-1], out=again[1:])
            out["dup"][order] = again
        else:
            irregular = np.ones(n, dtype=bool)
    if irregular.any():
        rows = np.flatnonzero(irregular)
        got = _checked_on(df, irregular, {name: known[name][0] for name in names})
        for name in names:
            out[name][rows] = got[name]
    return out


def _session_rule(df: pl.DataFrame, cond: pl.Expr) -> np.ndarray:
    """ts earlier than a previous row of its session, on runs of session_id.

    A session that is one run with no null ts is decided by a running maximum over the runs
    laid end to end (each run shifted above the previous one); the rows of the others are
    checked with the rule's own expression.
    """
    n = df.height
    starts = _starts(df, ["session_id"])
    first = np.flatnonzero(starts)
    run = np.cumsum(starts) - 1
    ts = df["ts"].to_physical()
    null_ts = ts.is_null().to_numpy()
    ids = df["session_id"].gather(first)
    odd_run = (ids.is_duplicated() | ids.is_null()).to_numpy()
    odd_run |= np.logical_or.reduceat(null_ts, first)
    irregular = odd_run[run]
    out = np.zeros(n, dtype=bool)
    lo, hi = ts.min(), ts.max()
    band = (int(hi) - int(lo) + 1) if lo is not None and hi is not None else 1
    if len(first) * band < 2**62:
        x = run.astype(np.int64) * band + (ts.fill_null(lo or 0).to_numpy() - (lo or 0))
        before = np.maximum.accumulate(x)
        np.less(x[1:], before[:-1], out=out[1:])
    else:
        irregular = np.ones(n, dtype=bool)
    if irregular.any():
        out[np.flatnonzero(irregular)] = _checked_on(df, irregular, {"ts": cond})["ts"]
    return out


__all__ = ["chunk_lengths", "like_chunks", "run_starts", "split_rows"]
