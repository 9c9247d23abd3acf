"""The selector artifact: an ONNX classifier and the metadata that says how to feed it.

`load` checks everything before anyone scores with it: the metadata parses, names the
feature schema this code computes, its feature names are ours in our order, and the
model scores a probe batch. A bad artifact raises `ArtifactError` and never replaces
a good one (see `selector_model.scorer`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from selector_model import features, onnx_session
from selector_model.onnx_session import ort

SHIPPED = Path(__file__).resolve().parent / "artifacts" / "selector.onnx"


class ArtifactError(Exception):
    """The artifact cannot be used; the message says why."""


@dataclass(frozen=True)
class Artifact:
    path: Path
    version: str
    schema_version: int
    known_models: tuple[str, ...]
    # Details of the models the artifact knows (its training table), by name.
    models: dict[str, dict[str, Any]]
    policy: dict[str, Any]
    metrics: dict[str, Any]
    session: ort.InferenceSession
    input_name: str
    output_name: str
    positive_column: int
    width: int
    loaded_at: float
    load_seconds: float
    sha256: str
    # Rows with the candidates' parts filled in, by the ids of the candidate objects
    # (see `selector_model.scorer`); they go away with the artifact.
    rows: dict[tuple[int, ...], tuple[tuple[features.Candidate, ...], np.ndarray, list[bytes]]] = (
        field(default_factory=dict, repr=False, compare=False)
    )
    # Passed to every run: without one, onnxruntime's binding builds a default per call.
    # A run only reads it, so runs may share it.
    run_options: ort.RunOptions = field(default_factory=ort.RunOptions, repr=False, compare=False)

    # Each model it was fitted on as training described it (see `as_learned`), by name.
    learned: Mapping[str, features.Candidate] = field(default_factory=dict, repr=False)

    def as_learned(self, candidate: features.Candidate) -> features.Candidate:
        """`candidate` as this artifact learned it (`learned_description`)."""
        return learned_description(candidate, self.learned)

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """P(success) for each row."""
        out = self.session.run([self.output_name], {self.input_name: rows}, self.run_options)[0]
        probabilities: np.ndarray = out[:, self.positive_column]
        return probabilities

    def describe(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "version": self.version,
            "schema_version": self.schema_version,
            "sha256": self.sha256,
            "known_models": list(self.known_models),
            "features": self.width,
            "metrics": self.metrics,
            "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at)),
            "load_seconds": round(self.load_seconds, 4),
        }


def resolve(path: str) -> Path:
    return Path(path) if path else SHIPPED


def load(path: Path) -> Artifact:
    started = time.perf_counter()
    meta_path = path.with_suffix(".json")
    try:
        raw = path.read_bytes()
        meta = orjson.loads(meta_path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ArtifactError(f"cannot read {path} and {meta_path.name}: {exc}") from None
    if not isinstance(meta, dict):
        raise ArtifactError(f"{meta_path}: metadata is not an object")
    schema = meta.get("schema_version")
    if schema != features.SCHEMA_VERSION:
        raise ArtifactError(
            f"{path}: feature schema {schema!r}, this proxy computes {features.SCHEMA_VERSION}"
        )
    known = tuple(meta.get("known_models") or ())
    expected = features.feature_names()
    if list(meta.get("feature_names") or ()) != expected:
        raise ArtifactError(f"{path}: feature names differ from selector_model.features")
    try:
        session = onnx_session.session(raw)
        input_name = str(meta.get("input_name") or session.get_inputs()[0].name)
        output_name = str(meta.get("output_name") or session.get_outputs()[-1].name)
        column = int(meta.get("success_column", 1))
        probe = np.zeros((2, len(expected)), dtype=np.float32)
        out = session.run([output_name], {input_name: probe})[0]
        if getattr(out, "shape", None) != (2, out.shape[1]) or not 0 <= column < out.shape[1]:
            raise ArtifactError(f"{path}: output {output_name} has shape {out.shape}")
    except ArtifactError:
        raise
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ArtifactError(f"{path}: onnxruntime refused it: {exc}") from None
    try:
        models = {str(m["name"]): dict(m) for m in meta.get("models") or ()}
        policy = dict(meta.get("policy") or {})
        metrics = dict(meta.get("metrics") or {})
    except (TypeError, KeyError, ValueError) as exc:
        raise ArtifactError(f"{meta_path}: malformed metadata: {exc!r}") from None
    return Artifact(
        learned=learned(models),
        path=path,
        version=str(meta.get("artifact_version") or "unversioned"),
        schema_version=int(schema),
        known_models=known,
        models=models,
        policy=policy,
        metrics=metrics,
        session=session,
        input_name=input_name,
        output_name=output_name,
        positive_column=column,
        width=len(expected),
        loaded_at=time.time(),
        load_seconds=time.perf_counter() - started,
        sha256=hashlib.sha256(raw).hexdigest(),
    )


def learned(models: Mapping[str, Mapping[str, Any]]) -> dict[str, features.Candidate]:
    """The training table's descriptions that carry area scores, by model name: a row
    is a candidate record, or holds one under `knowledge` (as the shipped artifact's
    table does)."""
    found = {}
    for name, row in models.items():
        record = row.get("knowledge", row)
        if isinstance(record, Mapping) and record.get("areas"):
            found[name] = features.Candidate.from_record({**record, "name": name})
    return found


def learned_description(
    candidate: features.Candidate, learned: Mapping[str, features.Candidate]
) -> features.Candidate:
    """`candidate` with the catalogue's description of it (areas, specialties, release,
    uncertainty overall and per area, active parameters) as training recorded it
    (`learned`), for a model the artifact was fitted on. The booster placed those
    models by that description, and a catalogue that has learned more since (a
    published number of another model moves the benchmark mappings, size trends and
    neighbours everyone's areas rest on) would move them where their outcomes never
    were. Any other model: as given."""
    seen = learned.get(candidate.name)
    if seen is None:
        return candidate
    return replace(
        candidate,
        active_params_b=seen.active_params_b,
        areas=seen.areas,
        specialties=seen.specialties,
        release=seen.release,
        uncertainty=seen.uncertainty,
        area_uncertainty=seen.area_uncertainty,
    )
