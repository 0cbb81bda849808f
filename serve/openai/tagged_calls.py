"""Tool calls of formats that wrap each call's JSON, {"name", "arguments"}, in start and end
tags (Hermes' `<tool_call>` ... `</tool_call>`), read as JSON: whole, or as streamed parts.

vLLM's readers of such formats look for the end tag by text search, so an argument string
that holds the end tag (which the grammar allows) ends the call there, whole or streamed,
and a last call cut off by max_tokens loses every call of the answer. Here each call ends
where its JSON object ends, so the tag inside a string is just text.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

# The head of a call as the grammar writes it (name first); any other key order is read
# once the call's JSON is whole.
_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"arguments"\s*:\s*')
_SCALAR_END = re.compile(r"[\s,}\]]")


def tags_of(tool_parser) -> tuple[str, str] | None:
    """(start tag, end tag) of a tag-wrapped format's parser class; None for other formats."""
    start = getattr(tool_parser, "tool_call_start_token", None)
    end = getattr(tool_parser, "tool_call_end_token", None)
    return (start, end) if isinstance(start, str) and isinstance(end, str) else None


def tagged_calls(
    tool_parser, text: str, complete: bool
) -> tuple[str, list[tuple[None, str, str]]] | None:
    """(content, calls) read from `text`; None for other formats or when no call is whole.
    With `complete` False (the answer was cut off) the calls before an incomplete last one
    are kept."""
    tags = tags_of(tool_parser)
    if tags is None or tags[0] not in text:
        return None
    start, end = tags
    decoder, calls = json.JSONDecoder(), []
    position = text.index(start)
    content = text[:position]
    while position != -1:
        body = position + len(start)
        body += len(text[body:]) - len(text[body:].lstrip())
        try:
            call, after = decoder.raw_decode(text, body)
        except ValueError:
            break  # cut off, or not a call: what came before stands
        rest = text[after:].lstrip()
        if not (_is_call(call) and rest.startswith(end)):
            break
        calls.append((None, call["name"], json.dumps(call["arguments"], ensure_ascii=False)))
        position = text.find(start, len(text) - len(rest) + len(end))
    if not calls or (complete and position != -1):
        return None
    return content, calls


def _is_call(value) -> bool:
    return isinstance(value, dict) and isinstance(value.get("name"), str) and "arguments" in value


@dataclass
class CallPart:
    """One streamed part of a call: `name` on its first part only, then argument text."""

    index: int
    name: str | None
    arguments: str


