"""A ZeroEval fleet replayed through `autoroute serve` over HTTP, beside the same replay
in-process: does a black-box harness measure what `training.zeroeval_replay` prints?

    python -m benchmarks.http_replay [--fleet small] [--limit N] [--seed 0] [--passes 3]
        [--concurrency 1,8] [--profiles best,balanced] [--client http|ollama]
        [--user-per-pass] [--count-completed] [--flush-seconds S]

The in-process side is `training.replay`'s: its fleets, prompts, halves, scoring and
online learner (`AutoRouter.decide` called directly). The HTTP side starts the
project's Ollama emulator serving the fleet as Ollama's library lists those models,
every model loaded (the replay's fleet is warm), and in front of it `autoroute serve`
(no database; usage and learning state in a directory of its own), then sends each
prompt as a client does, `POST /api/chat` with `"model": "auto:<profile>"`, `n` at a
time, reads the served model from `X-Autoroute-Model` (and the body's `model`), and in
the feedback passes posts `POST /api/autoroute/feedback {request_id, rating}` with the
score the dataset recorded for that model, as a black-box routing check does. Per
profile, as `replay.replay_fleet` does it: the whole set without feedback (a proxy of
its own), then on another fresh proxy the held half, and after each pass of feedback
over the other half, the held half again. Each phase prints both sides' quality and
picks, and on how many prompts the two chose differently. No timing is judged.

What the proxy does with such traffic that the replays leave out, which flags take
away to show what remains: an answer nobody rated counts for nothing from a client
that rates answers, as this harness does (`outcome.estimated`), and from one that
rates none as what the selector expected of it, at a fifth of a rating's weight
(`--count-completed` counts the held half's answers so in-process, as for a client
that never rates); a prompt sent again soon by the same user
may fail its earlier answer as a person's retry (`selector_model.outcome`;
`--user-per-pass` sends each phase as a user of its own). `auto` (balanced) weighs the
seconds the emulator's answers report, which no flag makes the replay's size-based
guess. With 8 in flight, decisions made at once see none of each other's ratings.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import socket
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import ollama
import orjson

from benchmarks import servers
from proxy.auto import AutoRouter
from selector_model import artifact, outcome
from selector_model.policy import margin_of, top_two
from training import replay
from training.data import Prompt
from training.fleet_replay import Shipped
from training.models import ModelSpec
from training.zeroeval_data import BY_OLLAMA_NAME, load_prompts
from training.zeroeval_replay import FLEETS

# The quantization Ollama's library tags of these models ship (`ollama show`), where
# the emulator's description, Q4_K_M, differs. Bits per weight are 4 either way, which is
# what the selector reads; the size on disk and in memory follow them.
LIBRARY_QUANTIZATION = {
    "llama3:8b": "Q4_0",
    "phi3.5:3.8b": "Q4_0",
    "qwen2:7b": "Q4_0",
    "yi:9b": "Q4_0",
    "gemma2:2b": "Q4_0",
}
_Q4_0 = (2, 4.55)  # general.file_type and bits per weight on disk, as synthesized.py has them
FEEDBACK = "/api/autoroute/feedback"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# ------------------------------------------------------------------ the emulator


def serve_emulator(port: int, models: Sequence[str]) -> None:
    """The emulator serving `models` as the library lists them, quick (no delay between
    tokens, no prompt evaluation time) and keeping every model loaded once loaded, as
    an Ollama with `OLLAMA_KEEP_ALIVE=-1` does."""
    from proxy import event_loop
    from proxy.cli import serve_emulator as serve
    from proxy.emulator import STATE_KEY, EmulatorSettings, create_app

    settings = EmulatorSettings(
        models=tuple(models),
        chunk_delay_ms=0.0,
        prompt_tokens_per_second=0.0,
        keep_alive_seconds=-1.0,
    )
    app = create_app(settings)
    store = app[STATE_KEY].store
    for name, level in LIBRARY_QUANTIZATION.items():
        spec = store.get(name)
        if spec is not None and spec.quantization_level != level:
            file_type, bits = _Q4_0
            size = round(spec.parameter_count * bits / 8) + 1_000_000
            store[name] = dataclasses.replace(
                spec, quantization_level=level, file_type=file_type, size=size
            )
    event_loop.run(serve(app, "127.0.0.1", port))


def start_emulator(models: Sequence[str]) -> str:
    """The emulator in a process of its own, each model loaded; its URL."""
    port = free_port()
    args = [servers.PY, "-m", "benchmarks.http_replay", "--serve-emulator", str(port)]
    servers.start([*args, "--models", ",".join(models)], port=port)
    servers.wait_ready(port)
    url = f"http://127.0.0.1:{port}"
    for model in models:
        body = orjson.dumps({"model": model, "prompt": "", "keep_alive": -1})
        urllib.request.urlopen(f"{url}/api/generate", data=body, timeout=10).read()
    return url


def start_proxy(backend: str, flush_seconds: float | None) -> tuple[str, Any]:
    """`autoroute serve` in front of `backend`, with a state directory of its own (usage
    events and learning state; `flush_seconds`: its usage.flush_interval_seconds, the
    longest an answer's event and a rating wait before the learner counts them); its
    URL and process."""
    port = free_port()
    state = tempfile.mkdtemp(dir=servers.state_home())
    env = {"AUTOROUTE_BACKENDS": backend, "XDG_STATE_HOME": state}
    if flush_seconds is not None:
        env["AUTOROUTE_USAGE__FLUSH_INTERVAL_SECONDS"] = str(flush_seconds)
    proc = servers.proxy(port, env)
    servers.wait_ready(port, "/api/autoroute/ready")
    return f"http://127.0.0.1:{port}", proc


# ------------------------------------------------------------------ both replays


@dataclass
class Phase:
    """One pass over a set of prompts: the model chosen for each, on both sides."""

    name: str
    prompts: list[Prompt]
    rated: bool = False  # each answer rated with its recorded score
    inproc: list[str] = field(default_factory=list)
    http: list[str] = field(default_factory=list)


def quality(prompts: Sequence[Prompt], chosen: Sequence[str]) -> float:
    """The mean recorded score of the chosen models (`replay.mean_outcome`)."""
    specs = [BY_OLLAMA_NAME[name] for name in chosen]
    return replay.mean_outcome(prompts, specs, dict.fromkeys(chosen, 0.0)).quality


def picks(chosen: Sequence[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for name in chosen:
        out[name] = out.get(name, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def phases(prompts: list[Prompt], passes: int, seed: int) -> list[Phase]:
    """The phases of one profile's replay, in order, as `replay.replay_fleet` runs them:
    the whole set, then the held half and, after each pass of feedback on the other
    half, the held half again."""
    learn, held = replay.halves(prompts, seed)
    out = [Phase("whole set, no feedback", prompts), Phase("held half, pass 0", held)]
    for n in range(1, passes + 1):
        out += [
            Phase(f"learn half, pass {n} (rated)", learn, True),
            Phase(f"held half, pass {n}", held),
        ]
    return out


def completed_counter(router: AutoRouter) -> replay.Feedback:
    """What the proxy's learner counts of an answer nobody rated, as a feedback hook:
    a completed answer (`outcome.implicit`), counted as `proxy.learning` counts it, as
    `outcome.against` reads it, beside the chosen model's P and margin."""
    completed = outcome.implicit({"status": 200, "done_reason": "stop"})
    assert completed is not None

    def feed(body: Mapping[str, Any], model: str, _: float) -> None:
        profile = str(body["model"]).partition(":")[2]
        decision = router.decide("/api/chat", body, profile).decision
        prior = next(s.p_success for s in decision.ranking if s.name == model)
        if decision.kind is not None:
            margin = margin_of(prior, top_two(decision.ranking))
            value = outcome.against(completed, prior)
            router.evidence.update(decision.kind, model, value, prior, completed.weight, margin)

    return feed


def in_process(
    shipped: Shipped,
    fleet: Sequence[ModelSpec],
    profile: str,
    plan: list[Phase],
    seed: int,
    count_completed: bool,
) -> None:
    """Fills each phase's `inproc` choices: `AutoRouter.decide` called directly, the
    feedback fed by `replay.online_learner`, a fresh router for the whole set and another
    for the feedback phases, as `replay.replay_fleet` has them. `count_completed`: the
    answers of the held half count as the proxy counts an answer nobody rated
    (`completed_counter`), which the replays leave out."""

    def run() -> None:
        router = replay.router_for(
            artifact.SHIPPED.parent, fleet, shipped.profiles, seed, shipped.selector
        )
        hooks: dict[bool, replay.Feedback | None] = {}
        for i, phase in enumerate(plan):
            if i == 1:
                router = replay.router_for(
                    artifact.SHIPPED.parent, fleet, shipped.profiles, seed, shipped.selector
                )
                hooks = {True: replay.online_learner(router)}
                hooks[False] = completed_counter(router) if count_completed else None
            hook = hooks.get(phase.rated)
            chosen = replay.decide_all(router, phase.prompts, fleet, profile, hook)
            phase.inproc = [spec.ollama_name for spec in chosen]

    replay.in_loop(run)


class Client:
    """A black-box harness's requests to the proxy: `concurrency` at a time, by plain
    HTTP or (`official`) by the official `ollama` client, which sends `tools: []` with
    every chat and shows no response header: each request then carries an
    `X-Request-Id` of the harness's own, which ratings name."""

    def __init__(
        self, url: str, session: aiohttp.ClientSession, concurrency: int, official: bool
    ) -> None:
        self.url = url
        self.session = session
        self.slots = asyncio.Semaphore(concurrency)
        self.official = official
        self.dropped = 0  # feedback the proxy did not accept
        # Sent as `X-Autoroute-User` when not "" (`--user-per-pass`).
        self.user = ""

    async def _http(self, body: dict[str, Any], headers: dict[str, str]) -> tuple[str, str]:
        """(the served model, the request id) of a chat sent by plain HTTP."""
        async with self.session.post(f"{self.url}/api/chat", json=body, headers=headers) as resp:
            answer = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"{resp.status}: {answer}")
            model = str(answer["model"])
            header = resp.headers.get("X-Autoroute-Model")
            if header != model:
                raise RuntimeError(f"X-Autoroute-Model {header} but model {model}")
            return model, resp.headers["X-Request-Id"]

    async def _ollama(self, body: dict[str, Any], headers: dict[str, str]) -> tuple[str, str]:
        """The same by the official client, with an id of the harness's own."""
        request_id = f"http-replay-{uuid.uuid4().hex}"
        client = ollama.AsyncClient(self.url, headers={**headers, "X-Request-Id": request_id})
        try:
            answer = await client.chat(model=body["model"], messages=body["messages"])
        finally:
            await client.close()
        return str(answer.model), request_id

    async def ask(self, prompt: Prompt, profile: str, rate: bool) -> str:
        async with self.slots:
            body = {**replay.body_of(prompt, profile), "stream": False}
            headers = {"X-Autoroute-User": self.user} if self.user else {}
            send = self._ollama if self.official else self._http
            model, request_id = await send(body, headers)
            if rate:
                score = prompt.scores[BY_OLLAMA_NAME[model].dataset_name]
                rating = {"request_id": request_id, "rating": score}
                async with self.session.post(f"{self.url}{FEEDBACK}", json=rating) as resp:
                    await resp.read()
                    self.dropped += resp.status != 202
            return model

    async def run(self, phase: Phase, profile: str) -> None:
        jobs = [self.ask(p, profile, phase.rated) for p in phase.prompts]
        phase.http = list(await asyncio.gather(*jobs))


