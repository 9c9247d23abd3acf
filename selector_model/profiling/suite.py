"""The profiling suite: versioned prompts with checkable answers, shipped as package data.

A suite file (`suite_v<N>.yaml` beside this module) lists items per capability area;
`load()` validates it once and gives the items with the exact text a model receives.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from selector_model.catalog.knowledge import AREAS

# The selector's capability areas, in its order (the catalogue scores the same five).
Kind = Literal["choice", "number", "code", "instruction"]
KINDS: tuple[str, ...] = ("choice", "number", "code", "instruction")
CURRENT_VERSION = "1"
_HERE = Path(__file__).parent


class SuiteError(ValueError):
    """A suite file that cannot be used; the message names the item and why."""


@dataclass(frozen=True)
class Item:
    """One prompt and how its answer is checked."""

    id: str
    area: str
    kind: Kind
    prompt: str  # the text a model receives (the item's prompt and its kind's instruction)
    answer: str = ""  # choice: the letter; number: the number, as written
    tolerance: float = 1e-6  # number: allowed absolute error
    entry: str = ""  # code: the function's name
    tests: str = ""  # code: asserts run against the answer
    checks: Mapping[str, Any] = field(default_factory=dict)  # instruction constraints
    reference: str = ""  # code and instruction: an answer that passes

    def reference_answer(self) -> str:
        """A correct reply, worded as a model would give it."""
        if self.kind == "choice":
            return f"The correct option is {self.answer}.\nAnswer: {self.answer}"
        if self.kind == "number":
            return f"Working it through gives {self.answer}.\nAnswer: {self.answer}"
        if self.kind == "code":
            return f"```python\n{self.reference}\n```"
        return self.reference


@dataclass(frozen=True)
class Suite:
    version: str
    items: tuple[Item, ...]

    def areas(self) -> tuple[str, ...]:
        present = {item.area for item in self.items}
        return tuple(area for area in AREAS if area in present)

    def select(self, areas: tuple[str, ...] | None) -> tuple[Item, ...]:
        """The items of these areas (all of them for None), in suite order."""
        if areas is None:
            return self.items
        unknown = sorted(set(areas) - set(AREAS))
        if unknown:
            raise SuiteError(f"unknown area(s) {unknown}; the areas are {list(AREAS)}")
        return tuple(item for item in self.items if item.area in areas)


def _item(raw: Any, instructions: Mapping[str, str], where: str) -> Item:
    if not isinstance(raw, dict):
        raise SuiteError(f"{where}: expected a mapping")
    ident, area, kind = str(raw.get("id", "")), raw.get("area"), raw.get("kind")
    if not ident:
        raise SuiteError(f"{where}: missing id")
    if area not in AREAS:
        raise SuiteError(f"{ident}: area {area!r} is not one of {list(AREAS)}")
    if kind not in KINDS:
        raise SuiteError(f"{ident}: kind {kind!r} is not one of {list(KINDS)}")
    prompt = str(raw.get("prompt") or "").strip()
    if not prompt:
        raise SuiteError(f"{ident}: empty prompt")
    suffix = str(instructions.get(kind) or "").strip()
    text = f"{prompt}\n\n{suffix}" if suffix else prompt
    need = {
        "choice": ("answer",),
        "number": ("answer",),
        "code": ("entry", "tests", "reference"),
        "instruction": ("checks", "reference"),
    }[kind]
    missing = [name for name in need if not raw.get(name)]
    if missing:
        raise SuiteError(f"{ident}: {kind} item needs {missing}")
    checks = raw.get("checks") or {}
    if not isinstance(checks, dict):
        raise SuiteError(f"{ident}: checks must be a mapping")
    return Item(
        id=ident,
        area=str(area),
        kind=kind,
        prompt=text,
        answer=str(raw.get("answer", "")).strip(),
        tolerance=float(raw.get("tolerance", 1e-6)),
        entry=str(raw.get("entry", "")),
        tests=str(raw.get("tests", "")),
        checks=dict(checks),
        reference=str(raw.get("reference", "")).strip(),
    )


def parse(doc: Any, where: str = "suite") -> Suite:
    """A suite from its parsed YAML document, checked (see the file's header)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("items"), list):
        raise SuiteError(f"{where}: expected a mapping with `version` and `items`")
    version = str(doc.get("version") or "")
    if not version:
        raise SuiteError(f"{where}: missing version")
    instructions = doc.get("instructions") or {}
    if not isinstance(instructions, dict):
        raise SuiteError(f"{where}: instructions must be a mapping")
    items = tuple(
        _item(raw, instructions, f"{where} item {i}") for i, raw in enumerate(doc["items"])
    )
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise SuiteError(f"{where}: id {item.id} is used twice")
        seen.add(item.id)
    # Lazy import: graders import this module for Item.
    from .graders import check_names

    for item in items:
        unknown = sorted(set(item.checks) - check_names())
        if unknown:
            raise SuiteError(f"{item.id}: unknown check(s) {unknown}")
    return Suite(version=version, items=items)


@functools.cache
def load(version: str = CURRENT_VERSION) -> Suite:
    """The shipped suite of this version."""
    path = _HERE / f"suite_v{version}.yaml"
    if not path.exists():
        raise SuiteError(f"no profiling suite version {version!r} ({path.name})")
    suite = parse(yaml.safe_load(path.read_text(encoding="utf-8")), path.name)
    if suite.version != version:
        raise SuiteError(f"{path.name}: says version {suite.version!r}")
    return suite


@functools.cache
def by_prompt() -> Mapping[str, tuple[Suite, Item]]:
    """Every shipped item, with its suite, by the exact text a model receives (the
    emulator answers these)."""
    out: dict[str, tuple[Suite, Item]] = {}
    for path in sorted(_HERE.glob("suite_v*.yaml")):
        suite = load(path.stem.removeprefix("suite_v"))
        for item in suite.items:
            out[item.prompt] = (suite, item)
    return out
