"""What the proxy learned from its own traffic: per (kind of prompt, model), the
weighted sum of outcomes (`selector_model.outcome`), of their weights, and of what
the selector expected of them (its P(success) for the model on each prompt).

The evidence corrects the selector rather than replacing it: a decision uses the
prior for this prompt plus the shrunk mean gap between outcomes and expectations
(`selector_model.posterior.choose`), so the selector's per-prompt judgement survives
however much evidence there is, and a model it misjudges on a kind of prompt (one it
never saw in training, say) is corrected for every prompt of that kind.

A plain in-memory table, read on the request path (`of`) and updated from outcomes
(`update`). Where it is kept between runs and how several proxies share it is the
proxy's business (`proxy.learning`); offline evaluation uses this class alone.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

Row = tuple[str, str, float, float, float]  # kind, model, successes, count, expected
T = TypeVar("T")
_EMPTY: Mapping[str, list[float]] = {}
# Values derived from the whole table that are kept until it changes (a few: one per
# set of candidates and prior strengths).
_DERIVED_MAX = 64


class Evidence:
    def __init__(self) -> None:
        # kind -> model -> [successes, count, expected]: successes = sum(weight * value),
        # count = sum(weight), expected = sum(weight * prior).
        self.table: dict[str, dict[str, list[float]]] = {}
        # Changes with every update, so that what is derived from the table is computed
        # once per change rather than once per decision (`derived`).
        self.version = 0
        self._derived: dict[Hashable, tuple[int, Any]] = {}

    def update(
        self, kind: str, model: str, value: float, prior: float, weight: float = 1.0
    ) -> None:
        """One outcome (`value` in [0, 1]) of `model` on a prompt of `kind` for which the
        selector's P(success) was `prior`; a negative weight takes an outcome back (a
        rating replacing an implicit signal)."""
        self.add(kind, model, weight * value, weight, weight * prior)

    def add(self, kind: str, model: str, successes: float, count: float, expected: float) -> None:
        row = self.table.setdefault(kind, {}).setdefault(model, [0.0, 0.0, 0.0])
        row[0] += successes
        row[1] += count
        row[2] += expected
        self.version += 1
        # Taking back all that was added leaves float dust: make it the empty row. (A
        # table of increments holds negative rows: those stay.)
        if max(abs(row[0]), abs(row[1]), abs(row[2])) <= 1e-9:
            row[0] = row[1] = row[2] = 0.0

    def of(self, kind: str) -> Mapping[str, list[float]]:
        """model -> [successes, count, expected] for a kind (empty when none)."""
        return self.table.get(kind, _EMPTY)

    def rows(self) -> Iterator[Row]:
        for kind, models in self.table.items():
            for model, (successes, count, expected) in models.items():
                yield kind, model, successes, count, expected

    def size(self) -> int:
        return sum(len(models) for models in self.table.values())

    def replace(self, rows: Iterable[Row]) -> None:
        table: dict[str, dict[str, list[float]]] = {}
        for kind, model, successes, count, expected in rows:
            row = table.setdefault(kind, {}).setdefault(model, [0.0, 0.0, 0.0])
            row[0] += successes
            row[1] += count
            row[2] += expected
        self.table = table
        self.version += 1

    def derived(self, key: Hashable, make: Callable[[], T]) -> T:
        """`make()`, a value computed from the table alone (and what `key` names), as
        computed since the table last changed."""
        version = self.version  # read first: a change while `make` runs is not missed
        got = self._derived.get(key)
        if got is not None and got[0] == version:
            value: T = got[1]
            return value
        value = make()
        if len(self._derived) >= _DERIVED_MAX:
            self._derived.clear()
        self._derived[key] = (version, value)
        return value
