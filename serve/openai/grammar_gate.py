"""Grammars proven to compile, off the request path and within a time limit, before the engine
is given them.

The engine compiles a request's grammar in its own process, next to every other tenant's
decoding, and cannot be told to give up: a schema that compiles for 40 s holds the CPU
that long, and one that does not compile at all used to end as an empty answer. Here each
new grammar is first compiled by the same backend (xgrammar, with the model's tokenizer) in
a worker process:

- one compile at a time in the worker, and at most `per_tenant` waiting or running per
  tenant, so one tenant's schemas queue behind each other, not in front of everyone's;
- past `timeout_s`, or when the request ends first, the worker is killed (the compile with
  it) and started again for the next one; the schema is refused (400 naming the field);
- what each grammar gave (compiled, or why not) is remembered, so a schema sent again
  costs nothing here, and a hostile one is refused at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import multiprocessing
from collections import OrderedDict, defaultdict
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from ..engine.interface import OutputConstraint
from ..errors import InvalidRequest

logger = logging.getLogger(__name__)
_REMEMBERED = 1024  # grammars whose outcome is kept
_START_S = 120  # for the worker to import the backend and read the tokenizer
_CACHE_BYTES = 64 << 20  # the worker's compile cache; outcomes are remembered here anyway


def _compile_loop(conn, tokenizer) -> None:
    """The worker: compile each (kind, spec) it is sent; answer None, or why it failed."""
    import xgrammar  # the engine's grammar backend; only this process needs it

    # With its compile cache on, as the engine runs it: some grammars build only without
    # it, and those must be refused here rather than fail in the engine.
    compiler = xgrammar.GrammarCompiler(
        xgrammar.TokenizerInfo.from_huggingface(tokenizer),
        max_threads=1,
        cache_enabled=True,
        cache_limit_bytes=_CACHE_BYTES,
    )
    conn.send("ready")
    while True:
        try:
            kind, spec = conn.recv()
        except (EOFError, OSError):  # the server is gone
            return
        try:
            _compile(xgrammar, compiler, kind, spec)
            conn.send(None)
        except Exception as exc:
            conn.send(str(exc) or type(exc).__name__)


def _compile(xgrammar, compiler, kind: str, spec: str) -> None:
    # As the engine compiles them (vLLM's xgrammar backend, no free whitespace).
    if kind == "json_schema":
        compiler.compile_json_schema(spec, any_whitespace=False, separators=(",", ":"))
        return
    tag = json.loads(spec)
    if "structures" in tag:
        items = [
            xgrammar.StructuralTagItem(
                begin=s["begin"], schema=json.dumps(s["schema"]), end=s["end"]
            )
            for s in tag["structures"]
        ]
        compiler.compile_structural_tag(items, tag["triggers"])
    else:
        compiler.compile_structural_tag(spec)


class GrammarGate:
    def __init__(self, tokenizer, timeout_s: float, per_tenant: int = 1) -> None:
        self._tokenizer, self.timeout_s = tokenizer, timeout_s
        self._worker: BaseProcess | None = None
        self._conn: Connection | None = None
        self._turn = asyncio.Lock()  # the worker compiles one grammar at a time
        self._tenants: defaultdict[str | None, asyncio.Semaphore] = defaultdict(
            lambda: asyncio.Semaphore(per_tenant)
        )
        self._outcomes: OrderedDict[str, str | None] = OrderedDict()

    async def check(self, constraint: OutputConstraint | None, tenant: str | None) -> None:
        """Return once the constraint's grammar compiles; InvalidRequest naming its field if
        it does not, or not within the time limit."""
        if constraint is None or constraint.spec is None:
            return
        key = hashlib.sha256(f"{constraint.kind}\0{constraint.spec}".encode()).hexdigest()
        if key not in self._outcomes:
            async with self._tenants[tenant], self._turn:
                if key not in self._outcomes:
                    self._remember(key, await self._compile(constraint))
        self._outcomes.move_to_end(key)
        if (why := self._outcomes[key]) is not None:
            raise InvalidRequest(
                f"{constraint.param}: the schema could not be compiled into "
                f"a grammar: {why}. Simplify the schema (fewer properties, "
                "smaller patterns).",
                param=constraint.param,
            )

    def _remember(self, key: str, outcome: str | None) -> None:
        self._outcomes[key] = outcome
        while len(self._outcomes) > _REMEMBERED:
            self._outcomes.popitem(last=False)

    async def _compile(self, constraint: OutputConstraint) -> str | None:
        try:
            conn = await self._started()
            conn.send((constraint.kind, constraint.spec))
            answered = await asyncio.to_thread(conn.poll, self.timeout_s)
            if not answered:
                self.stop()
                logger.warning(
                    "a %s grammar did not compile in %s s", constraint.param, self.timeout_s
                )
                return f"it did not compile within {self.timeout_s:g} s"
            why = conn.recv()
        except BaseException:  # the request ended first (or the worker died): start afresh
            self.stop()
            raise
        return None if why is None else _backend_message(why)

    async def _started(self) -> Connection:
        """Our end of the pipe to the worker, once it has loaded the tokenizer (a start-up that
        does not count against a grammar's time limit)."""
        if self._worker is not None and self._conn is not None and self._worker.is_alive():
            return self._conn
        context = multiprocessing.get_context("spawn")
        conn, theirs = context.Pipe()
        worker = context.Process(
            target=_compile_loop,
            args=(theirs, self._tokenizer),
            name="loraloop-grammar-check",
            daemon=True,
        )
        self._worker, self._conn = worker, conn
        worker.start()
        theirs.close()
        if not await asyncio.to_thread(conn.poll, _START_S) or conn.recv() != "ready":
            raise RuntimeError("the grammar check worker did not start")
        return conn

    def stop(self) -> None:
        if self._worker is not None:
            self._worker.kill()
            self._worker.join(timeout=5)
        if self._conn is not None:
            self._conn.close()
        self._worker = self._conn = None


def _backend_message(why: str) -> str:
    """The backend's reason, without its timestamps and C++ source locations."""
    lines = [line for line in why.splitlines() if line.strip()]
    last = lines[-1] if lines else why
    return last.split(": ", 1)[1][:300] if last.startswith("[") and ": " in last else last[:300]
