"""The status page (`proxy.dashboard`) in a real browser: Debian's Chromium, driven by
Playwright, in front of emulators and a proxy that served `auto` requests. The page is
checked from a screenshot and its layout, not only from its HTML."""

from __future__ import annotations

import io
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import make_mocked_request

from proxy.auth import hash_key
from proxy.config_services import ApiKey, Auth, Usage
from proxy.config_serving import Backend, Health
from proxy.dashboard_series import BUCKET_SECONDS, BUCKETS, Recent
from proxy.emulator import EmulatorSettings
from proxy.outcome import Decided, Outcome, Served
from tests.cloud_standin import OPENAI_KEY
from tests.support import Emulator, Proxy, ServerThread, file_usage, free_port
from tests.test_cloud import OPENAI_ENV, StandIn, cloud_section

VIEWPORT = {"width": 1400, "height": 1400}
SECTIONS = ("#backends", "#memory", "#traffic", "#choices", "#usage")
ADMIN = "ar-admin-dashboard-key"
USER = "ar-user-dashboard-key"
WARM = ("llama3.2:3b", "qwen2.5:7b")  # on 6 GB: the first fits, then the second does not
PROMPTS = {
    "auto": "Write a Python function that merges two sorted lists.",
    "auto:fast": "Say hello.",
    "auto:best": "Prove that there are infinitely many primes, step by step.",
}


def _rgb(hex_color: str) -> tuple[int, int, int]:
    value = int(hex_color.lstrip("#"), 16)
    return (value >> 16) & 255, (value >> 8) & 255, value & 255


# The page's own colours (dashboard.html's :root) for requests, errors, refusals and
# the mean time to first chunk.
REQUESTS_BLUE, ERRORS_RED, TTFC_PURPLE = _rgb("#3b6fd4"), _rgb("#c0392b"), _rgb("#7b3fc4")
REFUSED_AMBER = _rgb("#e3a857")
# What kills the runner of the emulators of `served` (`EmulatorSettings.crash_on`).
CRASH = "CRASH-THE-RUNNER"


