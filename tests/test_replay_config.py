"""The evaluation's replays place the fleet's models through the catalogue the proxy
reads under the same configuration: the configured catalogue (`selector.catalog`), the
operator's own model descriptions (`selector.models`) and the profiled results
(`selector.profiles_path`), not the shipped catalogue alone."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from proxy.config_loading import load as load_config
from proxy.config_selector import Selector
from proxy.registry import catalog_for, model_info
from selector_model import artifact
from selector_model.catalog import Measured
from selector_model.features import AREAS, Candidate
from selector_model.profiling import store as profile_store
from selector_model.profiling.store import AreaResult
from training import fleet_replay, replay
from training.models import BY_OLLAMA_NAME, ModelSpec


def _replayed(fleet: list[ModelSpec], selector: Selector) -> dict[str, Candidate]:
    """Each model of `fleet` as the replay's router has it under `selector`."""
    router = replay.in_loop(
        lambda: replay.router_for(
            artifact.SHIPPED.parent, fleet, replay.profiles_of(selector), 0, selector
        )
    )
    return {name: info.candidate for name, info in router.registry.models.items()}


def _config(tmp_path: Path, selector: dict[str, object]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"selector": selector}))
    return path


def test_a_replay_places_a_users_own_model_as_the_proxy_does(tmp_path: Path) -> None:
    path = _config(tmp_path, {"models": {"my-coder:latest": {"like": "qwen2.5-coder:7b"}}})
    config = load_config(path)
    # The scores of qwen2.5:7b's column, served under a name the catalogue does not list.
    mine = replace(BY_OLLAMA_NAME["qwen2.5:7b"], ollama_name="my-coder:latest")
    fleet = [mine, BY_OLLAMA_NAME["mistral:7b"]]
    replayed = _replayed(fleet, config.selector)["my-coder:latest"]
    proxy = model_info(mine.ollama_name, mine.tag(), mine.show(), catalog_for(config))
    assert proxy.knowledge is not None and proxy.knowledge.origin != "nearest"
    assert replayed.areas == proxy.candidate.areas
    assert replayed.specialties == proxy.candidate.specialties
    assert replayed.uncertainty == proxy.candidate.uncertainty
    # Without the description the replay places it among its neighbours instead.
    unconfigured = _replayed(fleet, load_config(_config(tmp_path, {})).selector)
    assert unconfigured["my-coder:latest"].areas != replayed.areas


def _entry(name: str, family: str, params_b: float, score: float) -> dict[str, object]:
    benchmarks = ("MMLU", "GPQA", "MATH", "HumanEval", "IFEval")
    return {
        "name": name,
        "family": family,
        "params_b": params_b,
        "released": "2024-07",
        "context_length": 32768,
        "scores": dict.fromkeys(benchmarks, score),
        "sources": dict.fromkeys(benchmarks, "https://example.org/card"),
    }


def test_a_replay_reads_the_configured_catalogue(tmp_path: Path) -> None:
    catalogue = tmp_path / "models.yaml"
    catalogue.write_text(
        yaml.safe_dump(
            {
                "version": 1,
                "areas": list(AREAS),
                "benchmarks": {
                    "MMLU": "knowledge",
                    "GPQA": "reasoning",
                    "MATH": "math",
                    "HumanEval": "code",
                    "IFEval": "instruction",
                },
                "models": [
                    _entry("qwen2.5:7b", "qwen2.5", 7.6, 0.9),
                    _entry("mistral:7b", "mistral", 7.2, 0.2),
                ],
            }
        )
    )
    config = load_config(_config(tmp_path, {"catalog": str(catalogue)}))
    fleet = [BY_OLLAMA_NAME["qwen2.5:7b"], BY_OLLAMA_NAME["mistral:7b"]]
    replayed = _replayed(fleet, config.selector)
    # Every area of each model is the one result the small catalogue gives it.
    assert replayed["qwen2.5:7b"].areas == (0.9,) * len(AREAS)
    assert replayed["mistral:7b"].areas == (0.2,) * len(AREAS)
    for spec in fleet:
        proxy = model_info(spec.ollama_name, spec.tag(), spec.show(), catalog_for(config))
        assert replayed[spec.ollama_name].areas == proxy.candidate.areas


def test_a_replay_reads_the_profiled_results(tmp_path: Path) -> None:
    store = tmp_path / "profiles.json"
    measured = AreaResult(score=0.05, n=20, suite_version="1", date="", backend="")
    profile_store.save(store, "qwen2.5:7b", {"math": measured})
    config = load_config(_config(tmp_path, {"profiles_path": str(store)}))
    fleet = [BY_OLLAMA_NAME["qwen2.5:7b"], BY_OLLAMA_NAME["mistral:7b"]]
    replayed = _replayed(fleet, config.selector)["qwen2.5:7b"].areas
    unmeasured = replace(config.selector, profiles_path=str(tmp_path / "none.json"))
    published = dict(zip(AREAS, _replayed(fleet, unmeasured)["qwen2.5:7b"].areas, strict=True))
    # The measured area is weighed in as the proxy weighs it (`Catalog.with_measured`),
    # moving the published one towards the measured share.
    spec = fleet[0]
    catalog = catalog_for(config).with_measured({"qwen2.5:7b": {"math": Measured(0.05, 20)}})
    proxy = model_info(spec.ollama_name, spec.tag(), spec.show(), catalog)
    assert replayed == proxy.candidate.areas
    math = dict(zip(AREAS, replayed, strict=True))["math"]
    assert 0.05 < math < published["math"]


def test_a_replay_reads_its_configuration_beside_variables_that_name_no_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A replay started where a variable of the proxy's prefix names no setting (a
    Kubernetes Service's, a made-up one) reads the configuration as the proxy does: the
    variable is a warning, the settings the file and the variables give apply."""
    monkeypatch.setenv("AUTOROUTE_CONFIG", str(_config(tmp_path, {"min_gain": 0.25})))
    monkeypatch.setenv("AUTOROUTE_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("AUTOROUTE_SELECTOR__DEFAULT_PROFILE", "fast")
    with caplog.at_level(logging.WARNING):
        shipped = fleet_replay.Shipped.load()
    assert (shipped.selector.min_gain, shipped.selector.default_profile) == (0.25, "fast")
    (warned,) = [r.getMessage() for r in caplog.records]
    assert warned.startswith("environment variable AUTOROUTE_SERVICE_HOST ignored: no setting")