@dataclass(frozen=True)
class Harness:
    """How the black-box side sends its requests."""

    concurrency: int
    # The proxy's usage.flush_interval_seconds (None: config.yaml's).
    flush_seconds: float | None = None
    # The official `ollama` client sends the chats (`Client`), else plain HTTP.
    official: bool = False
    # Each phase sends its own `X-Autoroute-User`: a prompt sent again in a later pass
    # is then no retry of its earlier copy (`selector_model.outcome.retry_key`).
    user_per_pass: bool = False

    def describe(self) -> str:
        out = f"{self.concurrency} in flight"
        out += ", the official ollama client" if self.official else ", plain HTTP"
        if self.flush_seconds is not None:
            out += f", usage flushed every {self.flush_seconds} s"
        return out + (", a user per pass" if self.user_per_pass else "")


async def over_http(
    backend: str, profile: str, plan: list[Phase], harness: Harness
) -> dict[str, Any]:
    """Fills each phase's `http` choices through fresh proxies in front of `backend` (one
    for the whole set, another for the feedback phases); what the last proxy's status
    says of its learning once it has counted every answer and rating."""
    proc = None
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        for i, phase in enumerate(plan):
            if i < 2:
                if proc is not None:
                    servers.stop([proc])
                url, proc = await asyncio.to_thread(start_proxy, backend, harness.flush_seconds)
                client = Client(url, session, harness.concurrency, harness.official)
            client.user = phase.name if harness.user_per_pass else ""
            await client.run(phase, profile)
        await asyncio.sleep(1.0 + (harness.flush_seconds or 0.0))
        async with session.get(f"{client.url}/api/autoroute/status") as resp:
            status: dict[str, Any] = (await resp.json())["learning"]
        status["feedback_refused"] = client.dropped
    if proc is not None:
        servers.stop([proc])
    return status