def _call(
    url: str, path: str, body: object = None, key: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    data = orjson.dumps(body) if body is not None else None
    request = urllib.request.Request(url + path, data, headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def _traffic(url: str, key: str | None = None) -> dict[str, str]:
    """A few requests: each `auto` profile, a named model, one that fails. Returns the
    model `auto` chose per profile (its X-Autoroute-Model header)."""
    chosen = {}
    for model, prompt in PROMPTS.items():
        status, headers, _ = _call(
            url, "/api/generate", {"model": model, "prompt": prompt, "stream": True}, key
        )
        assert status == 200
        profile = model.partition(":")[2] or "balanced"
        chosen[profile] = headers["X-Autoroute-Model"]
    status, _, _ = _call(url, "/api/chat", {"model": "llama3.2:3b", "messages": []}, key)
    assert status == 200
    status, _, _ = _call(url, "/api/generate", {"model": "no-such-model", "prompt": "x"}, key)
    assert status == 404
    return chosen


def _wait_for(check: Any, what: str) -> Any:
    """Polls `check` (the backends refresh every 0.1 s here) until it is truthy."""
    for _ in range(300):
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


def _refreshed(page: Any) -> None:
    """Waits for the page's first refresh from dashboard.json (it counts them in
    `data-refreshes`). A selector, not a script: the page's policy forbids eval."""
    page.wait_for_selector("body[data-refreshes]:not([data-refreshes='0'])", timeout=20_000)


def _color_pixels(png: bytes, color: tuple[int, int, int], tolerance: int = 40) -> int:
    from PIL import Image  # matplotlib's dependency, in the train extra

    image = Image.open(io.BytesIO(png)).convert("RGB")
    return sum(
        1
        for pixel in image.get_flattened_data()
        if all(abs(p - c) <= tolerance for p, c in zip(pixel, color, strict=True))
    )


@pytest.fixture
def served(servers: ServerThread, tmp_path: Path) -> Iterator[tuple[Proxy, list[str]]]:
    """Two emulators, the first with its memory configured and a warm set of which one
    model fits, and a third backend nobody listens on (its circuit opens)."""
    settings = EmulatorSettings(chunk_delay_ms=1.0, crash_on=CRASH)
    emulators = [Emulator(servers, settings), Emulator(servers, settings)]
    gpu = Backend(url=emulators[0].url, name="gpu", vram_gb=6.0, warm=WARM)
    dead = f"http://127.0.0.1:{free_port()}"
    usage = file_usage(tmp_path)
    health = Health(interval_seconds=0.1, failure_threshold=1, open_seconds=3600)
    backends = [gpu, Backend(url=emulators[1].url), Backend(url=dead)]
    prx = Proxy(servers, backends, usage=usage, health=health)
    yield prx, [e.url for e in emulators]
    prx.stop()
    for emulator in emulators:
        emulator.stop()


def test_dashboard_in_chromium(
    browser: Any, served: tuple[Proxy, list[str]], tmp_path: Path
) -> None:
    prx, _ = served
    chosen = _traffic(prx.url)
    # A runner that dies: an error, where the 404 of `_traffic` is a refusal.
    crash = {"model": "llama3.2:3b", "prompt": CRASH, "stream": False}
    assert _call(prx.url, "/api/generate", crash)[0] == 500

    def loaded() -> bool:
        doc = orjson.loads(_call(prx.url, "/api/autoroute/dashboard.json")[2])
        return any(b["loaded"] for b in doc["backends"])

    _wait_for(loaded, "a backend's /api/ps to list a loaded model")

    def warmed() -> bool:
        doc = orjson.loads(_call(prx.url, "/api/autoroute/status")[2])
        warm = doc["backends"][0]["warm"]
        return warm.get(WARM[0]) == "loaded" and WARM[1] in warm

    _wait_for(warmed, "the warm set's first check")

    page = browser.new_page(viewport=VIEWPORT)
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(prx.url + "/api/autoroute/dashboard?refresh=1")
    # The first data is inline; a refresh fetched from dashboard.json follows.
    _refreshed(page)
    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 0
    assert problems == []  # no script error, no refused inline script or style (CSP)

    for section in SECTIONS:
        box = page.locator(section).bounding_box()
        assert box is not None, section
        assert box["width"] > 100 and box["height"] > 50, (section, box)
        assert box["x"] >= 0 and box["y"] >= 0, (section, box)
        assert box["x"] + box["width"] <= VIEWPORT["width"], (section, box)
        assert box["y"] + box["height"] <= VIEWPORT["height"], (section, box)
        assert page.locator(section).is_visible()

    # Backends: each with its circuit; the dead one open, a loaded model with its VRAM.
    rows = page.locator("#backends tbody tr")
    assert rows.count() == 3
    badges = page.locator("#backends .badge").all_inner_texts()
    assert badges.count("closed") == 2 and badges.count("open") == 1
    loaded_text = page.locator("#backends .loaded").all_inner_texts()
    assert any("B)" in text for text in loaded_text), loaded_text  # "name (2.1 GB)"

    # Memory and warm sets: each backend's figures and warm states as the status JSON
    # gives them (read after the page's refresh: nothing loads or unloads meanwhile).
    status = orjson.loads(_call(prx.url, "/api/autoroute/status")[2])["backends"]
    rows = page.locator("#memory tbody tr")
    assert rows.count() == len(status) == 3
    for i, memory in enumerate(status):
        shown = rows.nth(i)
        assert shown.locator("td").first.inner_text() == memory["backend"]
        used, _, capacity = shown.locator(".used").inner_text().partition(" GB ")
        assert abs(float(used) - memory["memory_used_gb"]) <= 0.005
        if memory["capacity_gb"] is None:
            assert (capacity, memory["capacity_from"]) == ("(capacity unknown)", "unknown")
        else:
            size, _, source = capacity.removeprefix("of ").partition(" GB (")
            assert abs(float(size) - memory["capacity_gb"]) <= 0.005
            assert source == memory["capacity_from"] + ")"
        assert shown.locator(".meter").count() == (1 if memory["capacity_gb"] else 0)
        items = shown.locator(".warm li")
        if not memory["warm"]:
            assert items.all_inner_texts() == ["none"]
            continue
        assert items.count() == len(memory["warm"])
        for item, (model, state) in zip(items.all(), memory["warm"].items(), strict=True):
            kind, _, detail = state.partition(": ")
            assert item.locator(".model").inner_text() == model
            assert item.locator(".badge").inner_text() == kind
            assert item.locator("div").all_inner_texts() == ([detail] if detail else [])
    gpu = status[0]
    assert (gpu["backend"], gpu["capacity_gb"], gpu["capacity_from"]) == ("gpu", 6.0, "config")
    assert gpu["memory_used_gb"] > 0
    assert gpu["warm"][WARM[0]] == "loaded"
    assert gpu["warm"][WARM[1]].startswith("does not fit: needs ")
    assert status[2]["capacity_from"] == "unknown"

    # Charts: the bars and lines are there, in the page's colours.
    requests_png = page.locator("#chart-requests svg").screenshot()
    assert _color_pixels(requests_png, REQUESTS_BLUE) > 0
    assert _color_pixels(requests_png, ERRORS_RED) > 0
    assert _color_pixels(requests_png, REFUSED_AMBER) > 0
    ttfc_png = page.locator("#chart-ttfc svg").screenshot()
    assert _color_pixels(ttfc_png, TTFC_PURPLE) > 0
    assert page.locator("#chart-requests rect").count() >= 3  # requests, errors, refusals

    # auto's choices: per profile, the model it chose and why.
    profiles = page.locator("#profiles").inner_text()
    for profile, model in chosen.items():
        assert f"auto:{profile}" in profiles
        assert model in page.locator("#profiles td.model").all_inner_texts()
    assert "latest: " in profiles
    # What each reason means is folded away (the page keeps to one screen) until asked.
    assert not page.locator("#reasons").is_visible()
    page.locator("#reasons-box summary").click()
    assert "ml = the best score" in page.locator("#reasons").inner_text()

    # Usage: the file sink, healthy, its spool empty.
    usage = page.locator("#usage tbody tr").first.inner_text()
    assert usage.split()[:2] == ["file", "healthy"], usage
    page.close()


@pytest.fixture
def keyed(servers: ServerThread, tmp_path: Path) -> Iterator[Proxy]:
    emulator = Emulator(servers, EmulatorSettings(chunk_delay_ms=1.0))
    auth = Auth(
        keys=(
            ApiKey(sha256=hash_key(ADMIN), name="ops", role="admin"),
            ApiKey(sha256=hash_key(USER), name="dev"),
        )
    )
    usage = Usage(file_path=str(tmp_path / "events.jsonl"), spool_dir=str(tmp_path / "spool"))
    prx = Proxy(servers, [emulator.url], auth=auth, usage=usage)
    yield prx
    prx.stop()
    emulator.stop()


@pytest.mark.parametrize("path", ["/api/autoroute/dashboard", "/api/autoroute/dashboard.json"])
def test_dashboard_is_for_admin_keys(keyed: Proxy, path: str) -> None:
    status, headers, _ = _call(keyed.url, path)
    assert (status, headers.get("WWW-Authenticate")) == (401, "Bearer")
    status, _, body = _call(keyed.url, path, key=USER)
    assert (status, orjson.loads(body)) == (403, {"error": f"forbidden: {path} needs an admin key"})
    # A key in the URL is not a key.
    assert _call(keyed.url, f"{path}?key={ADMIN}")[0] == 401
    status, headers, _ = _call(keyed.url, path, key=ADMIN)
    assert status == 200
    assert headers["Cache-Control"] == "no-store"


def test_dashboard_with_an_admin_key_in_chromium(
    browser: Any, keyed: Proxy, tmp_path: Path
) -> None:
    """The browser sends the key as a header on every request (as an extension that
    sets headers does): the page loads and refreshes. With a user's key it does not."""
    chosen = _traffic(keyed.url, ADMIN)
    context = browser.new_context(
        viewport=VIEWPORT, extra_http_headers={"Authorization": f"Bearer {ADMIN}"}
    )
    page = context.new_page()
    page.goto(keyed.url + "/api/autoroute/dashboard?refresh=1")
    _refreshed(page)
    page.screenshot(path=str(tmp_path / "dashboard-admin.png"))
    assert chosen["balanced"] in page.locator("#profiles td.model").all_inner_texts()
    assert page.locator("#state").inner_text().startswith("live")
    context.close()

    context = browser.new_context(extra_http_headers={"Authorization": f"Bearer {USER}"})
    page = context.new_page()
    answer = page.goto(keyed.url + "/api/autoroute/dashboard")
    assert answer is not None and answer.status == 403
    context.close()


def test_recent_buckets_forget_what_the_ring_overwrote() -> None:
    """A request one full ring (BUCKETS x BUCKET_SECONDS) ago shares its slot with one
    now: the slot holds only the newer period, and the older is not in the window."""
    recent = Recent()
    now = time.perf_counter()
    then = now - BUCKETS * BUCKET_SECONDS

    def finished(path: str, outcome: Outcome) -> None:
        recent.finished(make_mocked_request("POST", path), outcome)

    old = Outcome(Decided("old", started=then - 0.5), Served("old", status=500, first_byte_at=then))
    old.served.ended = then
    finished("/api/generate", old)
    assert sum(recent.snapshot()["series"]["requests"]) == 0
    decision = {"profile": "fast", "chosen": "a:1", "reason": "ml"}
    new = Outcome(
        Decided("new", started=now - 0.25, decision=decision),
        Served("new", status=200, first_byte_at=now, ended=now),
    )
    finished("/api/generate", new)
    own = Outcome(Decided("own", started=now), Served("own", status=200, ended=now))
    finished("/api/autoroute/dashboard.json", own)
    series = recent.snapshot()["series"]
    assert (sum(series["requests"]), sum(series["errors"])) == (1, 0)
    assert [v for v in series["ttfc_ms_mean"] if v is not None] == [250.0]
    choices = recent.snapshot()["choices"]
    assert [(c["profile"], c["model"], c["reason"], c["count"]) for c in choices] == [
        ("fast", "a:1", "ml", 1)
    ]


def test_refusals_are_counted_apart_from_errors() -> None:
    """The errors an operator reads are failures (a backend, a model or the proxy
    failed: a 5xx, a stream cut off); a request refused for what it says or who sent it
    (a 4xx, by the proxy or Ollama, or Ollama's 500 for a request it cannot run, as
    `selector_model.outcome` reads them) is counted apart; a client that left before
    its answer began is neither."""
    recent = Recent()
    now = time.perf_counter()
    answers = [
        Served("ok", status=200),
        Served("not-found", status=404),
        Served("limited", status=429, error="rate limit: 60 requests a minute"),
        Served("slow-body", status=408, error="the request body took too long"),
        Served("no-schema", status=500, error='invalid format: "1"; expected "json"'),
        Served("died", status=500, error="llama runner process has terminated: exit status 2"),
        Served("down", status=503, error="no healthy backend: gpu (connect refused)"),
        Served("cut", status=200, error="gpu: connection reset mid-stream"),
        Served("left", cancelled=True),
    ]
    for served in answers:
        served.ended = now
        recent.finished(
            make_mocked_request("POST", "/api/chat"), Outcome(Decided(served.request_id), served)
        )
    series = recent.snapshot()["series"]
    assert sum(series["requests"]) == len(answers)
    assert sum(series["errors"]) == 3  # died, down, cut
    assert sum(series["refused"]) == 4  # not-found, limited, slow-body, no-schema


def test_a_choice_of_no_model_reads_as_such_in_chromium(
    browser: Any, servers: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`auto` answered by the cloud in its profile's name (no usable backend) chose no
    model: its row and the profile's latest line say so, with the reason cloud, not a
    null model nor a P(success) no ranking gave."""
    monkeypatch.setenv(OPENAI_ENV, OPENAI_KEY)
    cloud = StandIn(servers)
    prx = Proxy(servers, [f"http://127.0.0.1:{free_port()}"], cloud=cloud_section(cloud.url))
    try:
        body = {"model": "auto", "messages": [{"role": "user", "content": "Hi"}]}
        status, headers, _ = _call(prx.url, "/api/chat", {**body, "stream": False})
        assert (status, headers["X-Autoroute-Reason"]) == (200, "cloud")
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(prx.url + "/api/autoroute/dashboard")
        assert page.locator("#profiles td.model").all_inner_texts() == ["no model chosen"]
        assert page.locator("#profiles .badge").all_inner_texts() == ["cloud"]
        assert "latest: no model chosen (cloud)" in page.locator("#profiles").inner_text()
        page.close()
    finally:
        prx.stop()
        cloud.stop()
