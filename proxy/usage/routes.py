"""The proxy's own usage endpoints: `POST /api/autoroute/feedback`, `GET .../stats`."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from proxy import go_json, go_requests
from proxy.aiohttp_internals import state_get
from proxy.auth import KEY_REQUEST, KeyState, sees_fleet
from proxy.backends import BackendPool
from proxy.errors import error_response
from proxy.limits import read_body
from proxy.protocol import CLOUD_BACKEND_PREFIX, JSON
from proxy.usage import event as ev
from proxy.usage.pipeline import MAX_FEEDBACK_BYTES, UsagePipeline, parse_feedback


class UsageRoutes:
    def __init__(
        self,
        pipeline: UsagePipeline,
        backends: BackendPool,
        keys_on: bool,
        body_idle_seconds: float = 0.0,
        max_json_values: int = 0,
    ) -> None:
        self.pipeline = pipeline
        self.backends = backends
        self.keys_on = keys_on  # API keys configured (`Auth.enabled`)
        self.body_idle_seconds = body_idle_seconds
        self.max_json_values = max_json_values  # `limits.max_json_values`

    async def feedback(self, request: web.Request) -> web.Response:
        # Read as every body the proxy reads, so that the same bytes mean the same here
        # and are refused in the same words (Go's decoding error) where they mean nothing.
        try:
            # No rating is this long: a longer body is refused once that much of it has
            # come, neither held toward the body limit nor parsed (reading megabytes of
            # JSON holds the loop, the GIL, for every other client however it is read).
            body = await read_body(request, self.body_idle_seconds, MAX_FEEDBACK_BYTES)
            doc, _ = await go_json.read_off_loop(body, self.max_json_values)
            if doc is None:
                raise ValueError(go_requests.decode_refusal(request.path, body))
            request_id, rating, comment = parse_feedback(doc)
        except go_json.BodyError as exc:
            return error_response(request.path, exc.status, str(exc))
        except ValueError as exc:
            return error_response(request.path, 400, str(exc))
        # With API keys, the rating counts only for the key's own requests.
        key = state_get(request, KEY_REQUEST)
        given = (key.id, key.hash) if key is not None else (None, None)
        # Who rated, where no key says: the ratings waiting for their request are
        # bounded per key, else per client (`learning.UNMATCHED_PER_RATER`).
        client = "" if key is not None else request.remote or ""
        feedback_id = self.pipeline.submit_feedback(
            ev.feedback(request_id, rating, comment, *given), client
        )
        body = orjson.dumps({"status": "accepted", "feedback_id": feedback_id})
        return web.Response(status=202, body=body, headers={"Content-Type": JSON})

    async def stats(self, request: web.Request) -> web.Response:
        key = state_get(request, KEY_REQUEST)
        if key is None or key.sees_every_model:
            doc = await self.pipeline.stats()
        else:
            # Each row of its own requests alone: a row over every key's would show it
            # how much others use a model they share, how fast it answered them and
            # what they rated it.
            doc = self._for_model_list(await self.pipeline.stats((key.id, key.hash)), key)
        if not sees_fleet(request, self.keys_on):
            # As in the public probes (`Handlers.health`): each backend under its public
            # name (such a caller has a key with a model list, and so no sink's error,
            # which names paths, hosts and ports).
            for row in doc["models"]:
                row["backend"] = self._public_backend(row["backend"])
        body = orjson.dumps(doc)
        return web.Response(body=body, headers={"Content-Type": JSON})

    @staticmethod
    def _for_model_list(doc: dict[str, Any], key: KeyState) -> dict[str, Any]:
        """What a key with a model list (not an admin key) reads of the stats, `doc`
        being those of its own requests alone: its models' rows only, as in the model
        lists (the other names, of backends' models, cloud models and names other
        clients sent, are not its to learn), and each sink's health without its counts,
        which take in every key's events: other tenants' traffic."""
        return {
            "source": doc["source"],
            "models": [
                row
                for row in doc["models"]
                if row["served_model"] is not None and key.allows_model(row["served_model"])
            ],
            "sinks": {name: {"healthy": sink["healthy"]} for name, sink in doc["sinks"].items()},
        }

    def _public_backend(self, label: str | None) -> str | None:
        if label is None or label.startswith(CLOUD_BACKEND_PREFIX):
            return label
        return self.backends.public_name(label)
