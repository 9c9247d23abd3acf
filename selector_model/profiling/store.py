"""The profile store: measured per-area results of profiled models, one JSON file.

The file maps a model name to its areas, each with the score (share of the suite's
prompts answered correctly), how many prompts it rests on, the suite version, when and
on which backend it was measured:

    {"qwen2.5:7b": {"math": {"score": 0.8, "n": 10, "suite_version": "1",
                             "date": "2026-12-02T20:15:00Z",
                             "backend": "http://127.0.0.1:11434"}, ...}, ...}

Profiling an area again replaces that area's entry; other areas stay. Writers hold an
exclusive lock on `<file>.lock` and replace the file atomically, so readers never see a
half-written file and two profilers never lose each other's results.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy import private_files
from selector_model.catalog.knowledge import AREAS, Measured

log = logging.getLogger("autoroute.profiling")


@dataclass(frozen=True)
class AreaResult:
    score: float
    n: int
    suite_version: str
    date: str
    backend: str

    def to_json(self) -> dict[str, Any]:
        return {
            "score": round(self.score, 4),
            "n": self.n,
            "suite_version": self.suite_version,
            "date": self.date,
            "backend": self.backend,
        }


def model_key(name: str) -> str:
    """The store's key for a model, read as Ollama reads names: case-insensitive, with
    `:latest` when no tag is given."""
    name = name.strip().lower()
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else name + ":latest"


def _path(path: str | os.PathLike[str]) -> Path:
    return Path(os.path.expanduser(os.fspath(path)))


def _parse(doc: Any) -> dict[str, dict[str, AreaResult]]:
    out: dict[str, dict[str, AreaResult]] = {}
    if not isinstance(doc, dict):
        return out
    for model, areas in doc.items():
        if not isinstance(areas, dict):
            continue
        kept: dict[str, AreaResult] = {}
        for area, entry in areas.items():
            if area not in AREAS:
                continue  # from a newer suite with areas this version does not know
            try:
                score, n = float(entry["score"]), int(entry["n"])
                # A score weighs as much as its items (`Catalog.with_measured`).
                if not 0.0 <= score <= 1.0 or n < 1:
                    continue
                kept[str(area)] = AreaResult(
                    score=score,
                    n=n,
                    suite_version=str(entry["suite_version"]),
                    date=str(entry.get("date", "")),
                    backend=str(entry.get("backend", "")),
                )
            except (KeyError, TypeError, ValueError):
                continue  # one bad entry does not hide the rest
        if kept:
            out[model_key(str(model))] = kept
    return out


def read(path: str | os.PathLike[str]) -> dict[str, dict[str, AreaResult]]:
    """Everything stored: model -> area -> result. A missing file is empty; an
    unreadable one is logged and read as empty (the selector then goes on without)."""
    file = _path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        log.warning("profile store %s unreadable: %s", file, exc)
        return {}
    try:
        return _parse(json.loads(text))
    except ValueError as exc:
        log.warning("profile store %s is not valid JSON: %s", file, exc)
        return {}


def load_results(path: str | os.PathLike[str]) -> dict[str, dict[str, Measured]]:
    """model -> area -> measured score and its number of items, for
    `Catalog.with_measured`."""
    return StoreCache(path).measured()


@contextmanager
def _locked(file: Path) -> Iterator[None]:
    # The store's default place is the proxy's state directory, where the usage events
    # go too: what it makes there is the proxy's user's alone (`private_files`), as the
    # store itself is (mkstemp's 0600).
    private_files.make_dirs(file.parent)
    with private_files.open_file(file.with_name(file.name + ".lock"), "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def save(
    path: str | os.PathLike[str], model: str, results: Mapping[str, AreaResult]
) -> dict[str, dict[str, AreaResult]]:
    """Merge one model's new area results into the store; returns the stored whole."""
    file = _path(path)
    with _locked(file):
        current = read(file)
        current.setdefault(model_key(model), {}).update(results)
        doc = {
            name: {area: r.to_json() for area, r in sorted(areas.items())}
            for name, areas in sorted(current.items())
        }
        fd, tmp = tempfile.mkstemp(prefix=file.name + ".", dir=file.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(doc, out, indent=2)
                out.write("\n")
            os.replace(tmp, file)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return current


class StoreCache:
    """The store as last read, read again only when the file changes (its mtime and
    size): cheap enough for explain and status on every call."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = _path(path)
        self._stamp: tuple[int, int] | None = None
        self._results: dict[str, dict[str, AreaResult]] = {}

    def results(self) -> dict[str, dict[str, AreaResult]]:
        try:
            st = self.path.stat()
            stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        if stamp != self._stamp:
            self._results = read(self.path) if stamp is not None else {}
            self._stamp = stamp
        return self._results

    def measured(self) -> dict[str, dict[str, Measured]]:
        """model -> area -> score and its number of items, as `load_results` gives it,
        for `Catalog.with_measured` on the decision path (which weighs a score by its
        items)."""
        return {
            model: {area: Measured(r.score, r.n) for area, r in areas.items()}
            for model, areas in self.results().items()
        }

    def describe(self) -> dict[str, Any]:
        """The store as JSON (status): model -> area -> result."""
        return {
            model: {area: r.to_json() for area, r in areas.items()}
            for model, areas in sorted(self.results().items())
        }

    def scores(self, model: str) -> dict[str, float]:
        """The measured shares of one model's areas (empty when never profiled)."""
        return {area: m.score for area, m in self.measured().get(model_key(model), {}).items()}
