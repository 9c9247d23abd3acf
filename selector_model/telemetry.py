"""Expected seconds per candidate, from what the proxy has seen of each (backend, model).

Every final chunk the relay parses carries the prompt-eval and generation durations
and the load time (nanoseconds); they feed exponentially weighted rates here (a
load's, `measured_load`, is added by `proxy.memory` to a model not loaded). Before
any traffic, a prior from model size and quantization stands in: decoding is bound by
memory bandwidth, so tokens/s ≈ bandwidth / bytes of the weights each token reads
(a mixture of experts reads its active parameters, not all it holds).

How long an answer is differs by model as much as speed does: a reasoning model
(deepseek-r1, qwq, qwen3 thinking) writes its thinking before its answer, and its
`eval_count` holds both. So the tokens an answer takes are each model's own mean of
the answers it finished (not those cut at the token limit, which say only that the
answer would have been longer), the caller's default until it has finished one (for a
model that thinks, unless the request turns thinking off where it can, `THINKING_TOKENS`
times that); a request's own limit caps them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from selector_model.features import Candidate
from selector_model.held import Held

# Assumed hardware for the prior: a mid-range GPU.
PRIOR_BANDWIDTH_GBPS = 400.0
PRIOR_PROMPT_SPEEDUP = 30.0  # prompt evaluation is batched: ~30x decoding speed
ALPHA = 0.2  # weight of the newest observation
# How many times the caller's default answer length a model that thinks (capability
# `thinking`) is taken to write before it has finished an answer here: its thinking
# comes first, hundreds of tokens even on the simplest questions (OptimalThinkingBench,
# arXiv:2508.13141) and many times a plain model's answer on basic maths (LLMThinkBench,
# arXiv:2507.04023). Without it a thinking mixture of experts, quick per token, would
# look the quickest answer of a fleet until its first answers were counted.
THINKING_TOKENS = 4.0
# What `Telemetry.expected_seconds_many` reads of a candidate: its key in the observed
# rates, its prior's (prompt_tps, gen_tps), whether it thinks, and whether it thinks
# whatever a request says.
_Step = tuple[tuple[str, str], tuple[float, float], bool, bool]


@dataclass
class Rates:
    prompt_tps: float
    gen_tps: float
    load_seconds: float
    samples: int = 0
    loads: int = 0  # loads measured (a load_duration well above a warm runner's)
    answer_tokens: float = 0.0  # tokens a finished answer took, on average
    answers: int = 0  # finished answers counted in it


def prior(candidate: Candidate) -> Rates:
    weights_gb = max(candidate.active_b, 0.05) * candidate.quant_bits / 8.0
    gen_tps = PRIOR_BANDWIDTH_GBPS / weights_gb
    return Rates(
        prompt_tps=gen_tps * PRIOR_PROMPT_SPEEDUP,
        gen_tps=gen_tps,
        load_seconds=0.0,  # until measured: the load's prior is `proxy.memory`'s
    )


def _ewma(old: float, new: float, samples: int) -> float:
    return new if samples == 0 else old + ALPHA * (new - old)


def _per_second(count: object, ns: object) -> float | None:
    """Tokens a second from Ollama's count and duration (nanoseconds) of one phase; None
    unless both are positive integers (a phase that did not run, or a counter missing)."""
    if isinstance(count, int) and isinstance(ns, int) and count > 0 and ns > 0:
        return count / (ns / 1e9)
    return None


class Telemetry:
    def __init__(self) -> None:
        self._rates: dict[tuple[str, str], Rates] = {}
        # The prior's (prompt_tps, gen_tps) by what it depends on.
        self._priors: dict[tuple[float, float], tuple[float, float]] = {}
        # Counts every load measured: what `measured_load` says changes only with it.
        self.loads_measured = 0
        # Per (backends, candidates) lists: each candidate's key in `_rates`, prior,
        # whether it thinks and whether it thinks whatever a request says.
        self._plans: Held[list[_Step]] = Held()

    def observe(self, backend: str, candidate: Candidate, stats: Mapping[str, int | str]) -> None:
        """Fold one final chunk's counters into the rates of (backend, model)."""
        key = (backend, candidate.name)
        rates = self._rates.get(key) or prior(candidate)
        n = rates.samples
        eval_count, eval_ns = stats.get("eval_count"), stats.get("eval_duration")
        prompt_count, prompt_ns = stats.get("prompt_eval_count"), stats.get("prompt_eval_duration")
        load_ns = stats.get("load_duration")
        seen = False
        gen_tps = _per_second(eval_count, eval_ns)
        if gen_tps is not None and isinstance(eval_count, int):
            rates.gen_tps = _ewma(rates.gen_tps, gen_tps, n)
            seen = True
            if stats.get("done_reason") != "length":
                rates.answer_tokens = _ewma(rates.answer_tokens, eval_count, rates.answers)
                rates.answers += 1
        prompt_tps = _per_second(prompt_count, prompt_ns)
        if prompt_tps is not None:
            rates.prompt_tps = _ewma(rates.prompt_tps, prompt_tps, n)
            seen = True
        # A load of a few milliseconds is the warm-runner bookkeeping, not a load.
        if isinstance(load_ns, int) and load_ns > 50_000_000:
            rates.load_seconds = _ewma(rates.load_seconds, load_ns / 1e9, rates.loads)
            rates.loads += 1
            self._rates[key] = rates
            self.loads_measured += 1
        if seen:
            rates.samples = n + 1
            self._rates[key] = rates

    def measured_load(self, backend: str, name: str) -> float | None:
        """Seconds loading `name` took on `backend`, when a load was measured there."""
        rates = self._rates.get((backend, name))
        return rates.load_seconds if rates is not None and rates.loads else None

    def prompt_seconds(self, backend: str, candidate: Candidate, tokens: float) -> float:
        """Seconds `candidate` takes on `backend` to evaluate `tokens` of prompt, from its
        observed rate or else the prior's, as `expected_seconds_many` counts them."""
        rates = self._rates.get((backend, candidate.name))
        tps = rates.prompt_tps if rates is not None else prior(candidate).prompt_tps
        return tokens / tps

    def expected_seconds_many(
        self,
        backends: Sequence[str],
        candidates: Sequence[Candidate],
        prompt_tokens: float,
        output_tokens: float,
        cap: float | None = None,
        loads: Sequence[float] = (),
        thinking: bool = False,
    ) -> list[float]:
        """Expected seconds of each candidate on its backend (prompt evaluation and
        decoding), from its observed rates or else the prior, for an answer of its own
        mean length once it has finished one, else of `output_tokens` (`THINKING_TOKENS`
        times that for a model that thinks, when `thinking`: the request lets it, or
        whatever the request says for one that cannot stop, `Candidate.thinks_always`); never
        longer than `cap` (the request's limit) tokens; plus its entry in `loads` when
        given (the seconds loading it takes, `proxy.memory`'s term). The hot path of
        `auto`: each candidate's key and prior are computed once per list of candidates
        (`Held`: `auto` passes the same lists while the registry keeps its candidates),
        the observed rates read per request, and the load added in the same loop rather
        than in a second pass over the list."""
        observed = self._rates
        out = []
        plan = self._plans.get((backends, candidates), self._plan)
        if loads and len(loads) != len(plan):
            raise ValueError(f"{len(loads)} load terms for {len(plan)} candidates")
        thought = output_tokens * THINKING_TOKENS
        for i, (key, (prompt_tps, gen_tps), thinker, always) in enumerate(plan):
            tokens = thought if always or (thinker and thinking) else output_tokens
            rates = observed.get(key)
            if rates is not None:
                prompt_tps, gen_tps = rates.prompt_tps, rates.gen_tps
                if rates.answers:
                    tokens = rates.answer_tokens
            if cap is not None and tokens > cap:
                tokens = cap
            seconds = prompt_tokens / prompt_tps + tokens / gen_tps
            out.append(seconds + loads[i] if loads else seconds)
        return out

    def _plan(self, backends: Sequence[str], candidates: Sequence[Candidate]) -> list[_Step]:
        """Per candidate, its (backend, model) key, its prior's (prompt_tps, gen_tps),
        the prior computed once per model size, whether it thinks, and whether it thinks
        whatever a request says."""
        priors = self._priors
        plan = []
        for backend, candidate in zip(backends, candidates, strict=True):
            key = (candidate.active_b, candidate.quant_bits)
            cached = priors.get(key)
            if cached is None:
                if len(priors) >= 4096:
                    priors.clear()
                rates = prior(candidate)
                cached = priors[key] = (rates.prompt_tps, rates.gen_tps)
            thinks = "thinking" in candidate.capabilities
            plan.append(
                ((backend, candidate.name), cached, thinks, thinks and candidate.thinks_always)
            )
        return plan

    def snapshot(self) -> list[dict[str, object]]:
        return [
            {
                "backend": backend,
                "model": model,
                "prompt_tokens_per_s": round(r.prompt_tps, 1),
                "tokens_per_s": round(r.gen_tps, 2),
                "load_seconds": round(r.load_seconds, 3) if r.loads else None,
                "answer_tokens": round(r.answer_tokens, 1) if r.answers else None,
                "samples": r.samples,
            }
            for (backend, model), r in sorted(self._rates.items())
        ]
