"""Large inference bodies read in a worker process, once.

Reading a body holds the GIL for the length of one C call (orjson's parse of megabytes,
its writing, its dealloc), so a reader thread (`go_json.off_loop`) still stops the event
loop, and every other client, for that long; a client sending large bodies again and
again would stop it most of the time. A body over `SCREENED_BYTES` is therefore read
first in a worker process, which answers whether the limits refuse it (`check_body`:
too many messages, a prompt too long) and what that request's answer and usage event
need (`Refused`); for a body they pass, its reading as the handler's would be (`Read`:
the document, the bytes forwarded, what the usage event keeps of the prompt), which the
proxy then takes in place of reading the body itself: a copy of objects (pickle), not
orjson's parse, canonical writing and checks over megabytes (a picture for a vision
model is as large as any body a client may send). A body they refuse is answered so,
never read in the proxy's process. A key given twice is read as Go merges it where the
caller says how (`Rereads`), as the handler then reads it: refused there where the
limits refuse what Go ends with, else read again in the proxy (the merged reading is
more than the document: `auto_routes.Repeated`). Where the worker's reading may not be
the handler's (a key given twice without that; a body explain refuses in its own words
first; a document that is no object) it answers nothing, and the handler reads the
body as ever, so the answers stay the handler's; so it does for a body only Go's
slower way reads (`go_json.read_quickly`), which is then read once, not twice. A
number that is no integer in an int field changes only the bytes the handler forwards
(`go_json.as_written`), not what the limits read: screened as any other.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from proxy import go_json
from proxy import limits as request_limits
from proxy.backends import searches_the_web
from proxy.config_serving import Limits
from proxy.usage_prompt import Prompt, joined, kept, prompt_text

# A body larger than this is screened in the worker. Handing one over is a copy
# through a pipe, and its answer may wait behind other large bodies there; the
# proxy's reading of a smaller one holds the loop for a few milliseconds at most.
SCREENED_BYTES = 1024 * 1024

# Whether the caller reads the body `path` took otherwise than the limits' refusal
# (explain refuses some before the limits): the worker then answers nothing, and the
# caller reads it. A module's own function, or a `functools.partial` of one, for the
# worker to be handed; None for a caller that refuses nothing before the limits.
Declines = Callable[[str, dict[str, Any]], bool]
# How the caller reads a body `path` took that gives a key twice, as Go decodes it:
# the document Go ends with and what the caller forwards of it, or None where it reads
# the body as the quick reading does. Handed to the worker as `Declines` is.
Rereads = Callable[[str, bytes], tuple[dict[str, Any], bytes] | None]

# One worker: a large body waits for the one before it there, not in the loop, and the
# proxy's loop keeps a core of the few a host has.
_WORKERS = 1
# A worker that died, or did not start, is started again this long after, not for each
# large body (one that dies at once would be started again and again); bodies are read
# in the proxy meanwhile.
_REST_SECONDS = 60.0
_pool: ProcessPoolExecutor | None = None
_resting_until = 0.0


# The answer crosses to the proxy's process as a copy (pickle), which a thread of the
# proxy's makes holding the GIL, and so the event loop, for as long as the copy takes:
# it carries what the proxy reads, no text twice, no text the usage event does not keep.
@dataclass(frozen=True, slots=True)
class Refused:
    """What the handler takes of a body the limits refuse."""

    status: int
    message: str
    # What the usage event keeps of the prompt's texts as it reads them (`prompt_text`).
    prompt: Prompt
    offsite: bool  # `searches_the_web`


# A piece of what is forwarded: bytes as written, or a span of the body sent.
Piece = bytes | tuple[int, int]


@dataclass(frozen=True, slots=True)
class Read:
    """A body the limits pass, as the handler reads it (`go_json.read`): the document,
    what is forwarded in place of the body (None: the body itself, as sent; else in
    `_pieces`), and what the usage event keeps of the prompt's texts the limits counted
    (`limits.body_refusal`), every one of them."""

    doc: dict[str, Any]
    forwarded: tuple[Piece, ...] | None
    prompt: Prompt

    def body(self, sent: bytes) -> bytes:
        """What is forwarded of `sent`, the body this is the reading of."""
        pieces = self.forwarded
        if pieces is None:
            return sent
        view = memoryview(sent)
        return b"".join(p if isinstance(p, bytes) else view[p[0] : p[1]] for p in pieces)


# A run of this many bytes or more with no quote in what is forwarded (a long string's,
# a picture's base64) goes back as its span in the body sent where that holds it as
# written (`_pieces`), not as a second copy beside the document's.
_SPANNED = 64 * 1024


def _pieces(sent: bytes, written: bytes) -> tuple[Piece, ...]:
    """`written` as bytes and spans of `sent`: each run of `_SPANNED` bytes or more with
    no quote, a span where `sent` holds it as written. Runs are found by a look for a
    quote every half of `_SPANNED` bytes, no byte read one by one; the search stops at
    the first run `sent` writes otherwise (a client's escapes, its spaces in an array):
    a search that finds nothing reads the body to its end, and one for each run of a
    body made of them would cost a pass each."""
    step = _SPANNED // 2
    made: list[Piece] = []
    done = start = at = 0  # in `written`, in `sent`, where `written` is looked at
    while at < len(written):
        if written.find(b'"', at, at + step) >= 0:
            at += step
            continue
        run = max(done, written.rfind(b'"', done, at) + 1)
        end = written.find(b'"', at + step)
        end = len(written) if end < 0 else end
        found = sent.find(memoryview(written)[run:end], start)
        if found < 0:
            break
        if run > done:
            made.append(written[done:run])
        made.append((found, found + end - run))
        done, start, at = end, found + end - run, end
    made.append(written[done:])
    return tuple(made)


def screened(
    path: str,
    sent: bytes,
    max_values: int,
    limits: Limits,
    declines: Declines | None,
    rereads: Rereads | None,
    log_prompts: bool = False,
) -> Refused | Read | None:
    """In the worker: the limits' refusal of `sent` as the handler reads it, or its
    reading where they pass it; None where the handler's reading may differ from this
    one. The prompt's text comes back only with `log_prompts` (`usage.log_prompts`)."""
    try:
        quick = go_json.read_quickly(sent, max_values)
    except go_json.BodyError:
        return None
    if isinstance(quick, str):  # the slower reading, Go's: the handler's, once
        return None
    doc, written = quick
    lost = go_json.left_out(sent, written)
    if lost:
        if rereads is None:
            return None
        merged = rereads(path, sent)
        if merged is not None:
            doc, written = merged
    if not isinstance(doc, dict):
        return None
    if declines is not None and declines(path, doc):
        return None
    texts: list[str] = []
    refusal = request_limits.body_refusal(doc, limits, texts)
    if refusal is not None:
        prompt = kept(prompt_text(written), log_prompts)
        return Refused(*refusal, prompt, searches_the_web(path, doc))
    if lost:
        return None
    # The body itself where the reading writes it as sent: not copied through the pipe.
    forwarded = None if written == sent else _pieces(sent, written)
    return Read(doc, forwarded, kept(joined(texts), log_prompts))


def _quiet() -> None:
    # A terminal's Ctrl-C reaches the whole process group: the proxy shuts its worker
    # down (`stop`), which must not die of it first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def worker() -> ProcessPoolExecutor | None:
    """The worker's pool, started by the first large body (a second or two of imports,
    which that body and those after it wait for there, not in the loop); None while a
    worker that died rests (`_REST_SECONDS`)."""
    global _pool
    if _pool is None:
        if time.monotonic() < _resting_until:
            return None
        # Spawned, never forked: the proxy has threads and a running loop.
        context = multiprocessing.get_context("spawn")
        _pool = ProcessPoolExecutor(_WORKERS, mp_context=context, initializer=_quiet)
    return _pool


async def screen(
    path: str,
    sent: bytes,
    max_values: int,
    limits: Limits,
    declines: Declines | None = None,
    rereads: Rereads | None = None,
    log_prompts: bool = False,
) -> Refused | Read | None:
    """`screened` for a body over `SCREENED_BYTES`, in the worker; None at once for a
    smaller one, and where there is no worker (the handler then reads the body)."""
    pool = worker() if len(sent) > SCREENED_BYTES else None
    if pool is None:
        return None
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(
            pool, screened, path, sent, max_values, limits, declines, rereads, log_prompts
        )
    except BrokenProcessPool:  # the worker died (killed, out of memory) or did not start
        _failed()
        return None


def _failed() -> None:
    global _resting_until
    _resting_until = time.monotonic() + _REST_SECONDS
    _let_go()


def _let_go(wait: bool = False) -> None:
    global _pool
    pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait, cancel_futures=True)


async def stop() -> None:
    """Shut the worker down, once no request waits for it (the app's cleanup)."""
    await asyncio.to_thread(_let_go, True)
