"""`crops ingest trec-session FILE`: the TREC Session Track's XML logs as contract tables.

The layout followed is the 2014 track's ``sessiontrack2014.xml`` (Carterette et al., "Overview
of the TREC 2014 Session Track"; the 2013 file has the same elements)::

    <sessiontrack>
      <session num= userid= starttime=>
        <topic num=><desc/></topic>
        <interaction num= starttime= type="reformulate|page">
          <query/>
          <results><result rank=><url/><clueweb12id/><title/><snippet/></result>...</results>
          <clicked><click num= starttime= endtime=><rank/><docno/></click>...</clicked>
        </interaction>...
        <currentquery starttime=><query/></currentquery>
      </session>...
    </sessiontrack>

2011-2012 files read too: their documents are ``<clueweb09id>`` and their times are clocks
(``09:54:27.674484``, ``-1`` when unknown) rather than seconds.

The mapping (docs/ingest.md has the table):

- a session gives session_id (its ``num``) and user_id (``userid``; a session without one, or
  with 2014's ``NA``, is its own user);
- each interaction is one request, request_id ``"<session>.<interaction>"``; each of its
  results is one search_log row: stage ``shown``, position = rank - 1, clicked when a click
  names its rank, watch_ms = the click's dwell (endtime - starttime; several clicks on one
  rank add up), duration_ms = :data:`WEB_RESULT_DURATION_MS`;
- each distinct document id (clueweb id, else the URL) is one video: caption = its title
  (the URL where it has none), cover_text = its snippet.

Time. The files hold no dates: 2013-2014 times are seconds from the session's start,
2011-2012 times are clocks of one day. Each session is therefore placed on a day of its own:
session k (0-based, in file order) starts at :data:`TREC_EPOCH` + k days, and an interaction's
ts is that day plus its starttime. The dates are made up, and the session's own ``starttime``
attribute is not used; days apart, two sessions of one user never join one reformulation chain.

``<currentquery>`` (the query a participant's run answered) shows no results and so gives no
row; the notes count them. The file is parsed with expat through :func:`parse_xml`, which
refuses any DOCTYPE or entity declaration: a hostile file (entity expansion, external
entities) is bad input, never expanded.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path
from xml.parsers import expat

import polars as pl

from crops.ingest.formats import IngestOptions
from crops.ingest.tables import WHERE, Imported, unreadable_rows
from crops.ingest.text import IngestError, read_text
from crops.schema import LONG_PLAY_MS

FORMAT = "trec-session"
ROOT_TAG = "sessiontrack"

#: The made-up start of the first session (the files have no dates); session k starts k days on.
TREC_EPOCH = datetime(2014, 1, 1, tzinfo=UTC)
SESSION_SPACING_MS = 86_400_000

#: duration_ms of a web result, which has no media length: the 30 s of the "satisfied click"
#: in web search studies. A click counts as consumed (crops.schema.long_play) when its dwell is
#: at least min(this, LONG_PLAY_MS), so here when the page was read for LONG_PLAY_MS (18 s).
WEB_RESULT_DURATION_MS = 30_000

#: Where a result names its document, first found wins (2013-2014, 2011-2012, clicks' docno).
DOC_ID_TAGS = ("clueweb12id", "clueweb09id", "docno")
MISSING_USERS = frozenset({"", "NA"})

_CLOCK = re.compile(r"^(\d{1,2}):(\d{2}):(\d{2}(?:\.\d+)?)$")
_NUMBER = re.compile(r"^\d+(?:\.\d+)?$")

SEARCH_SCHEMA = {
    "user_id": pl.String,
    "session_id": pl.String,
    "request_id": pl.String,
    "ts": pl.Int64,  # ms since the Unix epoch, cast to Datetime below
    "query": pl.String,
    "video_id": pl.String,
    "stage": pl.String,
    "position": pl.Int32,
    "clicked": pl.Boolean,
    "watch_ms": pl.Int64,
    "duration_ms": pl.Int64,
    WHERE: pl.String,  # the result's element: file:line and path
}
REC_SCHEMA = {
    "user_id": pl.String,
    "ts": pl.Datetime("ms", "UTC"),
    "video_id": pl.String,
    "watch_ms": pl.Int64,
    "duration_ms": pl.Int64,
}


class _Refused(Exception):
    """A DOCTYPE or entity declaration met while parsing."""


def parse_xml(text: str, path: Path) -> tuple[ET.Element, dict[int, int]]:
    """The document's root and each element's line (by ``id(element)``).

    expat builds the tree with no DOCTYPE allowed: no entity can be declared, so none is
    expanded or fetched. Anything that is not well-formed XML is an IngestError with its line.
    """
    builder = ET.TreeBuilder()
    lines: dict[int, int] = {}
    parser = expat.ParserCreate()
    parser.buffer_text = True

    def start(tag: str, attrs: dict[str, str]) -> None:
        lines[id(builder.start(tag, attrs))] = parser.CurrentLineNumber

    def refuse(*_: object) -> None:
        raise _Refused

    parser.StartElementHandler = start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse
    try:
        parser.Parse(text, True)
    except _Refused:
        raise IngestError(
            f"{path}:{parser.CurrentLineNumber}: refused: a DOCTYPE or entity declaration"
            " (entities are never expanded; the Session Track's files have none)"
        ) from None
    except expat.ExpatError as exc:
        raise IngestError(
            f"{path}:{exc.lineno}: not XML, so not a TREC Session Track file"
            f" (column {exc.offset}: {expat.errors.messages[exc.code]})"
        ) from None
    return builder.close(), lines


def seconds(value: str | None) -> float | None:
    """A Session Track time in seconds: a number (2013-2014) or a clock (2011-2012); None when
    absent, ``-1`` or unreadable."""
    value = (value or "").strip()
    if _NUMBER.match(value):
        return float(value)
    clock = _CLOCK.match(value)
    if clock:
        h, m, s = clock.groups()
        return int(h) * 3600 + int(m) * 60 + float(s)
    return None


def _text(el: ET.Element | None) -> str | None:
    if el is None or el.text is None:
        return None
    return " ".join(el.text.split())


def _doc_id(result: ET.Element) -> str | None:
    for tag in (*DOC_ID_TAGS, "url"):
        value = _text(result.find(tag))
        if value:
            return value
    return None


class _Reader:
    """One file's rows, and the unreadable elements with their reason."""

    def __init__(self, path: Path, lines: dict[int, int]) -> None:
        self.path, self.lines = path, lines
        self.rows: list[tuple] = []
        self.videos: dict[str, tuple[str | None, str | None]] = {}
        self.bad: list[tuple[str, str, str, str]] = []
        self.counts = {"sessions": 0, "interactions": 0, "currentquery": 0, "clicks": 0}
        self.types: dict[str, int] = {}

    def where(self, el: ET.Element, trail: str) -> str:
        return f"{self.path.name}:{self.lines.get(id(el), 0)} {trail}"

    def unreadable(self, el: ET.Element, trail: str, reason: str) -> None:
        self.bad.append(("search_log", self.where(el, trail), reason, ET.tostring(el, "unicode")))

    def session(self, s: ET.Element, k: int) -> None:
        self.counts["sessions"] += 1
        num = (s.get("num") or "").strip()
        if not num:
            self.unreadable(s, "session", "session without num")
            return
        user = (s.get("userid") or "").strip()
        user = f"session-{num}" if user in MISSING_USERS else user
        day_ms = int(TREC_EPOCH.timestamp() * 1000) + k * SESSION_SPACING_MS
        self.counts["currentquery"] += len(s.findall("currentquery"))
        for i in s.findall("interaction"):
            self.interaction(i, num, user, day_ms)

    def interaction(self, i: ET.Element, session: str, user: str, day_ms: int) -> None:
        self.counts["interactions"] += 1
        num = (i.get("num") or "").strip()
        trail = f"session[@num='{session}']/interaction[@num='{num}']"
        kind = i.get("type") or "reformulate"
        if not num:
            return self.unreadable(i, trail, "interaction without num")
        query_el = i.find("query")
        if query_el is None:
            return self.unreadable(i, trail, "interaction without query")
        start = seconds(i.get("starttime"))
        if start is None:
            return self.unreadable(i, trail, "starttime not a time")
        results: dict[int, tuple[str, ET.Element]] = {}  # rank -> (document id, its element)
        for r in i.findall("results/result"):
            rank_text = (r.get("rank") or "").strip()
            doc = _doc_id(r)
            if not rank_text.isdigit() or int(rank_text) < 1:
                self.unreadable(r, f"{trail}/result", "result rank not a number")
            elif doc is None:
                self.unreadable(
                    r, f"{trail}/result[@rank='{rank_text}']", "result without a document id"
                )
            elif int(rank_text) in results:
                self.unreadable(r, f"{trail}/result[@rank='{rank_text}']", "duplicate result rank")
            else:
                results[int(rank_text)] = (doc, r)
                title, snippet = _text(r.find("title")), _text(r.find("snippet"))
                if doc not in self.videos or self.videos[doc][0] is None:
                    self.videos[doc] = (title or _text(r.find("url")), snippet)
        if not results:
            return self.unreadable(i, trail, "interaction without results")
        self.types[kind] = self.types.get(kind, 0) + 1
        dwell: dict[int, int] = {}
        for c in i.findall("clicked/click"):
            self.counts["clicks"] += 1
            ctrail = f"{trail}/clicked/click[@num='{c.get('num', '')}']"
            rank_text = (_text(c.find("rank")) or "").strip()
            t0, t1 = seconds(c.get("starttime")), seconds(c.get("endtime"))
            if not rank_text.isdigit():
                self.unreadable(c, ctrail, "click without rank")
            elif int(rank_text) not in results:
                self.unreadable(c, ctrail, "click rank not in results")
            elif t0 is None or t1 is None:
                self.unreadable(c, ctrail, "click time not a time")
            else:
                rank = int(rank_text)
                dwell[rank] = dwell.get(rank, 0) + round((t1 - t0) * 1000)
        ts = day_ms + round(start * 1000)
        query = " ".join((query_el.text or "").split())
        request = f"{session}.{num}"
        for rank, (doc, el) in sorted(results.items()):
            result = self.where(el, f"{trail}/result[@rank='{rank}']")
            self.rows.append(
                (
                    user,
                    session,
                    request,
                    ts,
                    query,
                    doc,
                    "shown",
                    rank - 1,
                    rank in dwell,
                    dwell.get(rank, 0),
                    WEB_RESULT_DURATION_MS,
                    result,
                )
            )


