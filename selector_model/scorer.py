"""The artifact in use, scored in one batch per request, and swapped atomically.

A reload (file change, SIGHUP, the admin endpoint) builds a complete new `Artifact`
first and replaces the reference only when it loaded and passed its checks: requests
in flight keep the one they started with, and a bad file never replaces a good one.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from selector_model import artifact as artifact_module
from selector_model.artifact import Artifact
from selector_model.features import REQUEST_FEATURES, Candidate, candidate_block

log = logging.getLogger("autoroute.selector")


class Scorer:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.artifact: Artifact | None = None
        self.error: str | None = None
        self._stamp: tuple[float, float] | None = None

    def _file_stamp(self) -> tuple[float, float] | None:
        try:
            return (self.path.stat().st_mtime, self.path.with_suffix(".json").stat().st_mtime)
        except OSError:
            return None

    def reload(self) -> bool:
        """Load the artifact file again; keep the current one if the new one fails."""
        stamp = self._file_stamp()
        try:
            new = artifact_module.load(self.path)
        except Exception as exc:  # whatever is wrong with the file, the proxy keeps serving
            self._stamp = stamp
            if self.error != str(exc):
                # Loud, once per distinct failure: routing falls back or stays on the old.
                log.error(
                    "selector artifact unusable, %s: %s",
                    "keeping the previous one" if self.artifact else "using the fallback heuristic",
                    exc,
                )
            self.error = str(exc)
            return False
        self.artifact, self.error, self._stamp = new, None, stamp
        log.info("selector artifact %s loaded from %s", new.version, self.path)
        return True

    def forget_rows(self) -> None:
        """Drop the cached candidate rows (`_rows`): for a caller that knows the
        candidate objects they were made for are gone for good."""
        if self.artifact is not None:
            self.artifact.rows.clear()

    def reload_if_changed(self) -> bool:
        stamp = self._file_stamp()
        if stamp is None or stamp == self._stamp:
            return False
        return self.reload()

    def p_success(
        self, artifact: Artifact, request: Sequence[float], candidates: Sequence[Candidate]
    ) -> list[float]:
        """P(success) per candidate, in one onnxruntime batch."""
        scores: list[float] = artifact.predict(self.batch(artifact, request, candidates)).tolist()
        return scores

    @staticmethod
    def batch(
        artifact: Artifact, request: Sequence[float], candidates: Sequence[Candidate]
    ) -> np.ndarray:
        """The rows of `features.rows`: the candidates' cached rows with the request's
        features over their first columns, in a new array."""
        rows, parts = _rows(artifact, candidates)
        try:
            # A native struct rounds each float as numpy's cast does, without numpy's
            # element-by-element conversion of a Python list.
            request_row = _REQUEST_ROW.pack(*request)
        except struct.error:  # not a request's numbers: numpy says what is wrong
            batch = rows.copy()
            batch[:, :_WIDTH] = request
            return batch
        # The request's bytes joined between the candidates' parts are the rows, one
        # after another: one join and one array over it, where a copy of the rows and
        # an assignment into them take numpy's slicing and broadcasting.
        return np.frombuffer(bytearray(request_row.join(parts)), np.float32).reshape(rows.shape)


_WIDTH = len(REQUEST_FEATURES)
_REQUEST_ROW = struct.Struct(f"{_WIDTH}f")
_MAX_ENTRIES = 512


def _rows(artifact: Artifact, candidates: Sequence[Candidate]) -> tuple[np.ndarray, list[bytes]]:
    """Rows with the candidates' parts filled in (a model the artifact was fitted on as
    it learned it, `Artifact.as_learned`) and the request's part zero, and each row's
    candidate part as bytes after an empty first piece (what `Scorer.batch` joins the
    request's bytes between).

    Cached on the artifact (its width) by the identity of the candidate objects, which
    the registry keeps while nothing changes, so that a request does not hash them. The
    entry holds the candidates: their ids cannot be reused while it exists."""
    # (From a list: tuple(map(...)) would allocate past the tuple free list, and each
    # call would bring the next garbage collection nearer.)
    key = tuple([id(c) for c in candidates])
    cache = artifact.rows
    entry = cache.get(key)
    if entry is None:
        rows = np.zeros((len(candidates), artifact.width), dtype=np.float32)
        for i, candidate in enumerate(candidates):
            rows[i, _WIDTH:] = candidate_block(artifact.as_learned(candidate))
        rows.flags.writeable = False
        parts = [b"", *(row[_WIDTH:].tobytes() for row in rows)]
        if len(cache) >= _MAX_ENTRIES:
            cache.clear()
        cache[key] = entry = (tuple(candidates), rows, parts)
    return entry[1], entry[2]
