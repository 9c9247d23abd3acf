"""What the proxy learned from its own traffic: per (kind of prompt, model), the
weighted sum of outcomes (`selector_model.outcome`), of their weights, and of what
the selector expected of them (its P(success) for the model on each prompt).

The evidence corrects the selector rather than replacing it: a decision uses the
prior for this prompt plus the shrunk mean gap between outcomes and expectations
(`selector_model.posterior.choose`), so the selector's per-prompt judgement survives
however much evidence there is, and a model it misjudges on a kind of prompt (one it
never saw in training, say) is corrected for every prompt of that kind.

Beside those three sums, six more describe where the model stood on the prompts it
answered, for the correction to depend on it (`selector_model.posterior`): its margin
d (its P minus the best other candidate's P in that decision) and its P, as the sums
of d, d^2, d * gap, P^2, P * d and P * gap (gap = outcome - P), each weighted. Sums
keep the table mergeable: several proxies add their increments, and an outcome taken
back is subtracted.

A plain in-memory table, read on the request path (`of`) and updated from outcomes
(`update`). Where it is kept between runs and how several proxies share it is the
proxy's business (`proxy.learning`); offline evaluation uses this class alone.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

# kind, model, then the sums `COLUMNS` names.
Row = tuple[str, str, float, float, float, float, float, float, float, float, float]
COLUMNS = (
    "successes",
    "count",
    "expected",
    "margins",
    "margin_squares",
    "margin_gaps",
    "prior_squares",
    "prior_margins",
    "prior_gaps",
)
WIDTH = len(COLUMNS)
T = TypeVar("T")
_EMPTY: Mapping[str, list[float]] = {}
# Values derived from the whole table that are kept until it changes (a few: one per
# set of candidates and prior strengths).
_DERIVED_MAX = 64


class Evidence:
    def __init__(self) -> None:
        # kind -> model -> the sums of `COLUMNS`: successes = sum(weight * value),
        # count = sum(weight), expected = sum(weight * prior), then where the model stood
        # (`update`).
        self.table: dict[str, dict[str, list[float]]] = {}
        # Changes with every update, so that what is derived from the table is computed
        # once per change rather than once per decision (`derived`).
        self.version = 0
        self._derived: dict[Hashable, tuple[int, Any]] = {}

    def update(
        self,
        kind: str,
        model: str,
        value: float,
        prior: float,
        weight: float = 1.0,
        margin: float = 0.0,
    ) -> None:
        """One outcome (`value` in [0, 1]) of `model` on a prompt of `kind` for which the
        selector's P(success) was `prior`, `margin` above the best other candidate's (a
        negative margin: below it); a negative weight takes an outcome back (a rating
        replacing an implicit signal)."""
        gap = value - prior
        self.add(
            kind,
            model,
            *(
                weight * value,
                weight,
                weight * prior,
                weight * margin,
                weight * margin * margin,
                weight * margin * gap,
                weight * prior * prior,
                weight * prior * margin,
                weight * prior * gap,
            ),
        )

    def add(self, kind: str, model: str, *sums: float) -> None:
        """Adds `sums` (of `COLUMNS`, in order; the first three alone: outcomes of
        unknown standing, `widened`) to the row of (kind, model)."""
        row = self.table.setdefault(kind, {}).setdefault(model, [0.0] * WIDTH)
        for i, value in enumerate(widened(sums)):
            row[i] += value
        self.version += 1
        # Taking back all that was added leaves float dust: make it the empty row. (A
        # table of increments holds negative rows: those stay.)
        if max(map(abs, row)) <= 1e-9:
            row[:] = [0.0] * WIDTH

    def of(self, kind: str) -> Mapping[str, list[float]]:
        """model -> the sums of `COLUMNS` for a kind (empty when none)."""
        return self.table.get(kind, _EMPTY)

    def rows(self) -> Iterator[Row]:
        for kind, models in self.table.items():
            for model, sums in models.items():
                yield (kind, model, *sums)  # type: ignore[misc]

    def size(self) -> int:
        return sum(len(models) for models in self.table.values())

    def replace(self, rows: Iterable[Sequence[Any]]) -> None:
        """The table made of `rows`: (kind, model, then the sums of `COLUMNS`, or the
        first three alone, `widened`)."""
        table: dict[str, dict[str, list[float]]] = {}
        for kind, model, *sums in rows:
            row = table.setdefault(str(kind), {}).setdefault(str(model), [0.0] * WIDTH)
            for i, value in enumerate(widened([float(v) for v in sums])):
                row[i] += value
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


def widened(sums: Sequence[float]) -> Sequence[float]:
    """`sums` of every column of `COLUMNS`: three alone (successes, count, expected, as
    rows were kept before the model's standing was) are outcomes whose margin is
    unknown, counted at margin 0 and each at the mean P, so that they add no spread
    and no trend of the gap to the fit of `selector_model.posterior`."""
    if len(sums) >= WIDTH:
        return sums
    successes, count, expected = (float(v) for v in sums[:3])
    mean = expected / count if count > 0 else 0.0
    return (
        successes,
        count,
        expected,
        0.0,
        0.0,
        0.0,
        mean * expected,
        0.0,
        mean * (successes - expected),
    )
