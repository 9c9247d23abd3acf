"""`model: auto` with real artifacts built by the training pipeline: routing follows
the artifact in both directions, reloads swap atomically and refuse bad files, the
safety rule holds, and the proxy's own usage events train the next selector."""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson
import pytest

from proxy.config_selector import Profile, Selector
from proxy.config_services import Usage
from proxy.emulator.catalog import CATALOG
from proxy.registry import model_info
from selector_model import features, onnx_session, outcome
from selector_model.policy import pick, rank
from tests.support import Emulator, Proxy, ServerThread
from training import cli
from training.data import load_usage, usage_examples
from training.pipeline import postgres_events as pipeline_events

CODER, GENERAL = "qwen2.5-coder:7b", "llama3.1:8b"
CODE = "Fix this bug:\n```python\ndef add(a, b):\n    return a - b\n```"
MATH = "Solve the equation 3 + x = 12 and calculate the remainder of x / 4"


def _candidate(model: str) -> features.Candidate:
    """The model as the proxy's registry describes it when the emulator serves it (its
    details, and the catalogue's knowledge): the selector tells models apart by that."""
    spec = next(s for s in CATALOG if s.name == model)
    show = {
        "details": spec.details(),
        "capabilities": list(spec.capabilities),
        "model_info": spec.model_info(),
    }
    return model_info(model, {"details": spec.details()}, show).candidate


def _event(text: str, model: str, ok: bool) -> dict[str, Any]:
    body = {"model": "auto", "messages": [{"role": "user", "content": text}]}
    candidate = _candidate(model)
    return {
        "request_id": f"{model}-{abs(hash(text))}",
        "endpoint": "/api/chat",
        "served_model": model,
        "features": {
            "schema_version": features.SCHEMA_VERSION,
            "request": features.request_features("/api/chat", body),
        },
        "candidate": candidate.to_record(),
        "decision": {"propensity": 0.5},
        "outcome": {"status": 200 if ok else 500, "error": None, "done_reason": "stop"},
        "rating": None,
    }


def train(source: Path | str, out: Path) -> Path:
    """`autoroute train --quick` on the usage events of `source` (a JSONL file or a
    PostgreSQL DSN), its artifact written to `out`."""
    parser = argparse.ArgumentParser()
    cli.add_train_arguments(parser)
    args = parser.parse_args(
        [
            "--from",
            str(source),
            "--out",
            str(out),
            "--quick",
            "--no-progress",
            "--no-lomo",
            "--report-dir",
            str(out / "report"),
        ]
    )
    assert cli.run_train(args) == 0
    return out / "selector.onnx"


