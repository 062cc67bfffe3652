"""CSV and JSONL caption files: one row per caption, or several rows (or a caption list) per image.

Rows naming the same image are MERGED into one record: captions are unioned in file order and an
exact repeat of a caption the image already has is dropped and counted `duplicate_caption`. The
image id is the image column's value as written (e.g. `1608` in Fashion's styles.csv).

Image paths: `image_template` (e.g. `images/{}.jpg`) maps the column value to a path; relative
paths resolve against the folder of the CSV/JSONL file; absolute paths and URLs (gs://) stay.
Paths that leave that folder (absolute, or `../` climbing out) are allowed, but each record is
marked `outside_source_folder` and the writer reports how many images came from outside.

Bad input: a row with the wrong number of fields (an unquoted comma in a real styles.csv), a
JSONL line that is not a JSON object, a row without an image value, a JSONL value of the wrong
type (a caption that is a number, an image that is a list), or a CSV field that runs over several
lines (an unclosed quote swallows the rows after it) is skipped, counted `malformed_row` and named
(file and line) in a warning. Text that is not UTF-8 and a column no row has are errors
(`SourceFormatError`), since no row of such a file can be trusted.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from typing import Iterator, Optional

import tensorflow as tf

from dual_encoder.data.collect import RecordBuilder, SourceFormatError, leaves_folder, require_file, resolve, warn_skips
from dual_encoder.data.records import ImageRecord, SkipCounter

logger = logging.getLogger(__name__)


def csv_records(
    path: str,
    image_column: Optional[str],
    caption_column: Optional[str],
    image_template: Optional[str] = None,
    *,
    skipped: SkipCounter,
) -> list[ImageRecord]:
    """Reads a CSV with a header row; see the module docstring for merging and skipping."""
    reader = csv.reader(_utf8_lines(path))
    header = [name.strip() for name in next(reader, [])]
    image_i = _column_index(path, header, image_column, "image")
    caption_i = _column_index(path, header, caption_column, "caption")
    table = _Table(path, image_template, skipped)
    while True:
        first_line = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:  # e.g. a NUL byte; the reader goes on at the next line
            table.malformed(reader.line_num, str(e))
            continue
        if not any(cell.strip() for cell in row):
            continue
        if reader.line_num > first_line and any("\n" in cell or "\r" in cell for cell in row):
            # Captions are one line; a field over several is almost always an unclosed quote that
            # swallowed the rows after it, which would otherwise vanish without a word.
            table.malformed(first_line, f"a quoted field runs from line {first_line} to line {reader.line_num} "
                                        "(an unclosed quote?); the lines inside it are not read as rows")
            continue
        if len(row) != len(header):
            table.malformed(reader.line_num, f"{len(row)} fields where the header has {len(header)}")
            continue
        table.add(reader.line_num, row[image_i], row[caption_i])
    return table.records()


def jsonl_records(
    path: str,
    image_column: Optional[str],
    caption_column: Optional[str],
    image_template: Optional[str] = None,
    *,
    skipped: SkipCounter,
) -> list[ImageRecord]:
    """Reads one JSON object per line; the caption value may be a string or a list of strings.

    Columns are judged by the rows: a line without the image or caption key is one malformed row,
    and only a key that no object in the file has is an error (naming the keys the file does have).
    """
    table = _Table(path, image_template, skipped)
    keys: dict[str, None] = {}  # every key seen, in first-seen order, for the error message
    for line_no, text in enumerate(_utf8_lines(path), start=1):
        row = _json_object(table, line_no, text)
        if row is None:
            continue
        keys.update(dict.fromkeys(row))
        if image_column not in row or caption_column not in row:
            table.malformed(line_no, f"no {image_column!r} or {caption_column!r} key")
        elif not _is_image_value(row[image_column]):
            table.malformed(line_no, f"{image_column!r} is {json.dumps(row[image_column])[:40]}, not a path or an id")
        elif not _is_caption_value(row[caption_column]):
            table.malformed(line_no, f"{caption_column!r} is {json.dumps(row[caption_column])[:40]}, not text or a list of texts")
        else:
            table.add(line_no, row[image_column], row[caption_column])
    if keys:  # some objects were read: a column none of them has is the user's flag, not one bad row
        _column_index(path, list(keys), image_column, "image")
        _column_index(path, list(keys), caption_column, "caption")
    return table.records()


def _json_object(table: "_Table", line_no: int, text: str) -> Optional[dict]:
    """The JSON object on one line, or None (blank lines; anything else is counted malformed)."""
    if not text.strip():
        return None
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        table.malformed(line_no, f"invalid JSON ({e.msg})")
        return None
    if not isinstance(row, dict):
        table.malformed(line_no, f"a JSON {type(row).__name__}, not an object")
        return None
    return row


def _is_image_value(value) -> bool:
    """A path or an id: text or an integer (`{"id": 7}`), never a list, a dict, a bool or null."""
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _is_caption_value(value) -> bool:
    return value is None or isinstance(value, str) or (isinstance(value, list) and all(isinstance(c, str) for c in value))


class _Table:
    """What CSV and JSONL rows share once parsed: path mapping, merging, malformed-row warnings."""

    def __init__(self, path: str, image_template: Optional[str], skipped: SkipCounter) -> None:
        if image_template is not None:
            try:
                image_template.format("x")
            except (IndexError, KeyError, ValueError) as e:
                raise SourceFormatError(
                    f"image template {image_template!r} must contain one '{{}}' for the column value ({e})"
                ) from None
        self.path = path
        self.folder = os.path.dirname(path)
        self.template = image_template
        self.skipped = skipped
        self.builder = RecordBuilder(source=os.path.basename(path), skipped=skipped)
        self.bad: list[str] = []

    def malformed(self, line_no: int, problem: str) -> None:
        self.skipped.skip("malformed_row", f"{self.path}:{line_no}")
        self.bad.append(f"line {line_no}: {problem}")

    def add(self, line_no: int, image_value, captions) -> None:
        image_id = "" if image_value is None else str(image_value).strip()
        if not image_id:
            self.malformed(line_no, "empty image value")
            return
        path = self.template.format(image_id) if self.template else image_id
        self.builder.add(image_id, captions, path=resolve(self.folder, path), where=f"{self.path}:{line_no}",
                         outside_source_folder=leaves_folder(path))

    def records(self) -> list[ImageRecord]:
        warn_skips(logger, f"{self.path}: malformed rows skipped", self.bad)
        return self.builder.build(where=self.path)


def _utf8_lines(path: str) -> Iterator[str]:
    """Streams decoded lines so that a bad byte is reported with its line number."""
    require_file(path, "caption file")
    with tf.io.gfile.GFile(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                yield raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise SourceFormatError(
                    f"{path}, line {line_no}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                    "re-save the file as UTF-8, e.g. iconv -f latin1 -t utf-8"
                ) from None


def _column_index(path: str, columns: list[str], wanted: Optional[str], kind: str) -> int:
    if wanted is None or wanted not in columns:
        problem = f"no {kind} column given" if wanted is None else f"no column {wanted!r}"
        raise SourceFormatError(f"{path}: {problem}; the columns are: {', '.join(columns) or '(none)'}")
    return columns.index(wanted)
