"""What the proxy learned from its own traffic: per (kind of prompt, model), the
weighted sum of outcomes and of their weights (`selector_model.outcome`).

A plain in-memory table, read on the request path (`of`) and updated from outcomes
(`update`). Where it is kept between runs and how several proxies share it is the
proxy's business (`proxy.learning`); offline evaluation uses this class alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

_EMPTY: Mapping[str, list[float]] = {}


class Evidence:
    def __init__(self) -> None:
        # kind -> model -> [successes, count]: successes = sum(weight * value),
        # count = sum(weight).
        self.table: dict[str, dict[str, list[float]]] = {}

    def update(self, kind: str, model: str, value: float, weight: float = 1.0) -> None:
        """One outcome (`value` in [0, 1]) of `model` on a prompt of `kind`; a negative
        weight takes an outcome back (a rating replacing an implicit signal)."""
        self.add(kind, model, weight * value, weight)

    def add(self, kind: str, model: str, successes: float, count: float) -> None:
        row = self.table.setdefault(kind, {}).setdefault(model, [0.0, 0.0])
        row[0] += successes
        row[1] += count
        # Taking back all that was added leaves float dust: make it the empty row. (A
        # table of increments holds negative rows: those stay.)
        if abs(row[1]) <= 1e-9 and abs(row[0]) <= 1e-9:
            row[0] = row[1] = 0.0

    def of(self, kind: str) -> Mapping[str, list[float]]:
        """model -> [successes, count] for a kind (empty when nothing is known)."""
        return self.table.get(kind, _EMPTY)

    def rows(self) -> Iterator[tuple[str, str, float, float]]:
        for kind, models in self.table.items():
            for model, (successes, count) in models.items():
                yield kind, model, successes, count

    def size(self) -> int:
        return sum(len(models) for models in self.table.values())

    def replace(self, rows: Iterable[tuple[str, str, float, float]]) -> None:
        table: dict[str, dict[str, list[float]]] = {}
        for kind, model, successes, count in rows:
            row = table.setdefault(kind, {}).setdefault(model, [0.0, 0.0])
            row[0] += successes
            row[1] += count
        self.table = table

    def copy(self) -> Evidence:
        other = Evidence()
        other.replace(self.rows())
        return other
