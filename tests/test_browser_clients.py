"""A browser-based client (a web UI or extension that calls the proxy with `fetch`, as
it would call Ollama) in a real browser: Debian's Chromium, driven by Playwright, on a
page of an origin Ollama lets in (localhost on another port)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web

from tests.support import Proxy, ServerThread, free_port

# What the page runs: a request to `auto`, a named model's stream on the OpenAI route,
# the model list, the proxy's own request headers, then a rating of the first answer
# by its id, as a UI with thumbs-up and thumbs-down sends it.
SCRIPT = """async (proxy) => {
  const json = {"Content-Type": "application/json"};
  const seen = (r) => ({
    status: r.status,
    id: r.headers.get("X-Request-Id"),
    model: r.headers.get("X-Autoroute-Model"),
    reason: r.headers.get("X-Autoroute-Reason"),
  });
  const hi = [{role: "user", content: "hi"}];
  const out = {};
  let r = await fetch(proxy + "/api/chat", {method: "POST", headers: json, body:
    JSON.stringify({model: "auto", stream: false, messages: hi})});
  out.auto = {...seen(r), body: (await r.json()).model};
  r = await fetch(proxy + "/v1/chat/completions", {method: "POST", headers: json, body:
    JSON.stringify({model: "qwen2.5:7b", stream: true, messages: hi})});
  out.stream = {...seen(r), text: await r.text()};
  r = await fetch(proxy + "/api/tags");
  out.tags = {...seen(r), n: (await r.json()).models.length};
  try {
    r = await fetch(proxy + "/api/chat", {method: "POST",
      headers: {...json, "X-Autoroute-User": "alice", "X-Request-Id": "page-1"},
      body: JSON.stringify({model: "auto", stream: false, messages: hi})});
    out.own = {...seen(r), body: (await r.json()).model};
  } catch (e) {
    out.own = {error: String(e)};
  }
  r = await fetch(proxy + "/api/autoroute/feedback", {method: "POST", headers: json,
    body: JSON.stringify({request_id: out.auto.id, rating: 1})});
  out.feedback = {...seen(r), body: await r.json()};
  return out;
}"""


@pytest.fixture(scope="module")
def page_url(servers: ServerThread) -> Iterator[str]:
    """A blank page on localhost, an origin Ollama lets in (any port of localhost),
    served over loopback: Chromium lets only such a page fetch from a loopback address."""

    async def blank(request: web.Request) -> web.Response:
        return web.Response(text="<html></html>", content_type="text/html")

    def app() -> web.Application:
        page = web.Application()
        page.router.add_get("/", blank)
        return page

    port = free_port()
    runner = servers.serve(app, port)
    yield f"http://localhost:{port}/"
    servers.stop(runner)


def test_a_page_reads_and_sends_the_proxys_own_headers(
    browser: Any, page_url: str, proxy: Proxy
) -> None:
    """A page reads what the proxy adds to each answer (the id a rating names, the
    model `auto` chose) and may send what the proxy reads from a request (the user an
    experiment assigns, the client's own id): a browser hides a cross-origin answer's
    headers unless the answer exposes them, and refuses to send a header the preflight
    does not allow."""
    page = browser.new_page()
    try:
        page.goto(page_url)
        out = page.evaluate(SCRIPT, proxy.url)
    finally:
        page.close()
    auto = out["auto"]
    assert auto["status"] == 200 and auto["id"], out
    assert auto["model"] == auto["body"] and auto["model"] not in ("auto", None), out
    assert auto["reason"], out
    stream = out["stream"]
    assert stream["status"] == 200 and stream["text"].endswith("data: [DONE]\n\n"), out
    assert stream["id"] and stream["model"] == "qwen2.5:7b", out
    assert out["tags"]["status"] == 200 and out["tags"]["id"], out
    own = out["own"]
    assert own.get("status") == 200 and own["id"] == "page-1", out
    assert own["model"] == own["body"], out
    feedback = out["feedback"]
    assert feedback["status"] == 202 and feedback["body"]["status"] == "accepted", out
    assert feedback["id"], out