def synthetic(path: Path, code_model: str, math_model: str) -> Path:
    """Code prompts succeed on `code_model` only, math prompts on `math_model` only."""
    events = []
    for i in range(150):
        # Distinct lengths make distinct feature vectors: prompts group by their vector.
        code = CODE + "\n    # keep the sign" * (i % 25) + " again" * (i // 25)
        math = MATH + " then check" * (i % 25) + " twice" * (i // 25)
        events += [_event(code, code_model, True), _event(code, math_model, False)]
        events += [_event(math, math_model, True), _event(math, code_model, False)]
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    return path


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two artifacts that disagree: A sends code to the coder, B sends it elsewhere."""
    base = tmp_path_factory.mktemp("artifacts")
    a = train(synthetic(base / "a.jsonl", CODER, GENERAL), base / "a")
    b = train(synthetic(base / "b.jsonl", GENERAL, CODER), base / "b")
    return a, b


def install(source: Path, target_dir: Path) -> None:
    for suffix in (".onnx", ".json"):
        shutil.copyfile(source.with_suffix(suffix), target_dir / f"selector{suffix}")


@pytest.fixture
def live(
    servers: ServerThread, emulator: Emulator, artifacts: tuple[Path, Path], tmp_path: Path
) -> Iterator[tuple[Proxy, Path]]:
    install(artifacts[0], tmp_path)
    selector = Selector(
        artifact=str(tmp_path / "selector.onnx"),
        reload_check_seconds=0.1,
        profiles={"best": Profile(cost_weight=0.0, allow=(CODER, GENERAL))},
        default_profile="best",
        min_gain=0.0,
    )
    prx = Proxy(servers, [emulator.url], selector=selector)
    yield prx, tmp_path
    prx.stop()


async def explain(proxy: Proxy, text: str) -> dict[str, Any]:
    body = {"model": "auto", "messages": [{"role": "user", "content": text}]}
    async with aiohttp.ClientSession() as session:
        async with session.post(proxy.url + "/api/autoroute/explain", json=body) as resp:
            assert resp.status == 200
            doc: dict[str, Any] = await resp.json()
            return doc


async def status(proxy: Proxy) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.get(proxy.url + "/api/autoroute/status") as resp:
            doc: dict[str, Any] = await resp.json()
            return doc


async def test_routing_follows_the_artifact_both_ways(live: tuple[Proxy, Path]) -> None:
    proxy, _ = live
    code, math = await explain(proxy, CODE), await explain(proxy, MATH)
    assert (code["model"], math["model"]) == (CODER, GENERAL)
    assert (
        code["reason"] == "ml" and code["ranking"][0]["p_success"] > code["ranking"][1]["p_success"]
    )
    async with aiohttp.ClientSession() as session:
        body = {"model": "auto", "stream": False, "messages": [{"role": "user", "content": MATH}]}
        async with session.post(proxy.url + "/api/chat", json=body) as resp:
            assert resp.headers["X-Autoroute-Model"] == GENERAL
            assert resp.headers["X-Autoroute-Reason"] == "ml"
            assert (await resp.json())["model"] == GENERAL


async def test_reload_refuses_a_bad_artifact_and_takes_a_good_one(
    live: tuple[Proxy, Path], artifacts: tuple[Path, Path]
) -> None:
    proxy, directory = live
    first = (await status(proxy))["artifact"]["version"]
    (directory / "selector.onnx").write_bytes(b"not an onnx model")
    async with aiohttp.ClientSession() as session:
        async with session.post(proxy.url + "/api/autoroute/reload") as resp:
            assert resp.status == 409
            assert "artifact not reloaded" in (await resp.json())["error"]
    kept = await status(proxy)
    assert kept["artifact"]["version"] == first and kept["artifact_error"]
    assert (await explain(proxy, CODE))["model"] == CODER  # still routing with the old one

    # A good new artifact (which disagrees) is picked up by the file watcher alone.
    install(artifacts[1], directory)
    deadline = time.monotonic() + 10
    for _ in range(400):  # polling another thread's state: no event to wait on
        if (await status(proxy))["artifact"]["version"] != first or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert (await status(proxy))["artifact"]["version"] != first
    assert (await explain(proxy, CODE))["model"] == GENERAL


async def test_other_schema_is_refused(live: tuple[Proxy, Path]) -> None:
    proxy, directory = live
    first = (await status(proxy))["artifact"]["version"]
    meta = orjson.loads((directory / "selector.json").read_bytes())
    meta["schema_version"] = features.SCHEMA_VERSION + 1
    (directory / "selector.json").write_bytes(orjson.dumps(meta))
    async with aiohttp.ClientSession() as session:
        async with session.post(proxy.url + "/api/autoroute/reload") as resp:
            assert resp.status == 409
            assert "feature schema" in (await resp.json())["error"]
    assert (await status(proxy))["artifact"]["version"] == first


def test_safety_rule_prefers_a_known_anchor_over_a_small_unknown_lead() -> None:
    rng = random.Random(0)
    ranking = rank(["new:1b", "known:7b"], [0.62, 0.60], [1.0, 1.0], 0.0, {"known:7b"})
    chosen, reason, propensity = pick(ranking, "", 0.01, 0.0, rng, unknown_margin=0.05)
    assert (chosen.name, reason, propensity) == ("known:7b", "pinned", 1.0)
    ranking = rank(["new:1b", "known:7b"], [0.80, 0.60], [1.0, 1.0], 0.0, {"known:7b"})
    assert pick(ranking, "", 0.01, 0.0, rng, unknown_margin=0.05)[0].name == "new:1b"
    # A configured default wins over a known model with a lead below min_gain.
    ranking = rank(["a:1b", "b:1b"], [0.61, 0.60], [1.0, 1.0], 0.0, {"a:1b", "b:1b"})
    assert pick(ranking, "b:1b", 0.02, 0.0, rng)[0].name == "b:1b"


def test_exploration_records_its_propensity() -> None:
    rng = random.Random(1)
    ranking = rank(
        ["a:1b", "b:1b", "c:1b"], [0.9, 0.5, 0.4], [1, 1, 1], 0.0, {"a:1b", "b:1b", "c:1b"}
    )
    seen = [pick(ranking, "", 0.0, 0.3, rng) for _ in range(3000)]
    explored = [s for s in seen if s[1] == "explore"]
    # 30% explore: 900 expected, sd ~25.
    assert 775 <= len(explored) <= 1025
    # Greedy picks: chosen with 1 - 0.3 + 0.3/3; an explored non-greedy pick: 0.3/3.
    assert {round(p, 6) for c, r, p in seen if r != "explore"} == {0.8}
    assert {round(p, 6) for c, r, p in explored if c.name != "a:1b"} == {0.1}


async def test_the_proxys_own_usage_events_train_a_selector(
    servers: ServerThread, own_emulator: Emulator, tmp_path: Path
) -> None:
    """Traffic through the proxy (exploring, so several models serve) leaves usage
    events; training reads them back with the features the proxy computed."""
    events = tmp_path / "usage" / "events.jsonl"
    selector = Selector(
        artifact=str(tmp_path / "none.onnx"),
        profiles={"balanced": Profile(exploration=1.0, allow=(CODER, GENERAL))},
    )
    usage = Usage(file_mode="always", file_path=str(events), spool_dir=str(tmp_path / "spool"))
    prx = Proxy(servers, [own_emulator.url], selector=selector, usage=usage)
    sent = []
    try:
        async with aiohttp.ClientSession() as session:
            for i in range(40):
                text = (CODE if i % 2 else MATH) + f" #{i}"
                # Every fifth request fails at the backend: events with both labels.
                own_emulator.state.fault = "error500" if i % 5 == 0 else "none"
                body = {
                    "model": "auto",
                    "stream": False,
                    "messages": [{"role": "user", "content": text}],
                }
                async with session.post(prx.url + "/api/chat", json=body) as resp:
                    assert resp.status == (500 if i % 5 == 0 else 200)
                    sent.append((text, resp.headers["X-Autoroute-Model"]))
    finally:
        prx.stop()  # drains the usage pipeline to the file
    examples, stats = load_usage([events])
    assert stats.used == 40
    assert (
        {ex.candidate.name for ex in examples} == {model for _, model in sent} == {CODER, GENERAL}
    )
    expected = [
        features.request_features("/api/chat", {"messages": [{"role": "user", "content": t}]})
        for t, _ in sent
    ]
    assert sorted(ex.request for ex in examples) == sorted(expected)
    assert sorted(ex.label for ex in examples) == [0.0] * 8 + [1.0] * 32
    # Weight: the outcome's (`selector_model.outcome`: an error fails with full weight,
    # a completed answer is a weak success) over the decision's propensity.
    recorded = [orjson.loads(line) for line in events.read_bytes().splitlines()]
    assert all(0 < e["decision"]["propensity"] <= 1 for e in recorded)
    weights = [
        (outcome.FAILED if e["outcome"]["status"] == 500 else outcome.COMPLETED)
        / e["decision"]["propensity"]
        for e in recorded
    ]
    assert sorted(ex.weight for ex in examples) == pytest.approx(sorted(weights))
    artifact = train(events, tmp_path / "artifact")
    meta = orjson.loads(artifact.with_suffix(".json").read_bytes())
    assert sorted(meta["trained_on"]) == sorted([CODER, GENERAL])


def test_scorer_rows_are_the_feature_rows(artifacts: tuple[Path, Path]) -> None:
    """Serving assembles rows from cached candidate blocks: they must be exactly
    `features.rows`, the definition training used."""
    from selector_model import artifact as artifact_module
    from selector_model.scorer import Scorer

    art = artifact_module.load(artifacts[0])
    request = features.request_features(
        "/api/chat", {"messages": [{"role": "user", "content": CODE}]}
    )
    candidates = [
        features.Candidate(CODER, family="qwen", params_b=7.6, capabilities=frozenset({"insert"})),
        features.Candidate(GENERAL, family="llama", params_b=8.0, loaded=True),
        features.Candidate("unseen:3b", params_b=3.0),
    ]
    # The models it was fitted on, as training described them (`Artifact.as_learned`).
    learned = [art.as_learned(c) for c in candidates]
    assert learned[0].areas and learned[2] is candidates[2]
    expected = np.asarray(features.rows(request, learned), dtype=np.float32)
    assert np.array_equal(Scorer.batch(art, request, candidates), expected)


def test_the_trained_models_are_scored_as_the_shipped_artifact_learned_them() -> None:
    """Serving describes a model by today's catalogue; the booster learned each of its
    training models from the description training recorded. A catalogue that says more
    of a trained model now (published numbers of other models move the benchmark
    mappings, the size trends, the neighbours) leaves its P as learned, while an unseen
    model's P follows what the catalogue says of it."""
    from selector_model import artifact as artifact_module
    from selector_model.scorer import Scorer

    art = artifact_module.load(artifact_module.SHIPPED)
    meta = orjson.loads(artifact_module.SHIPPED.with_suffix(".json").read_bytes())
    request = features.request_features(
        "/api/chat", {"messages": [{"role": "user", "content": CODE}]}
    )
    scorer = Scorer(artifact_module.SHIPPED)
    for row in meta["models"]:
        recorded = row.get("knowledge", row)
        today = model_info(row["name"], {"details": {"family": row["family"]}}, {}).candidate
        moved = replace(today, areas=tuple(a / 2 for a in recorded["areas"]), uncertainty=0.9)
        assert art.as_learned(moved).areas == tuple(recorded["areas"]), row["name"]
        assert art.as_learned(moved).uncertainty == recorded["uncertainty"], row["name"]
        # Per area as recorded too (the shipped table records none: the overall counts).
        assert art.as_learned(moved).area_uncertainty == tuple(
            recorded.get("area_uncertainty", ())
        ), row["name"]
        assert scorer.p_success(art, request, [moved]) == scorer.p_success(art, request, [today])
    unseen = model_info("qwen2.5:14b", {"details": {"family": "qwen2"}}, {}).candidate
    halved = replace(unseen, areas=tuple(a / 2 for a in unseen.areas))
    assert scorer.p_success(art, request, [halved]) != scorer.p_success(art, request, [unseen])


def test_the_evaluation_scores_the_trained_models_as_serving_does() -> None:
    """`autoroute evaluate` of a written artifact describes its models as the artifact
    recorded them, as serving does (`Artifact.as_learned`), not as the catalogue does
    now: the report's AUC is the one of serving's P(success)."""
    from selector_model import artifact as artifact_module
    from selector_model.scorer import Scorer
    from training import evaluate, export
    from training.data import load_llmrouter, prompt_request, score_matrix

    data = load_llmrouter()
    onnx_bytes, meta = export.read_artifact(artifact_module.SHIPPED)
    session = onnx_session.session(onnx_bytes)
    learned = artifact_module.learned({m["name"]: m for m in meta["models"]})
    assert sorted(learned) == sorted(m.ollama_name for m in data.models)
    reported = evaluate.evaluate_scorer(lambda x: export.onnx_predict(session, x), data, 0, learned)
    art = artifact_module.load(artifact_module.SHIPPED)
    scorer = Scorer(artifact_module.SHIPPED)
    candidates = [m.candidate() for m in data.models]
    served = np.array(
        [scorer.p_success(art, prompt_request(p.text), candidates) for p in data.test]
    )
    assert reported["auc"] == pytest.approx(
        evaluate.auc(served, score_matrix(data.test, data.models)), abs=1e-6
    )


def _post(url: str, doc: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        url, data=orjson.dumps(doc), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        return resp.status, dict(resp.headers), resp.read()


@pytest.mark.postgres
def test_train_from_the_events_the_proxy_wrote_to_postgres(
    servers: ServerThread, own_emulator: Emulator, tmp_path: Path
) -> None:
    """`autoroute train --from postgres://…` reads what the proxy's usage pipeline
    wrote, ratings from the feedback endpoint joined."""
    from tests.usage_services import database_on, postgres_base, postgres_usage

    with postgres_base() as base, database_on(base) as db:
        selector = Selector(
            artifact=str(tmp_path / "none.onnx"),
            profiles={"balanced": Profile(exploration=1.0, allow=(CODER, GENERAL))},
        )
        usage = postgres_usage(db.dsn, tmp_path)
        prx = Proxy(servers, [own_emulator.url], selector=selector, usage=usage)
        try:
            for i in range(30):
                text = (CODE if i % 2 else MATH) + f" #{i}"
                body = {
                    "model": "auto",
                    "stream": False,
                    "messages": [{"role": "user", "content": text}],
                }
                _, headers, _ = _post(prx.url + "/api/chat", body)
                if i % 3 == 0:  # a user who disliked the answer
                    feedback = {"request_id": headers["X-Request-Id"], "rating": 0}
                    assert _post(prx.url + "/api/autoroute/feedback", feedback)[0] == 202
        finally:
            prx.stop()  # drains the pipeline into PostgreSQL
        events = pipeline_events(db.dsn)
        examples, stats = usage_examples(events)
        assert stats.used == 30
        assert sorted(ex.label for ex in examples) == [0.0] * 10 + [1.0] * 20
        out = tmp_path / "artifact"
        train(db.dsn, out)
        meta = orjson.loads((out / "selector.json").read_bytes())
        assert sorted(meta["trained_on"]) == sorted([CODER, GENERAL])
        assert meta["training"]["sources"][0]["kind"] == "postgres"


@pytest.mark.parametrize("module", ["proxy.app", "training.pipeline"])
def test_loading_the_selector_writes_nothing_into_home(module: str, tmp_path: Path) -> None:
    # onnxruntime keeps a device id and a telemetry store under the home directory from
    # its import on, unless told not to before it: the proxy and training import it
    # only through selector_model.onnx_session, which does.
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "ORT_"))}
    env |= {"HOME": str(home), "PYTHONPATH": str(Path(__file__).parent.parent)}
    code = f"import {module}; from selector_model import artifact; artifact.load(artifact.SHIPPED)"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    assert sorted(str(p.relative_to(home)) for p in home.rglob("*")) == []
