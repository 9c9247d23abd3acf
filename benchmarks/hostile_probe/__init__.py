"""A hostile-input probe: what an outside security tester sends the proxy, at the HTTP
level and the JSON level, on every route, for a named model and for `auto`.

Runs `autoroute serve` in front of the emulator with a recording relay between them
(every request the proxy sends upstream is parsed and kept), sends each case over a raw
socket and checks every answer:

- no 5xx made by the proxy: a 5xx passes only where the emulator (which answers as
  Ollama does), sent the same bytes, answers the same status (for `auto`, the same
  bytes naming the model `auto` served);
- a refusal in the route's error shape (Ollama's `{"error": "..."}`, OpenAI's on /v1,
  Anthropic's on /v1/messages), or exactly the emulator's own answer for those bytes
  (Go's plain-text refusals of heads it cannot read);
- an `X-Request-Id` on every answer, no header a client smuggled in (`X-Injected`) on
  any answer or any upstream request, no request upstream that the client did not
  send (`/smuggled`), no CR, LF or NUL in any header upstream;
- the proxy alive and answering after each category;
- every served request on an inference route exactly one usage event, and no answer
  more than one.

Then resource exhaustion (`exhaustion.ATTACKS`): idle connections, slow heads, slow
bodies, 8 MB bodies the limits refuse (to the inference routes and to explain), 8 MB
bodies they pass (pictures), 8 MB bodies held unfinished past what the proxy holds at
once, streams whose client never reads, compressed bombs, each from a process of its
own while a well-behaved client chats through the proxy and straight to the emulator by
turns, timed once the attack is in place; its latencies are printed as ratios against
the same client with no attack, measured in the same run.

    .venv/bin/python -m benchmarks.hostile_probe [--port 19100] [--no-exhaustion]
        [--only CATEGORY|none] [--attacks WORD,...]

`--attacks` keeps the attacks whose name holds one of the words (`large` names the
refused 8 MB bodies, `passing` the passed ones, `held` the unfinished ones).

`tests/test_hostile_probe.py` runs the first part (every case but the exhaustion ones)
against an in-process proxy.
"""

from benchmarks.hostile_probe.cases_body import all_cases
from benchmarks.hostile_probe.checks import Report, probe
from benchmarks.hostile_probe.wire import Case, Recorder

__all__ = ["Case", "Recorder", "Report", "all_cases", "probe"]
