"""Reading a platform's text files: encodings (GBK is common in Chinese logs) and CSV as text.

Every importer reads its files through here, so a wrong encoding fails the same way everywhere:
an :class:`IngestError` that names the file, the byte offset and the encoding it looks like,
and says how to convert (``--encoding gbk``). Nothing is decoded with replacement characters.
"""

from __future__ import annotations

import codecs
import io
from pathlib import Path

import polars as pl

#: Encodings a file is tried in, in order, when it is not UTF-8, to say what it looks like:
#: codec name -> what to call it. GBK before GB18030, its superset, which decodes more files.
SUSPECTS = {
    "gbk": "GBK",
    "gb18030": "GB18030",
    "big5": "Big5",
    "shift_jis": "Shift JIS",
    "euc_kr": "EUC-KR",
}


class IngestError(ValueError):
    """A source file is missing, unreadable or in the wrong format; the message says where."""


def decode(data: bytes, path: Path, encoding: str | None) -> str:
    """The file's text: UTF-8 (a BOM is dropped) unless `encoding` is given.

    Not UTF-8 and no `encoding`: an IngestError naming the first bad byte's line and offset
    and, where one decodes the whole file, the encoding it looks like (:data:`SUSPECTS`).
    """
    if encoding is not None:
        try:
            name = codecs.lookup(encoding).name
        except LookupError:
            raise IngestError(f"--encoding {encoding!r} is not an encoding Python knows") from None
        try:  # a UTF-8 BOM is dropped whether or not --encoding utf-8 was given
            return data.decode("utf-8-sig" if name == "utf-8" else encoding)
        except UnicodeDecodeError as exc:
            raise IngestError(
                f"{path}:{_where(data, exc.start)}: not valid {encoding} ({exc.reason})"
            ) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        guess = next((e for e in SUSPECTS if _decodes(data, e)), None)
        hint = (
            f"; it decodes as {SUSPECTS[guess]}: rerun with --encoding {guess} to convert it"
            if guess
            else "; give its encoding with --encoding"
        )
        raise IngestError(f"{path}:{_where(data, exc.start)}: not UTF-8{hint}") from None


def _where(data: bytes, offset: int) -> str:
    """'N (byte B)': the line of a byte offset, so an error can be opened at its line."""
    line = data.count(b"\n", 0, offset) + 1
    return f"{line} (byte {offset})"


def _decodes(data: bytes, encoding: str) -> bool:
    try:
        data.decode(encoding)
    except UnicodeDecodeError:
        return False
    return True


def read_text(path: Path, encoding: str | None = None) -> str:
    """A text file's content (see :func:`decode`); a missing file is an IngestError."""
    path = Path(path)
    if not path.is_file():
        raise IngestError(f"{path}: no such file")
    return decode(path.read_bytes(), path, encoding)


def read_csv_text(
    path: Path, encoding: str | None = None, separator: str = ",", *, required: tuple[str, ...] = ()
) -> pl.DataFrame:
    """A CSV (or TSV) file with every column as text, so each importer parses and checks its
    own types row by row; `required` columns missing are an IngestError naming them."""
    text = read_text(path, encoding)
    try:
        df = pl.read_csv(io.StringIO(text), separator=separator, infer_schema=False, quote_char='"')
    except pl.exceptions.PolarsError as exc:
        kind = "TSV" if separator == "\t" else "CSV"
        raise IngestError(f"{path}: not a readable {kind} file: {exc}") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise IngestError(
            f"{path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
            f" (found: {', '.join(df.columns) or 'none'})"
        )
    return df
