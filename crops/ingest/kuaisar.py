"""`crops ingest kuaisar DIR`: KuaiSAR's search and recommendation logs as contract tables.

KuaiSAR (Sun et al., "KuaiSAR: A Unified Search And Recommendation Dataset", CIKM 2023) is a
month of Kuaishou's real logs of both services. The columns read are those of its published
field descriptions (the dataset's site, github.com/Ethan00Si/KuaiSAR, pages/decriptions.md):

- ``src_inter.csv``: user_id, search_session_id, search_session_timestamp (Unix ms), keyword
  (the query, anonymised: a list of word ids such as ``[20, 34, 3]``), search_source, item_id,
  click_cnt, item_type;
- ``rec_inter.csv``: user_id, item_id, playing_time (ms), duration_ms, timestamp (Unix ms),
  click, ...;
- ``item_features.csv``: item_id, caption (a list of word ids), upload_time (Beijing time,
  1970-01-01 is padding), first_level_category_name ... fourth_level_category_name, ...

user_features.csv and social_network.csv have nothing the contracts hold and are not read.

The mapping (docs/ingest.md has the table):

- search_log: a search session's rows are one request (one per user, search_session_id and
  keyword); stage ``shown``; position = the row's place in its request, in file order (the
  files have no rank column); clicked = click_cnt > 0. KuaiSAR records no play time for
  searches: a clicked row is taken as a full play (watch_ms = duration_ms), an unclicked one as
  none (0), and duration_ms is the item's feed duration_ms (its median in rec_inter.csv), else
  :data:`DEFAULT_DURATION_MS`. Results that are not videos (item_type ``USER``, ``LIVE``,
  ``COMMODITY``, ``MUSIC``, ``ADVERT``) are excluded rows (:data:`NOT_A_VIDEO`: kept in
  ``_quarantine/excluded.parquet`` and counted, not bad input); they keep their place in the
  positions. session_id is (user_id, search_session_id), as the files do not say
  whether a session id is unique across users.
- rec_log: every rec_inter.csv row; watch_ms = playing_time, duration_ms = duration_ms.
- videos: every item_features.csv row; category = first_level_category_name and tags = the
  lower levels' names (the ``_en`` columns are not read), upload_ts from upload_time.

Text is anonymised: a query or caption is a list of word ids, kept as the text ``"w20 w34 w3"``
so every step runs on it (the tokens match when query and caption share word ids). A value
that is not bracketed and not all ids is kept as the text it is (a de-anonymised copy).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from crops.ingest.formats import IngestOptions
from crops.ingest.tables import UNREADABLE_SCHEMA, WHERE, Imported
from crops.ingest.text import IngestError, read_csv_text
from crops.schema import LONG_PLAY_MS

FORMAT = "kuaisar"
SRC, REC, ITEMS = "src_inter.csv", "rec_inter.csv", "item_features.csv"

#: Columns each file must have (the published names).
REQUIRED: dict[str, tuple[str, ...]] = {
    SRC: (
        "user_id",
        "search_session_id",
        "search_session_timestamp",
        "keyword",
        "item_id",
        "click_cnt",
    ),
    REC: ("user_id", "item_id", "playing_time", "duration_ms", "timestamp"),
    ITEMS: ("item_id", "caption"),
}
#: item_type values that are videos: the ones the feed recommends too.
VIDEO_TYPES = ("VIDEO", "IMAGE_ATLAS")
#: the reason of a search result of another item_type: outside the contracts, so excluded
#: (kept and counted) rather than unreadable; a real log holds many, and they are not errors
NOT_A_VIDEO = "item_type not a video"
#: duration_ms of a searched item never played in the feed. Search clicks are full plays, so
#: any positive length gives the same consumption; LONG_PLAY_MS is the contract's own yardstick.
DEFAULT_DURATION_MS = LONG_PLAY_MS
#: Time zone of KuaiSAR's human-readable times (its description: China, Beijing time).
SOURCE_TZ = "Asia/Shanghai"
#: Category names that mean "none" in item_features.csv.
EMPTY_NAMES = ("", "空", "empty", "UNKNOWN", "unknown")
TOKEN_PREFIX = "w"
CATEGORY_LEVELS = ("first", "second", "third", "fourth")

_BAD = "_bad"  # a row's unreadable reason, null when it reads


def _where(name: str) -> pl.Expr:
    """file:line of each row (the header is line 1)."""
    return pl.format(f"{name}:{{}}", pl.int_range(pl.len(), dtype=pl.Int64) + 2).alias(WHERE)


def _number(col: str) -> pl.Expr:
    return pl.col(col).str.strip_chars().cast(pl.Float64, strict=False)


def id_text(col: str) -> tuple[pl.Expr, pl.Expr]:
    """(text, ok) of an anonymised text column: ``[20, 34, 3]`` or ``20 34 3`` -> ``w20 w34
    w3``; ok is false for a bracketed value that is not a list of ids."""
    raw = pl.col(col).fill_null("").str.strip_chars()
    bracketed = raw.str.starts_with("[") & raw.str.ends_with("]")
    tokens = raw.str.replace_all(r"[\[\],]", " ").str.extract_all(r"\S+")
    all_ids = tokens.list.eval(pl.element().str.contains(r"^\d+$")).list.all()
    as_words = tokens.list.eval(pl.lit(TOKEN_PREFIX) + pl.element()).list.join(" ")
    text = pl.when(bracketed | all_ids).then(as_words).otherwise(raw)
    return text, ~bracketed | all_ids


def _csv_cell(col: str) -> pl.Expr:
    """A cell as CSV writes it, so an unreadable row's raw text reads back as the row."""
    value = pl.col(col).fill_null("")
    quoted = pl.lit('"') + value.str.replace_all('"', '""', literal=True) + pl.lit('"')
    return pl.when(value.str.contains(r'[,"\n]')).then(quoted).otherwise(value)


