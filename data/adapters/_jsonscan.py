"""An incremental reader for large JSON documents whose bulk is a few long arrays.

``vllm bench serve --save-detailed`` writes one JSON object whose per-request arrays (``itls``,
``generated_texts``) can be gigabytes for a million requests; ``json.load`` would need several
times that in memory. :class:`JsonScanner` walks the top-level objects of such a file key by key,
holding only a bounded window of text: small values are parsed with :mod:`json`, big arrays are
skipped by bracket matching, and arrays of number arrays are parsed block by block. Every error
names the file, the line and column, and the key being read.

Example:
    >>> import io
    >>> scanner = JsonScanner(io.StringIO('{"a": 1, "b": [[0.5], []]}'), "x.json")
    >>> scanner.begin_document()
    True
    >>> [(key, scanner.read_value() if key == "a" else list(scanner.iter_number_lists()))
    ...  for key in scanner.iter_keys()]
    [('a', 1), ('b', [[[0.5], []]])]
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import TextIO

from servetune import InputError
from servetune.data.adapters._common import loads

__all__ = ["JsonScanner"]

_WS = re.compile(r"[ \t\n\r]*")
_TOKEN = re.compile(r'[\[\]{}"]')
_STRING_REST = re.compile(r'[^"\\]*(?:\\.[^"\\]*)*"', re.S)
# More whole strings after one: `, "..."` repeated (arrays of strings skip at C speed).
_MORE_STRINGS = re.compile(r'(?:[ \t\n\r]*,[ \t\n\r]*"[^"\\]*(?:\\.[^"\\]*)*")*', re.S)
_SCALAR_END = re.compile(r"[ \t\n\r,\]}]")
# A block of an array of number arrays: numbers, separators and brackets only.
_NUMBER_LISTS_TEXT = re.compile(r"[-+0-9.eE,\[\] \t\n\r]*")
_NESTED = re.compile(r"\[[^\]]*\[")
_NEGATIVE = re.compile(r"[\[,][ \t\n\r]*-")
_ONLY_BRACKETS = str.maketrans("", "", "-+0123456789.eE, \t\n\r")
_CHUNK_CHARS = 4 << 20


class JsonScanner:
    """Reads top-level JSON objects from a text handle, one key at a time.

    Args:
        handle: an open text file (UTF-8), positioned at the start of the JSON text.
        path: the file name used in error messages.
        chunk_chars: how many characters to read at a time.
        on_read: called with the number of characters read each time (progress bars).
    """

    def __init__(self, handle: TextIO, path: str, *, chunk_chars: int = _CHUNK_CHARS,
                 on_read=None) -> None:
        self._handle = handle
        self._path = path
        self._chunk = chunk_chars
        self._on_read = on_read
        self._buf = ""
        self._pos = 0
        self._eof = False
        self._lines_before = 0  # newlines in the text already dropped from the window
        self._line_start = 0  # offset in the window where the current line starts (may be < 0)
        self.key: str | None = None  # the key whose value is being read, for messages

    # ---------------------------------------------------------------- window management
    def _more(self) -> int | None:
        """Read more text, dropping what lies before the cursor. Returns the shift, or None."""
        if self._eof:
            return None
        text = self._handle.read(self._chunk)
        if not text:
            self._eof = True
            return None
        if self._on_read is not None:
            self._on_read(len(text))
        shift = self._pos
        newlines = self._buf.count("\n", 0, shift)
        if newlines:
            self._lines_before += newlines
            self._line_start = self._buf.rfind("\n", 0, shift) + 1 - shift
        else:
            self._line_start -= shift
        self._buf = self._buf[shift:] + text
        self._pos = 0
        return shift

    def _location(self, offset: int) -> str:
        before = self._buf[:offset]
        newlines = before.count("\n")
        line = self._lines_before + newlines + 1
        column = offset - (before.rfind("\n") + 1 if newlines else self._line_start) + 1
        return f"line {line}, column {column}"

    def fail(self, message: str, offset: int | None = None) -> InputError:
        """An :class:`InputError` at ``offset`` (default: the cursor) naming the current key."""
        where = self._location(self._pos if offset is None else offset)
        return InputError(f"{message} ({where})", path=self._path, field=self.key)

    def _fail_eof(self, what: str) -> InputError:
        return self.fail(f"unexpected end of file while reading {what}: the file is truncated",
                         len(self._buf))

    def _skip_ws(self) -> str:
        """Move past whitespace; return the next character, or "" at the end of the file."""
        while True:
            self._pos = _WS.match(self._buf, self._pos).end()
            if self._pos < len(self._buf):
                return self._buf[self._pos]
            if self._more() is None:
                return ""

    def _expect(self, char: str, what: str) -> None:
        found = self._skip_ws()
        if found != char:
            if not found:
                raise self._fail_eof(what)
            raise self.fail(f"invalid JSON: expected {what}, found {found!r}")
        self._pos += 1

    # ---------------------------------------------------------------- structure
    def begin_document(self) -> bool:
        """Enter the next top-level object; False when only whitespace is left."""
        self.key = None
        found = self._skip_ws()
        if not found:
            return False
        if found != "{":
            raise self.fail(f"invalid JSON: expected an object '{{', found {found!r}")
        self._pos += 1
        return True

    def iter_keys(self) -> Iterator[str]:
        """The keys of the current object; the caller must consume each value before the next."""
        first = True
        while True:
            found = self._skip_ws()
            if found == "}":
                self._pos += 1
                self.key = None
                return
            if not first:
                if found != ",":
                    if not found:
                        raise self._fail_eof("an object")
                    raise self.fail(f"invalid JSON: expected ',' or '}}', found {found!r}")
                self._pos += 1
                found = self._skip_ws()
            if found != '"':
                if not found:
                    raise self._fail_eof("an object key")
                raise self.fail(f"invalid JSON: expected a key in double quotes, found {found!r}")
            self.key = None
            key = self._read_scalar("an object key")
            self._expect(":", "':' after a key")
            self.key = key
            first = False
            yield key

    # ---------------------------------------------------------------- values
    def read_value(self):
        """Parse the next value completely (use for values that fit in memory)."""
        found = self._skip_ws()
        if not found:
            raise self._fail_eof("a value")
        if found not in "[{":
            return self._read_scalar("a value")
        end = self._container_end(keep=True)
        start = self._pos  # the window may have moved, the value's start with it
        text = self._buf[start:end]
        try:
            value = loads(text)
        except json.JSONDecodeError as exc:
            raise self.fail(f"invalid JSON: {exc.msg}", start + exc.pos) from None
        self._pos = end
        return value

    def skip_value(self) -> None:
        """Move past the next value without keeping it (bounded memory for huge arrays)."""
        found = self._skip_ws()
        if not found:
            raise self._fail_eof("a value")
        if found in "[{":
            self._pos = self._container_end(keep=False)
        else:
            self._read_scalar("a value")

    def iter_number_lists(self, *, parse: bool = True) -> Iterator[list]:
        """Read an array of arrays of numbers block by block, each block a list of inner lists.

        The text of every block is checked first (numbers >= 0, separators, two levels of
        brackets). With ``parse=False`` nothing is converted: each block is ``[None] * count``,
        which is how a first pass validates and counts without building millions of floats.
        """
        self._expect("[", "'[' starting an array of arrays")
        index = 0
        if self._skip_ws() == "]":
            self._pos += 1
            return
        while True:
            found = self._skip_ws()
            if found != "[":
                if not found:
                    raise self._fail_eof("an array of arrays")
                raise self.fail(f"expected an array of numbers as element {index + 1}, found "
                                f"{found!r}")
            bounds = self._block_bounds()
            if bounds is None:  # not even one whole inner array in the window yet
                if self._more() is None:
                    raise self._fail_eof("an array of arrays")
                continue
            end, outer_end = bounds
            start = self._pos
            text = self._buf[start:end]
            count = self._check_number_lists(text, start, index)
            if outer_end is not None:
                tail = self._buf[end:outer_end - 1]
                if tail.strip(" \t\n\r"):
                    raise self.fail(f"invalid JSON: expected ']' closing the array, found "
                                    f"{tail.strip()[:20]!r}", end)
            if parse:
                try:
                    block = loads("[" + text + "]")
                except json.JSONDecodeError as exc:
                    raise self.fail(f"invalid JSON: {exc.msg}", start + exc.pos - 1) from None
            else:
                block = [None] * count
            index += count
            self._pos = outer_end if outer_end is not None else end
            yield block
            if outer_end is not None:
                return
            found = self._skip_ws()
            if found == "]":
                self._pos += 1
                return
            if found != ",":
                if not found:
                    raise self._fail_eof("an array of arrays")
                raise self.fail(f"invalid JSON: expected ',' or ']' after element {index}, found "
                                f"{found!r}")
            self._pos += 1

    def _block_bounds(self) -> tuple[int, int | None] | None:
        """Where the whole inner arrays in view end, and where the outer array ends if in view.

        Valid arrays of numbers contain no quote or brace, so the first one after the cursor
        (the next key, or the end of the object) bounds the outer array: its last ']' before
        that terminator closes the outer array. Without a terminator in view, a final ']' that
        directly follows another ']' may be the outer one, so the block stops before it.
        """
        buf, pos = self._buf, self._pos
        terminators = [i for i in (buf.find('"', pos), buf.find("}", pos)) if i >= 0]
        limit = min(terminators) if terminators else len(buf)
        close = buf.rfind("]", pos, limit)
        if close < 0:
            if terminators:  # '[...' then a terminator: let the check say what is wrong
                self._check_number_lists(buf[pos:limit + 1], pos, 0)
                raise self.fail("invalid JSON: expected arrays of numbers")
            return None
        if terminators or self._eof:
            inner = buf.rfind("]", pos, close)
            if inner < 0:
                self._check_number_lists(buf[pos:limit + 1], pos, 0)
                raise self.fail("invalid JSON: expected arrays of numbers")
            return inner + 1, close + 1
        probe = close - 1
        while probe > pos and buf[probe] in " \t\n\r":
            probe -= 1
        if buf[probe] == "]":
            close = probe
        return close + 1, None

    def _check_number_lists(self, text: str, start: int, index: int) -> int:
        """Check a block ``[..], [..]`` of number arrays; return how many arrays it holds.

        Cheap whole-block tests run first (character set, bracket pattern, minus signs only in
        exponents); only when one fails does a slower search locate the first problem.
        """
        count = text.count("[")
        allowed = _NUMBER_LISTS_TEXT.match(text).end()
        brackets_ok = text.translate(_ONLY_BRACKETS) == "[]" * count
        minus = text.count("-")
        signs_ok = minus == 0 or minus == text.count("e-") + text.count("E-")
        if allowed == len(text) and brackets_ok and signs_ok:
            return count
        problems = []
        if allowed < len(text):
            found = text[allowed:allowed + 20]
            problems.append((allowed, f"expected only numbers, found {found!r}"))
        nested = _NESTED.search(text)
        if nested is not None:
            problems.append((nested.end() - 1, "expected numbers, found a nested array"))
        negative = _NEGATIVE.search(text)
        if negative is not None:
            at = negative.end() - 1
            found = text[at:at + 24].split(",")[0].rstrip("]")
            problems.append((at, f"expected numbers >= 0, found {found!r}"))
        if not problems:
            problems.append((0, "expected arrays of numbers"))
        offset, message = min(problems)
        element = index + text.count("]", 0, offset) + 1
        raise self.fail(f"{message} in element {element}", start + offset)

    def _read_scalar(self, what: str):
        """A string, number, true, false or null at the cursor."""
        while True:
            start = self._pos
            if self._buf[start] == '"':
                match = _STRING_REST.match(self._buf, start + 1)
                end = match.end() if match else -1
            else:
                match = _SCALAR_END.search(self._buf, start)
                end = match.start() if match else (len(self._buf) if self._eof else -1)
            if end < 0:
                if self._more() is None:
                    raise self._fail_eof(what)
                continue
            try:
                value = loads(self._buf[start:end])
            except json.JSONDecodeError as exc:
                raise self.fail(f"invalid JSON: {exc.msg} in {self._buf[start:end][:40]!r}",
                                start) from None
            self._pos = end
            return value

    def _container_end(self, *, keep: bool) -> int:
        """Offset just past the array or object at the cursor, reading more text as needed."""
        depth = 0
        cursor = self._pos
        while True:
            match = _TOKEN.search(self._buf, cursor)
            if match is None:
                scanned = len(self._buf)
                if not keep:
                    self._pos = scanned
                shift = self._more()
                if shift is None:
                    raise self._fail_eof("an array or object")
                cursor = scanned - shift
                continue
            char = match.group()
            if char == '"':
                rest = _STRING_REST.match(self._buf, match.end())
                if rest is None:
                    if not keep:
                        self._pos = match.start()
                    shift = self._more()
                    if shift is None:
                        raise self._fail_eof("a string")
                    cursor = match.start() - shift
                    continue
                cursor = _MORE_STRINGS.match(self._buf, rest.end()).end()
                continue
            depth += 1 if char in "[{" else -1
            cursor = match.end()
            if depth == 0:
                return cursor

