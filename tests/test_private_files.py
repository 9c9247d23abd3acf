"""What the proxy keeps of its clients' traffic (usage events, feedback, the spool, the
learned evidence) is readable by its own user only, whatever the umask: 0600 files in
0700 directories, as Ollama keeps its prompt history."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson

from proxy import private_files
from selector_model.profiling import store
from tests.support import proxy_process


def _post(port: int, path: str, body: object) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=orjson.dumps(body),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()
        return response.status, dict(response.headers)


def test_files_of_the_clients_traffic_are_the_proxys_user_alone(
    emulator_process: int, tmp_path: Path
) -> None:
    state = tmp_path / "state" / "autoroute"  # none of it exists yet
    settings = {
        "AUTOROUTE_USAGE__FILE_PATH": str(state / "usage" / "events.jsonl"),
        "AUTOROUTE_USAGE__SPOOL_DIR": str(state / "usage" / "spool"),
        "AUTOROUTE_USAGE__FLUSH_INTERVAL_SECONDS": "0.02",
        "AUTOROUTE_SELECTOR__LEARNING__SYNC_SECONDS": "0.05",
    }
    proc, port = proxy_process(
        emulator_process, tmp_path, settings, preexec_fn=lambda: os.umask(0o022)
    )
    try:
        body = {"model": "auto", "stream": False, "messages": [{"role": "user", "content": "hi"}]}
        status, headers = _post(port, "/api/chat", body)
        assert status == 200
        rating = {"request_id": headers["X-Request-Id"], "rating": 0.0, "comment": "wrong"}
        assert _post(port, "/api/autoroute/feedback", rating)[0] == 202
        deadline = time.monotonic() + 30
        wanted = ("events.jsonl", "events.feedback.jsonl", "learning.json")
        while not all((state / "usage" / name).exists() for name in wanted):
            assert time.monotonic() < deadline, sorted(p.name for p in state.rglob("*"))
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    # What `autoroute usage export` writes is those events again, the user's name in
    # each: its file is as private as theirs.
    exported = state / "export.jsonl"
    subprocess.run(
        [sys.executable, "-m", "proxy.cli", "usage", "export", "--output", str(exported)],
        env={**os.environ, "AUTOROUTE_CONFIG": os.devnull, **settings},
        cwd=Path(__file__).resolve().parent.parent,
        preexec_fn=lambda: os.umask(0o022),
        check=True,
        capture_output=True,
    )
    assert headers["X-Request-Id"].encode() in exported.read_bytes()
    made = [state.parent, *state.rglob("*")]
    files = [p for p in made if p.is_file()]
    assert {"events.jsonl", "events.feedback.jsonl", "learning.json", "lock", "export.jsonl"} <= {
        p.name for p in files
    }
    modes = {str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode) for p in made}
    expected = {
        name: private_files.FILE_MODE if (tmp_path / name).is_file() else private_files.DIR_MODE
        for name in modes
    }
    assert modes == expected


def test_a_directory_that_exists_keeps_its_mode(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    private_files.make_dirs(shared / "a" / "b")
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755
    assert stat.S_IMODE((shared / "a").stat().st_mode) == 0o700
    assert stat.S_IMODE((shared / "a" / "b").stat().st_mode) == 0o700
    with private_files.open_file(shared / "a" / "b" / "f", "ab") as f:
        f.write(b"x")
    assert stat.S_IMODE((shared / "a" / "b" / "f").stat().st_mode) == 0o600


def test_the_profile_store_makes_the_state_directory_private(tmp_path: Path) -> None:
    """`autoroute profile` (and the proxy's idle profiling) may be the first to write
    under the state directory, where the usage events go too: the directories it makes
    and its lock are the proxy's user's alone, as the store itself is."""
    state = tmp_path / "state" / "autoroute"
    result = store.AreaResult(0.5, 10, "1", "2026-12-06T00:00:00Z", "http://gpu-a:11434")
    umask = os.umask(0o022)
    try:
        store.save(state / "profiles.json", "m:1b", {"math": result})
    finally:
        os.umask(umask)
    made = [state.parent, *state.parent.rglob("*")]
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in made}
    assert modes == {
        "state": private_files.DIR_MODE,
        "autoroute": private_files.DIR_MODE,
        "profiles.json": private_files.FILE_MODE,
        "profiles.json.lock": private_files.FILE_MODE,
    }
