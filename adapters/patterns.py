"""Regular expressions an admin sets in a policy (a rules judge's checks, patterns inside its
JSON Schema), admitted only when they compile within a time and memory bound.

`regex` has no compile timeout, and compiling can take seconds and gigabytes: counted
repeats are unrolled, so `((a{100}){100}){100}` (21 characters) holds a million copies of
`a`. Two bounds, because each covers what the other cannot:
- a static cost bound, checked on every read of a policy (it is cheap): the counts of nested
  repeats multiply, and a pattern whose unrolled size may exceed MAX_REPEAT_COST is refused
  before anything compiles. It refuses the known explosion quickly and in process.
- when a policy is set, the patterns that pass it are compiled in a short-lived child process
  with a wall-clock limit and an address-space limit (RLIMIT_AS): whatever the static bound
  misjudges (it reads the syntax approximately) still cannot stall or grow the server.
  Verdicts are cached per pattern, so a policy set again costs no new process.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator

MAX_REPEAT_COST = 10_000
COMPILE_SECONDS = 2.0  # python start-up (~0.1 s) and every pattern of one field
COMPILE_MEMORY_BYTES = 512 << 20
_QUANTIFIER = re.compile(r"\{(\d*)(?:,(\d*))?\}")
_CACHE_LIMIT = 4096
_verdicts: dict[str, str | None] = {}  # pattern -> why it was refused (None: it compiled)

# The child: limits itself before importing regex, then compiles each pattern from stdin
# and says how it went, one line each, flushed, so that the one it stalled on is known.
# Its CPU limit ends it even if its parent dies before it can kill it.
_CHILD = """
import json, resource, sys
limit, seconds = int(sys.argv[1]), int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds))
import regex
for pattern in json.load(sys.stdin):
    try:
        regex.compile(pattern)
        print("ok", flush=True)
    except MemoryError:
        print("memory", flush=True)
    except regex.error as exc:
        print("error " + json.dumps(str(exc)), flush=True)
"""


def repeat_cost(pattern: str) -> int:
    """How many atoms the compiled pattern may hold once its counted repeats are unrolled:
    each `{m,n}` multiplies what it repeats by max(m, n). Approximate by design (it does not
    model every syntax of `regex`), erring high where it can."""
    stack = [[0, 0]]  # per open group: [its cost so far, the cost of its last atom]
    i = 0
    while i < len(pattern):
        char, frame = pattern[i], stack[-1]
        if char == "\\":
            i += 2
            frame[0] += 1
            frame[1] = 1
            continue
        if char == "[":
            i = _class_end(pattern, i)
            frame[0] += 1
            frame[1] = 1
            continue
        if char == "(":
            stack.append([0, 0])
        elif char == ")" and len(stack) > 1:
            group = max(stack.pop()[0], 1)
            stack[-1][0] += group
            stack[-1][1] = group
        elif char == "{" and (match := _QUANTIFIER.match(pattern, i)) and any(match.groups()):
            count = max(int(n) for n in match.groups() if n)
            count = min(count, MAX_REPEAT_COST + 1)  # enough to refuse, and no huge numbers
            frame[0] += frame[1] * (count - 1)
            frame[1] *= count
            i = match.end()
            continue
        elif char not in "*+?|^$":
            frame[0] += 1
            frame[1] = 1
        i += 1
    return sum(frame[0] for frame in stack)


def _class_end(pattern: str, start: int) -> int:
    """The index after the character class opening at `start` (escapes skipped, a leading
    `]` or `^]` taken literally)."""
    i = start + 1
    if pattern[i : i + 1] == "^":
        i += 1
    if pattern[i : i + 1] == "]":
        i += 1
    while i < len(pattern) and pattern[i] != "]":
        i += 2 if pattern[i] == "\\" else 1
    return i + 1


def cost_refusal(pattern: str) -> str | None:
    """Why the pattern is refused before compiling, or None."""
    if repeat_cost(pattern) > MAX_REPEAT_COST:
        return (
            f"/{pattern[:80]}/ repeats too much: its counted repeats multiply to more than "
            f"{MAX_REPEAT_COST:,} copies once compiled; use smaller counts, or + and * "
            "where any number will do"
        )
    return None


def compile_refusals(patterns: Iterable[str]) -> dict[str, str]:
    """Each pattern that does not compile within the bounds, with the reason (the static
    bound first, then a child process for what passes it)."""
    patterns = list(dict.fromkeys(patterns))
    refused = {p: why for p in patterns if (why := cost_refusal(p))}
    unknown = [p for p in patterns if p not in refused and p not in _verdicts]
    if unknown:
        _remember(compile_in_child(unknown, COMPILE_SECONDS, COMPILE_MEMORY_BYTES))
    refused.update({p: why for p in patterns if p not in refused and (why := _verdicts.get(p))})
    return refused


def _remember(verdicts: dict[str, str | None]) -> None:
    if len(_verdicts) + len(verdicts) > _CACHE_LIMIT:
        _verdicts.clear()
    _verdicts.update(verdicts)


def compile_in_child(
    patterns: list[str], seconds: float, memory_bytes: int
) -> dict[str, str | None]:
    """Each pattern's verdict (None: it compiled), compiled in a child process that is
    killed after `seconds` and may not map more than `memory_bytes`."""
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-c", _CHILD, str(memory_bytes), str(math.ceil(seconds) + 1)],
            input=json.dumps(patterns),
            capture_output=True,
            text=True,
            timeout=seconds,
            check=False,
        )
        lines, stalled = done.stdout.splitlines(), "did not compile (the compiler failed)"
    except subprocess.TimeoutExpired as exc:
        output = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        lines, stalled = output.splitlines(), f"takes more than {seconds:g} s to compile"
    verdicts = {
        pattern: None if reason is None else f"/{pattern[:80]}/ {reason}"
        for pattern, reason in zip(patterns, _reasons(lines), strict=False)
    }
    # The first pattern without a line is the one the child stalled on; the rest are unknown.
    rest = patterns[len(verdicts) :]
    if rest:
        verdicts[rest[0]] = f"/{rest[0][:80]}/ {stalled}; simplify it"
    return verdicts


def _reasons(lines: list[str]) -> Iterator[str | None]:
    for line in lines:
        if line == "ok":
            yield None
        elif line == "memory":
            yield "needs too much memory to compile; use smaller repeat counts"
        else:
            yield "is not a regular expression: " + json.loads(line.removeprefix("error "))