def read(src: Path, options: IngestOptions) -> Imported:
    """A Session Track XML file as search_log, videos and an empty rec_log (no feed)."""
    src = Path(src)
    if src.is_dir():
        raise IngestError(
            f"{src}: trec-session reads one XML file (sessiontrack2014.xml), not a folder"
        )
    text = read_text(src, options.encoding)
    root, lines = parse_xml(text, src)
    if root.tag != ROOT_TAG:
        raise IngestError(
            f"{src}:{lines.get(id(root), 1)}: the root element is <{root.tag}>, not <{ROOT_TAG}>:"
            " not a TREC Session Track file"
        )
    reader = _Reader(src, lines)
    for k, s in enumerate(root.findall("session")):
        reader.session(s, k)
    search = pl.DataFrame(reader.rows, schema=SEARCH_SCHEMA, orient="row").with_columns(
        pl.col("ts").cast(pl.Datetime("ms", "UTC"))
    )
    docs = list(reader.videos)
    videos = pl.DataFrame(
        {
            "video_id": docs,
            "caption": [reader.videos[d][0] for d in docs],
            "tags": pl.Series([None] * len(docs), dtype=pl.List(pl.String)),
            "cover_text": [reader.videos[d][1] for d in docs],
            "category": pl.Series([None] * len(docs), dtype=pl.String),
            "upload_ts": pl.Series([None] * len(docs), dtype=pl.Datetime("ms", "UTC")),
        },
        schema_overrides={"video_id": pl.String, "caption": pl.String, "cover_text": pl.String},
    )
    notes = {
        **reader.counts,
        "interactions_by_type": dict(sorted(reader.types.items())),
        "layout": "TREC Session Track 2014 (sessiontrack2014.xml); 2011-2013 read too",
        "time": f"no dates in the file: session k starts at {TREC_EPOCH.isoformat()} + k days,"
        " an interaction at that day + its starttime",
        "duration_ms": f"web results have no media length: {WEB_RESULT_DURATION_MS} ms each, so a"
        f" click is consumed when its dwell reaches {min(WEB_RESULT_DURATION_MS, LONG_PLAY_MS)} ms",
        "no_rows": "<currentquery> shows no results, so gives no row (counted in currentquery)",
        "rec_log": "none in the track: written empty",
    }
    return Imported(
        format=FORMAT,
        source=str(src),
        tables={
            "videos": videos,
            "search_log": search,
            "rec_log": pl.DataFrame(schema=REC_SCHEMA),
        },
        unreadable=unreadable_rows(reader.bad),
        notes=notes,
        encoding=options.encoding,
    )