class TaggedCallStream:
    """Reads one streamed answer's calls part by part, as `tagged_calls` reads it whole:
    content before the first call, then each call's name once it is known and its argument
    text as it comes (the pieces join to the call's arguments JSON)."""

    def __init__(self, start: str, end: str) -> None:
        self._start, self._end = start, end
        self._text = ""
        self._at = 0  # where the text not yet read begins
        self._index = -1  # the call being read; -1 before the first
        self._in_call = self._stopped = False
        self._arguments: _ValueEnd | None = None  # the current call's, once its head is read
        self._sent = 0  # characters of the current call's arguments already sent

    def feed(self, piece: str, finished: bool) -> tuple[str, list[CallPart]]:
        """(content, call parts) that `piece` adds; `finished`: it is the last."""
        self._text += piece
        content = ""
        parts: list[CallPart] = []
        while not self._stopped:
            if not self._in_call:
                content += self._outside(finished)
                if not self._in_call:
                    break
            elif not self._read_call(parts):
                break
        return content, parts

    def _outside(self, finished: bool) -> str:
        """The text up to the next start tag: content before the first call, dropped after
        it (as `tagged_calls` drops it). A tail that may begin a start tag waits."""
        found = self._text.find(self._start, self._at)
        if found != -1:
            upto = found
        else:
            upto = len(self._text) - (
                0 if finished else _tag_prefix(self._text, self._start, self._at)
            )
        text = self._text[self._at : upto] if self._index == -1 else ""
        self._at = upto
        if found != -1:
            self._at = found + len(self._start)
            self._in_call, self._index = True, self._index + 1
            self._arguments, self._sent = None, 0
        return text

    def _read_call(self, parts: list[CallPart]) -> bool:
        """Read the current call as far as the text goes; True once its end tag is read."""
        body = self._text[self._at :]
        if self._arguments is None:
            head = _HEAD.match(body)
            if head is None:
                return self._read_whole(body, parts)
            self._arguments = _ValueEnd(head.end())
            parts.append(CallPart(self._index, json.loads(head.group(1)), ""))
        arguments = self._arguments
        ends = arguments.scan(body)
        if ends is not None or arguments.grows:
            upto = len(body) if ends is None else ends
            if upto > arguments.start + self._sent:
                parts.append(CallPart(self._index, None, body[arguments.start + self._sent : upto]))
                self._sent = upto - arguments.start
        if ends is None:
            return False
        rest = body[ends:].lstrip()
        if rest[:1] != "}":
            return self._wait_for(rest, "}")
        return self._close(body, rest[1:].lstrip())

    def _read_whole(self, body: str, parts: list[CallPart]) -> bool:
        # Keys in another order than the grammar's: the call is sent once its JSON is whole.
        try:
            call, after = json.JSONDecoder().raw_decode(body, len(body) - len(body.lstrip()))
        except ValueError:
            return False
        if not _is_call(call):
            self._stopped = True
            return False
        parts.append(
            CallPart(self._index, call["name"], json.dumps(call["arguments"], ensure_ascii=False))
        )
        self._arguments = _ValueEnd(after, ended=True)
        return self._close(body, body[after:].lstrip())

    def _close(self, body: str, rest: str) -> bool:
        if not rest.startswith(self._end):
            return self._wait_for(rest, self._end)
        self._at += len(body) - len(rest) + len(self._end)
        self._in_call = False
        return True

    def _wait_for(self, rest: str, expected: str) -> bool:
        # A call's JSON is followed by its end tag; anything else ends the reading of calls
        # (as in `tagged_calls`), a beginning of it waits for more text.
        if rest and not expected.startswith(rest[: len(expected)]):
            self._stopped = True
        return False


class _ValueEnd:
    """Where one JSON value ends in a growing text, each character scanned once."""

    def __init__(self, start: int, ended: bool = False) -> None:
        self.start = start  # where the value begins, once leading whitespace is skipped
        self._at, self._depth = start, 0
        self._in_string = self._escaped = False
        self.grows = False  # an object, array or string: sent as it grows
        self._end: int | None = start if ended else None

    def scan(self, text: str) -> int | None:
        """The index just after the value, or None while it is still open."""
        if self._end is not None:
            return self._end
        if not self.grows:
            while self._at < len(text) and text[self._at].isspace():
                self.start = self._at = self._at + 1
            if self._at == len(text):
                return None
            if text[self._at] not in '{["':
                # A bare scalar (`12`, `true`) is sent once it ends, so that no character
                # after it is taken for part of it.
                scalar = _SCALAR_END.search(text, self._at)
                self._end = None if scalar is None else scalar.start()
                return self._end
            self.grows = True
        while self._end is None and self._at < len(text):
            self._step(text[self._at])
            self._at += 1
            if self._depth == 0 and not self._in_string:
                self._end = self._at
        return self._end

    def _step(self, char: str) -> None:
        if self._in_string:
            if self._escaped:
                self._escaped = False
            elif char == "\\":
                self._escaped = True
            elif char == '"':
                self._in_string = False
        elif char == '"':
            self._in_string = True
        elif char in "{[":
            self._depth += 1
        elif char in "}]":
            self._depth -= 1


def _tag_prefix(text: str, tag: str, start: int) -> int:
    """How many characters at the end of text[start:] may begin `tag`."""
    for size in range(min(len(tag) - 1, len(text) - start), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0
