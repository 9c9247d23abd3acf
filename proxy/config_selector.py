"""The configuration's sections for how `auto` chooses a model: `selector` (its profiles,
experiments, the user's own models, learning from traffic) and `warm` (what loading a
model costs, and the models kept loaded).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from proxy.state_dir import state_dir


def _profiles_file() -> str:
    return str(state_dir() / "profiles.json")


@dataclass(frozen=True)
class Profile:
    """How `auto:<name>` trades quality for speed."""

    # Utility = P(success) - cost_weight * expected_seconds.
    cost_weight: float = 0.02
    # Then the quickest model whose utility is within this of the choice's (points of
    # P(success) as a fraction: 0.03 is 3 points); 0: the choice itself.
    tolerance: float = 0.0
    # Candidates rated more than this below the best-rated one (points of P(success)
    # as a fraction) are not considered: what cost_weight may trade away for speed.
    # 0: no bound.
    max_loss: float = 0.0
    # Chosen when the selector is unsure, and where nothing better is clearly ahead.
    default_model: str = ""
    # Candidates allowed (empty: all) and denied, by model name.
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    # The most often (share of requests) a model other than the best by prior and
    # evidence is tried, by Thompson sampling, to learn about it.
    exploration: float = 0.0


@dataclass(frozen=True)
class Warm:
    """What loading a model costs `auto`, and how backends' warm sets are kept loaded."""

    # The keep_alive a warm model is loaded with (Ollama's duration; renewed at half).
    keep_alive: str = "30m"
    # Seconds to load one GB of a model not loaded, until a load was measured.
    load_seconds_per_gb: float = 0.5
    # A model's memory: weights (parameters x quantization bits) x this, until
    # `/api/ps` has shown its size.
    memory_factor: float = 1.2
    # Utility a candidate loses when loading it would evict a model with requests in
    # flight on its backend: chosen then only if it leads by more than this.
    evict_penalty: float = 0.1


def default_profiles() -> dict[str, Profile]:
    return {
        "balanced": Profile(cost_weight=0.004, max_loss=0.05),
        "fast": Profile(cost_weight=0.2, max_loss=0.3),
        "best": Profile(cost_weight=0.0),
    }


@dataclass(frozen=True)
class Variant:
    # Share of the experiment's traffic (weights are normalised over the variants).
    weight: float = 1.0
    # What the variant changes: the profile it routes with, or a pinned model.
    profile: str = ""
    model: str = ""


@dataclass(frozen=True)
class Experiment:
    # Share of eligible traffic that enters the experiment at all.
    share: float = 1.0
    variants: dict[str, Variant] = field(default_factory=dict)
    # The variant the report compares the others with ("": the first listed).
    control: str = ""
    # Which requests are eligible (empty: any): endpoints, auto profiles, task types
    # (fix, explain, refactor, test, generate, complete, summarize, translate).
    endpoints: tuple[str, ...] = ()
    profiles: tuple[str, ...] = ()
    tasks: tuple[str, ...] = ()
    # RFC 3339 UTC bounds; empty: unbounded.
    start: str = ""
    end: str = ""


@dataclass(frozen=True)
class ModelEntry:
    """What a user says about one of their models (`selector.models`), for models the
    catalogue does not list or describes wrongly (selector_model/catalog)."""

    # A catalogue model this one is like: its knowledge is copied, the fields below win.
    like: str = ""
    family: str = ""
    params_b: float = 0.0
    active_params_b: float = 0.0
    # Any of code, math, vision, reasoning, tools, embedding.
    specialties: tuple[str, ...] = ()
    released: str = ""  # YYYY-MM
    context_length: int = 0
    # Scores in [0, 1] by area: knowledge, reasoning, math, code, instruction.
    areas: dict[str, float] = field(default_factory=dict)
    # A pretrained (base) model, which `auto` leaves out while an instruct one can serve
    # (true), or not one (false), where neither its name nor the catalogue says so.
    pretrained: bool | None = None

    def given(self) -> dict[str, Any]:
        """The fields set (not empty or zero; a flag when true or false), as
        `Catalog.with_overrides` takes them."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {
            name: value
            for name, value in values.items()
            if isinstance(value, bool) or (value is not None and value not in ("", 0, (), {}))
        }


@dataclass(frozen=True)
class Learning:
    """Learning from the proxy's own traffic: outcomes of `auto` decisions (ratings and
    implicit signals, `selector_model.outcome`) correct the selector per kind of
    prompt and model (`proxy.learning`)."""

    enabled: bool = True
    # How many outcomes the selector's P(success) is worth against the evidence: for a
    # model the artifact never saw, and for one it was trained on.
    prior_strength: float = 10.0
    known_prior_strength: float = 200.0
    # Whether the outcomes on one kind of prompt of a model the artifact never saw also
    # move it on every other kind (its offset over every kind, `selector_model.policy`).
    model_level: bool = False
    # Once there is evidence, how many posterior standard deviations a candidate's
    # utility gains for what is not known of it, so that greedy choices try a model
    # little is known about (`selector_model.posterior.OPTIMISM`; 0: the posterior mean).
    optimism: float = 1.0
    # The share of the evidence's corrections a learned choice discounts when it is
    # compared with the choice without evidence (`selector_model.posterior._improves`;
    # 0: none).
    baseline_discount: float = 0.0
    # How often the evidence is written and (with PostgreSQL) every proxy's read back.
    sync_seconds: float = 2.0
    # Without usage.postgres_dsn: where the evidence is kept ("": learning.json
    # beside usage.file_path).
    state_file: str = ""
    # Requests whose outcome can still change (a rating, a retry) are remembered.
    recent_requests: int = 100_000
    # Monte-Carlo draws for a decision's propensity when a profile explores.
    draws: int = 32
    # The decisions' random generator (0: seeded from the OS).
    seed: int = 0


@dataclass(frozen=True)
class Selector:
    # The ONNX artifact (its metadata is the .json beside it); "" is the one shipped
    # with the package, in selector_model/artifacts/.
    artifact: str = ""
    # How often the artifact file is checked for a change (0: only SIGHUP or the
    # admin endpoint reload it).
    reload_check_seconds: float = 5.0
    # The profile plain `auto` uses.
    default_profile: str = "balanced"
    profiles: dict[str, Profile] = field(default_factory=default_profiles)
    # What `auto` means on /api/embed and /v1/embeddings ("" : refuse with 400).
    embedding_model: str = ""
    # Below this margin between the best and the profile's default model, keep the
    # default: a gamble on a small predicted gain is not worth it.
    min_gain: float = 0.02
    # List `auto` and `auto:<profile>` in /api/tags and /v1/models for editors.
    list_in_tags: bool = True
    # A/B experiments by name; a user (the X-Autoroute-User header, else the client's
    # address: `proxy.auto.user_key`) always lands in the same variant.
    experiments: dict[str, Experiment] = field(default_factory=dict)
    # The model catalogue (a models.yaml); "" is the one shipped in selector_model/catalog/.
    catalog: str = ""
    # The user's own models described for `auto`, by name (see ModelEntry).
    models: dict[str, ModelEntry] = field(default_factory=dict)
    learning: Learning = field(default_factory=Learning)
    # Measured per-area results of profiled models (`autoroute profile`), read by the
    # selector; a JSON file keyed by model name.
    profiles_path: str = field(default_factory=_profiles_file)
    # Models the proxy profiles in idle time (empty: never). Each prompt spends GPU time.
    profile_models: tuple[str, ...] = ()