# ------------------------------------------------------------------ printing


def differing(phase: Phase) -> int:
    return sum(a != b for a, b in zip(phase.inproc, phase.http, strict=True))


def report(
    profile: str, harness: Harness, count_completed: bool, plan: list[Phase], learning: Any
) -> str:
    counted = ", unrated answers counted in-process" if count_completed else ""
    lines = [f"auto:{profile}, over HTTP {harness.describe()}{counted}"]
    lines.append(f"  {'phase':<30}{'in-process':>11}{'http':>8}{'diff':>8}{'differ':>8}")
    for phase in plan:
        q_in, q_http = quality(phase.prompts, phase.inproc), quality(phase.prompts, phase.http)
        lines.append(
            f"  {phase.name:<30}{q_in:>11.3f}{q_http:>8.3f}{(q_http - q_in) * 100:>+7.1f}p"
            f"{differing(phase):>5}/{len(phase.prompts)}"
        )
        lines.append(f"    picks in-process {orjson.dumps(picks(phase.inproc)).decode()}")
        lines.append(f"    picks http       {orjson.dumps(picks(phase.http)).decode()}")
    shown = ("observed_requests", "remembered_requests", "unmatched_feedback", "feedback_refused")
    lines.append("  proxy's learning at the end: " + ", ".join(f"{k} {learning[k]}" for k in shown))
    return "\n".join(lines)


