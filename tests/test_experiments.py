"""A/B experiments: sticky assignment, traffic share, and the significance report."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from proxy import experiments
from proxy.config_selector import Experiment, Profile, Selector, Variant
from proxy.config_services import Usage
from selector_model import features
from selector_model.usage_event import Answer, UsageEvent
from tests.support import Emulator, Proxy, ServerThread, raw_request

AB = Experiment(
    share=0.5,
    variants={"a": Variant(model="qwen2.5:7b"), "b": Variant(model="mistral:7b")},
)
PLAIN = features.request_features("/api/chat", {"messages": [{"role": "user", "content": "hi"}]})


def test_assignment_is_sticky_and_shares_traffic() -> None:
    first = [
        experiments.assign({"ab": AB}, f"user{i}", "/api/chat", "balanced", PLAIN)
        for i in range(4000)
    ]
    again = [
        experiments.assign({"ab": AB}, f"user{i}", "/api/chat", "balanced", PLAIN)
        for i in range(4000)
    ]
    assert first == again
    inside = [a for a in first if a is not None]
    # 4000 users at share 0.5: 2000 expected, sd ~32; 5 sd either way.
    assert 1840 <= len(inside) <= 2160
    variants = Counter(a.variant for a in inside)
    assert abs(variants["a"] - variants["b"]) <= 5 * (len(inside) ** 0.5)


def test_filters_and_time_window() -> None:
    only_fix = Experiment(variants={"x": Variant()}, tasks=("fix",), endpoints=("/api/chat",))
    fix = features.request_features(
        "/api/chat", {"messages": [{"role": "user", "content": "fix this bug"}]}
    )
    assert experiments.assign({"e": only_fix}, "u", "/api/chat", "balanced", fix) is not None
    assert experiments.assign({"e": only_fix}, "u", "/api/chat", "balanced", PLAIN) is None
    assert experiments.assign({"e": only_fix}, "u", "/api/generate", "balanced", fix) is None
    ended = Experiment(variants={"x": Variant()}, end="2020-01-01T00:00:00Z")
    assert experiments.assign({"e": ended}, "u", "/api/chat", "balanced", PLAIN) is None


def event(variant: str, ok: bool, ms: float) -> UsageEvent:
    return UsageEvent(
        decision={"experiment": "ab", "variant": variant},
        outcome=Answer(
            status=200 if ok else 500,
            error=None if ok else "boom",
            total_ms=ms,
            eval_count=20,
        ),
    )


def test_report_names_a_winner_only_when_significant() -> None:
    rng = random.Random(7)
    clear = [event("a", rng.random() < 0.60, 100 + rng.random()) for _ in range(2000)]
    clear += [event("b", rng.random() < 0.70, 150 + rng.random()) for _ in range(2000)]
    result = experiments.report(clear, "ab")
    assert result["winner"] == "b"
    (comparison,) = result["comparisons"]
    assert comparison["success_rate_p"] < 0.001 and comparison["total_ms_p"] < 0.001
    # 31/50 against 29/50: a lead, but nowhere near significant.
    close = [event("a", i < 31, 100 + i % 7) for i in range(50)]
    close += [event("b", i < 29, 100 + i % 5) for i in range(50)]
    result = experiments.report(close, "ab")
    assert result["variants"]["a"]["success_rate"] > result["variants"]["b"]["success_rate"]
    assert result["winner"] is None


def test_a_retry_fails_the_answer_it_retries_whichever_variant_served_it() -> None:
    """The report grades the experiment's events together, as the online learner reads
    them: the same prompt sent again by the same user soon after its answer fails that
    answer, though the retry was assigned the other variant."""
    first = replace(
        event("a", True, 1000.0),
        request_id="r1",
        ts="2026-12-05T10:00:00+00:00",
        requested_model="auto",
        prompt_sha256="p" * 64,
    )
    again = replace(first, request_id="r2", ts="2026-12-05T10:00:05+00:00")
    again = replace(again, decision={"experiment": "ab", "variant": "b"})
    result = experiments.report([first, again], "ab")
    assert result["variants"]["a"]["outcome"] == {"n": 1, "mean": 0.0}
    assert result["variants"]["b"]["outcome"] == {"n": 1, "mean": 1.0}


def test_statistics_match_textbook_values() -> None:
    # Two-proportion z: 60/100 vs 45/100, z = 2.12, two-sided p = 0.034.
    assert experiments.two_proportion_p(60, 100, 45, 100) == pytest.approx(0.0339, abs=5e-4)
    # Fisher's exact test: the lady tasting tea (3 of 4 right each way), p = 0.486; and
    # the table [[6, 2], [1, 4]], p = 0.1026 (as any statistics package gives).
    assert experiments.fisher_exact_p(3, 4, 1, 4) == pytest.approx(0.4857, abs=1e-4)
    assert experiments.fisher_exact_p(6, 7, 2, 6) == pytest.approx(0.1026, abs=1e-4)
    # Mann-Whitney U with continuity correction, normal approximation: [1..5] against
    # [6..10] gives U = 0, z = 2.507, p = 0.0122.
    low, high = [1.0, 2.0, 3.0, 4.0, 5.0], [6.0, 7.0, 8.0, 9.0, 10.0]
    assert experiments.mann_whitney_p(low, high) == pytest.approx(0.0122, abs=2e-4)
    assert experiments.mann_whitney_p([0.5] * 9, [0.5] * 4) == 1.0


def rated(variant: str, rating: float) -> UsageEvent:
    return replace(event(variant, True, 100.0), rating=rating)


def test_constant_ratings_name_the_better_variant_against_the_control() -> None:
    """All 44 rated requests of the control rated 0, all 16 of the treatment rated 1:
    constant samples, where a Welch test has no variance to divide by. The treatment
    wins, and the control (configured first, though it sorts last) is the baseline."""
    ab = Experiment(variants={"old": Variant(model="a:1b"), "new": Variant(model="b:1b")})
    events = [rated("old", 0.0) for _ in range(44)] + [rated("new", 1.0) for _ in range(16)]
    result = experiments.report(events, "ab", order=ab.variants)
    (comparison,) = result["comparisons"]
    assert result["control"] == comparison["baseline"] == "old"
    assert comparison["rating_p"] < 1e-6 and comparison["outcome_p"] < 1e-6
    assert comparison["success_rate_p"] < 1e-6
    assert result["winner"] == "new"
    assert result["variants"]["old"]["outcome"] == {"n": 44, "mean": 0.0}
    assert result["variants"]["new"]["success_rate"] == 1.0
    # A control named explicitly is the baseline whatever the order.
    assert experiments.report(events, "ab", control="new", order=ab.variants)["control"] == "new"
    # The same with the roles swapped: the control wins, the treatment is worse.
    swapped = [rated("old", 1.0) for _ in range(44)] + [rated("new", 0.0) for _ in range(16)]
    assert experiments.report(swapped, "ab", order=ab.variants)["winner"] == "old"
    # All rated alike: nothing to find.
    same = [rated("old", 1.0) for _ in range(44)] + [rated("new", 1.0) for _ in range(16)]
    assert experiments.report(same, "ab", order=ab.variants)["winner"] is None


@pytest.fixture
def ab_proxy(servers: ServerThread, emulator: Emulator, tmp_path: Path) -> Iterator[Proxy]:
    selector = Selector(
        artifact=str(tmp_path / "none.onnx"),
        profiles={"balanced": Profile()},
        experiments={"ab": Experiment(share=1.0, variants=AB.variants)},
    )
    usage = Usage(
        file_mode="always",
        file_path=str(tmp_path / "events.jsonl"),
        spool_dir=str(tmp_path / "spool"),
    )
    prx = Proxy(servers, [emulator.url], selector=selector, usage=usage)
    yield prx
    prx.stop()


async def test_proxy_routes_by_variant_and_stays_sticky(ab_proxy: Proxy) -> None:
    seen: dict[str, set[str]] = {}
    async with aiohttp.ClientSession() as session:
        for user in ("ann", "bob", "cy", "dee", "eve", "fay"):
            for _ in range(3):
                body = {"model": "auto", "prompt": "hi", "stream": False}
                async with session.post(
                    ab_proxy.url + "/api/generate", json=body, headers={"X-Autoroute-User": user}
                ) as resp:
                    assert resp.headers["X-Autoroute-Reason"] == "experiment"
                    seen.setdefault(user, set()).add((await resp.json())["model"])
    assert all(len(models) == 1 for models in seen.values())
    assert set().union(*seen.values()) <= {"qwen2.5:7b", "mistral:7b"}


async def test_report_endpoint_reads_the_proxys_own_events(ab_proxy: Proxy) -> None:
    async with aiohttp.ClientSession() as session:
        for i in range(12):
            body = {"model": "auto", "prompt": "hi", "stream": False}
            headers = {"X-Autoroute-User": f"user-{i}"}
            async with session.post(
                ab_proxy.url + "/api/generate", json=body, headers=headers
            ) as resp:
                assert resp.status == 200
        report: dict[str, Any] = {}
        for _ in range(100):  # events reach the file a moment after the answers
            async with session.get(ab_proxy.url + "/api/autoroute/experiments/ab") as resp:
                assert resp.status == 200
                report = await resp.json()
            if sum(v["requests"] for v in report["variants"].values()) == 12:
                break
            await asyncio.sleep(0.05)
        async with session.get(ab_proxy.url + "/api/autoroute/experiments/nope") as resp:
            assert resp.status == 404
    assert sum(v["requests"] for v in report["variants"].values()) == 12
    assert set(report["variants"]) <= {"a", "b"}
    assert all(v["success_rate"] == 1.0 for v in report["variants"].values())
    assert report["winner"] is None  # no difference to find


async def test_a_user_header_that_is_not_utf8_is_assigned_stickily(ab_proxy: Proxy) -> None:
    body = orjson.dumps({"model": "auto", "prompt": "hi", "stream": False})
    served = set()
    for _ in range(3):
        status, fields, answer = await raw_request(
            ab_proxy.port,
            "POST",
            "/api/generate",
            [(b"X-Autoroute-User", b"ann\xff"), (b"Content-Type", b"application/json")],
            body,
        )
        assert status == 200, answer
        assert fields["x-autoroute-reason"] == b"experiment"
        served.add(orjson.loads(answer)["model"])
    assert len(served) == 1


async def test_report_endpoint_answers_a_bad_since_with_400(ab_proxy: Proxy) -> None:
    """`?since=` that is neither a time ago nor a date is the caller's mistake: a 400
    that says what it takes, not a 500."""
    async with aiohttp.ClientSession() as session:
        url = ab_proxy.url + "/api/autoroute/experiments/ab?since=yesterday"
        async with session.get(url) as resp:
            assert resp.status == 400
            error = (await resp.json())["error"]
    assert (
        error == "since: 'yesterday' is neither a time ago (24h, 7d, 30m) nor an ISO date or time"
    )