def _split(df: pl.DataFrame, name: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(rows that read, unreadable rows) by the `_bad` column."""
    raw_cols = [c for c in df.columns if not c.startswith("_")]
    bad = df.filter(pl.col(_BAD).is_not_null()).select(
        pl.lit(name).alias("table"),
        pl.col(WHERE).alias("where"),
        pl.col(_BAD).alias("reason"),
        pl.concat_str([_csv_cell(c) for c in raw_cols], separator=",").alias("raw"),
    )
    return df.filter(pl.col(_BAD).is_null()), bad.cast(UNREADABLE_SCHEMA)  # type: ignore[arg-type]


def _first_reason(*checks: tuple[pl.Expr, str]) -> pl.Expr:
    expr = pl.lit(None, pl.String)
    for bad, reason in reversed(checks):
        expr = pl.when(bad).then(pl.lit(reason)).otherwise(expr)
    return expr.alias(_BAD)


def _rec(df: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    df = df.with_columns(
        _where(REC),
        _number("timestamp").alias("_ts"),
        _number("playing_time").alias("_watch"),
        _number("duration_ms").alias("_duration"),
    )
    df = df.with_columns(
        _first_reason(
            (pl.col("_ts").is_null(), "timestamp not a number"),
            (pl.col("_watch").is_null(), "playing_time not a number"),
            (pl.col("_duration").is_null(), "duration_ms not a number"),
        )
    )
    ok, bad = _split(df, "rec_log")
    rec = ok.select(
        "user_id",
        pl.col("_ts").round().cast(pl.Int64).cast(pl.Datetime("ms", "UTC")).alias("ts"),
        pl.col("item_id").alias("video_id"),
        pl.col("_watch").round().cast(pl.Int64).alias("watch_ms"),
        pl.col("_duration").round().cast(pl.Int64).alias("duration_ms"),
        WHERE,
    )
    return rec, bad


def _search(df: pl.DataFrame, durations: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    query, query_ok = id_text("keyword")
    is_video = (
        pl.col("item_type").str.strip_chars().str.to_uppercase().is_in(VIDEO_TYPES)
        if "item_type" in df.columns
        else pl.lit(True)
    )
    df = df.with_columns(
        _where(SRC),
        _number("search_session_timestamp").alias("_ts"),
        _number("click_cnt").alias("_clicks"),
        query.alias("_query"),
        query_ok.alias("_query_ok"),
        pl.concat_str(
            [pl.col("user_id").fill_null(""), pl.col("search_session_id").fill_null("")],
            separator="/",
        ).alias("_session"),
    )
    request = pl.concat_str([pl.col("_session"), pl.col("_query")], separator="/")
    df = df.with_columns(
        request.alias("_request"),
        pl.int_range(pl.len(), dtype=pl.Int32).over(request).alias("_position"),
    ).with_columns(
        _first_reason(
            (pl.col("_ts").is_null(), "search_session_timestamp not a number"),
            (pl.col("_clicks").is_null(), "click_cnt not a number"),
            (~pl.col("_query_ok"), "keyword not a list of word ids"),
            (~is_video.fill_null(False), NOT_A_VIDEO),
        )
    )
    ok, bad = _split(df, "search_log")
    clicked = pl.col("_clicks") > 0
    duration = pl.col("_duration").fill_null(DEFAULT_DURATION_MS)
    search = ok.join(durations, left_on="item_id", right_on="video_id", how="left").select(
        "user_id",
        pl.col("_session").alias("session_id"),
        pl.col("_request").alias("request_id"),
        pl.col("_ts").round().cast(pl.Int64).cast(pl.Datetime("ms", "UTC")).alias("ts"),
        pl.col("_query").alias("query"),
        pl.col("item_id").alias("video_id"),
        pl.lit("shown").alias("stage"),
        pl.col("_position").alias("position"),
        clicked.alias("clicked"),
        pl.when(clicked).then(duration).otherwise(0).cast(pl.Int64).alias("watch_ms"),
        duration.cast(pl.Int64).alias("duration_ms"),
        WHERE,
    )
    return search, bad


def _name(col: str) -> pl.Expr:
    value = pl.col(col).str.strip_chars()
    return pl.when(value.is_in(EMPTY_NAMES)).then(None).otherwise(value)


def _videos(df: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """The videos table, and how many upload_time values could not be read (left null)."""
    caption, _ = id_text("caption")
    names = [f"{level}_level_category_name" for level in CATEGORY_LEVELS]
    names = [c for c in names if c in df.columns]
    upload = pl.lit(None, pl.Datetime("ms", "UTC"))
    unreadable_upload = pl.lit(False)
    if "upload_time" in df.columns:
        text = pl.col("upload_time").str.strip_chars()
        parsed = text.str.to_datetime(time_zone=SOURCE_TZ, strict=False, time_unit="ms")
        upload = (
            pl.when(parsed.dt.year() > 1970)  # 1970-01-01 is KuaiSAR's padding
            .then(parsed.dt.convert_time_zone("UTC"))
            .otherwise(None)
        )
        unreadable_upload = text.is_not_null() & (text != "") & parsed.is_null()
    videos = df.with_columns(_where(ITEMS)).select(
        pl.col("item_id").alias("video_id"),
        pl.when(caption.str.len_chars() > 0).then(caption).otherwise(None).alias("caption"),
        (
            pl.concat_list([_name(c) for c in names[1:]]).list.drop_nulls()
            if len(names) > 1
            else pl.lit(None, pl.List(pl.String))
        ).alias("tags"),
        pl.lit(None, pl.String).alias("cover_text"),
        (
            _name(names[0]) if names and names[0].startswith("first") else pl.lit(None, pl.String)
        ).alias("category"),
        upload.alias("upload_ts"),
        WHERE,
    )
    return videos, int(df.select(unreadable_upload.sum()).item())


def read(src: Path, options: IngestOptions) -> Imported:
    """KuaiSAR's folder as search_log, rec_log and videos."""
    src = Path(src)
    if not src.is_dir():
        raise IngestError(
            f"{src}: kuaisar reads KuaiSAR's folder ({SRC}, {REC}, {ITEMS}), not a file"
        )
    missing = [name for name in REQUIRED if not (src / name).is_file()]
    if missing:
        raise IngestError(f"{src}: not a KuaiSAR folder: no {', '.join(missing)}")
    frames = {
        name: read_csv_text(src / name, options.encoding, required=cols)
        for name, cols in REQUIRED.items()
    }
    rec, rec_bad = _rec(frames[REC])
    durations = (
        rec.filter(pl.col("duration_ms") > 0)
        .group_by("video_id")
        .agg(pl.col("duration_ms").median().round().cast(pl.Int64).alias("_duration"))
    )
    search, search_bad = _search(frames[SRC], durations)
    non_video = pl.col("reason") == NOT_A_VIDEO
    videos, bad_uploads = _videos(frames[ITEMS])
    notes = {
        "source": "KuaiSAR (Sun et al., CIKM 2023), columns as published (pages/decriptions.md)",
        "text": "anonymised: query and caption word ids as tokens 'w<id>'",
        "position": "row order within a search request (the files have no rank column)",
        "watch_ms": "search plays are not recorded: a click is a full play, else 0",
        "duration_ms": f"search items: their median feed duration_ms, else {DEFAULT_DURATION_MS}",
        "session_id": "user_id/search_session_id",
        "search_items_without_feed_duration": int(
            search.join(durations, left_on="video_id", right_on="video_id", how="anti").height
        ),
        "upload_time_unreadable": bad_uploads,
        "not_read": ["user_features.csv", "social_network.csv"],
    }
    return Imported(
        format=FORMAT,
        source=str(src),
        tables={"videos": videos, "search_log": search, "rec_log": rec},
        unreadable=pl.concat([search_bad.filter(~non_video), rec_bad]),
        excluded=search_bad.filter(non_video),
        notes=notes,
        encoding=options.encoding,
    )