# ------------------------------------------------------------------ main


def fleet_of(word: str) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """The ZeroEval fleet whose label has `word` (`training.zeroeval_replay.FLEETS`)."""
    found = [(label, fleet) for label, fleet in FLEETS.items() if word in label]
    if len(found) != 1:
        raise SystemExit(f"--fleet {word!r}: one of {', '.join(FLEETS)}")
    label, (names, tasks) = found[0]
    return label, names, tasks


def _ints(raw: str) -> tuple[int, ...]:
    return tuple(int(part) for part in raw.split(",") if part.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.http_replay")
    parser.add_argument("--fleet", default="small", help="a word of a ZeroEval fleet's label")
    parser.add_argument("--limit", type=int, default=None, help="prompts drawn with --seed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--concurrency", type=_ints, default=(1, 8))
    parser.add_argument("--profiles", default="best,balanced")
    parser.add_argument(
        "--flush-seconds",
        type=float,
        help="the proxy's usage.flush_interval_seconds (default: config.yaml's)",
    )
    parser.add_argument(
        "--user-per-pass",
        action="store_true",
        help="each phase sends its own X-Autoroute-User (no prompt is a retry of another)",
    )
    parser.add_argument(
        "--count-completed",
        action="store_true",
        help="in-process, the held half's answers count as the proxy counts the unrated "
        "answers of a client that rates none",
    )
    parser.add_argument(
        "--client",
        choices=("http", "ollama"),
        default="http",
        help="chats by plain HTTP or by the official ollama Python client",
    )
    parser.add_argument("--serve-emulator", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--models", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_emulator:
        serve_emulator(args.serve_emulator, args.models.split(","))
        return 0
    label, names, tasks = fleet_of(args.fleet)
    fleet = [BY_OLLAMA_NAME[n] for n in names]
    prompts = load_prompts(fleet, tasks, args.limit, args.seed)
    shipped = Shipped.load()
    print(f"{label}: {', '.join(names)}; {len(prompts)} prompts, seed {args.seed}", flush=True)
    backend = start_emulator(names)
    for profile in [p for p in args.profiles.split(",") if p]:
        start = time.monotonic()
        decided = phases(prompts, args.passes, args.seed)
        in_process(shipped, fleet, profile, decided, args.seed, args.count_completed)
        took_in = time.monotonic() - start
        for concurrency in args.concurrency:
            harness = Harness(
                concurrency, args.flush_seconds, args.client == "ollama", args.user_per_pass
            )
            plan = [dataclasses.replace(phase, http=[]) for phase in decided]
            start = time.monotonic()
            learning = asyncio.run(over_http(backend, profile, plan, harness))
            took_http = time.monotonic() - start
            print(report(profile, harness, args.count_completed, plan, learning))
            print(f"  ({took_in:.0f}s in-process, {took_http:.0f}s over HTTP)", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
