"""The example deployment (deploy/) passes scripts/check-deploy, and a copy broken in
any of the ways the script looks for fails it, naming the problem."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "check-deploy"


def check(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_example_deployment_passes() -> None:
    result = check(ROOT / "deploy")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(": ok")


@pytest.mark.parametrize(
    ("file", "old", "new", "problem"),
    [
        (
            "haproxy.cfg",
            "    server proxy-2 proxy-2:11435 check inter 5s\n",
            "",
            "haproxy.cfg: proxy proxy-2:11435 is not a server",
        ),
        (
            "proxy.yaml",
            "redis_url: redis://redis:6379/0",
            "redis_url: redis://127.0.0.1:6379/0",
            "shared.redis_url is 127.0.0.1:6379, not ['redis:6379']",
        ),
        (
            "proxy.yaml",
            "  kafka_bootstrap: kafka:9092",
            "  kafka_bootstrap: kafka:9093",
            "usage.kafka_bootstrap is kafka:9093, not ['kafka:9092']",
        ),
        (
            "proxy.yaml",
            "  refresh_seconds: 10.0",
            "  refresh_second: 10.0",
            "configuration: ",
        ),
        (
            "compose.yaml",
            "@postgres:5432/autoroute\n    AUTOROUTE_AUTH",
            "@postgres:5432/other\n    AUTOROUTE_AUTH",
            "usage.postgres_dsn is not user autoroute on database autoroute",
        ),
        (
            "compose.yaml",
            "    AUTOROUTE_AUTH__POSTGRES_DSN",
            "    AUTOROUTE_AUTH_POSTGRES_DSN",
            "services.proxy-1: environment variable AUTOROUTE_AUTH_POSTGRES_DSN names no "
            "setting (no setting auth_postgres_dsn",
        ),
        (
            "compose.yaml",
            "  pgdata:\n",
            "",
            "named volume pgdata is not declared",
        ),
        (
            "compose.yaml",
            "image: redis:7-alpine",
            "image: redis",
            "services.redis: image 'redis' needs a fixed tag",
        ),
        (
            "compose.yaml",
            "      - proxy-2\n",
            "",
            "services.lb: does not depend on ['proxy-2']",
        ),
        (
            "compose.yaml",
            "  stop_grace_period: 45s\n",
            "",
            "services.proxy-1: stop_grace_period 10s is not longer than "
            "timeouts.shutdown_seconds + usage.drain_seconds (35 s)",
        ),
    ],
)
def test_a_broken_copy_fails(tmp_path: Path, file: str, old: str, new: str, problem: str) -> None:
    # The proxies are built from the repository (build context ..): its Dockerfile too.
    shutil.copytree(ROOT / "deploy", tmp_path / "deploy")
    shutil.copy(ROOT / "Dockerfile", tmp_path / "Dockerfile")
    target = tmp_path / "deploy" / file
    text = target.read_text()
    assert old in text
    target.write_text(text.replace(old, new, 1))
    result = check(tmp_path / "deploy")
    assert result.returncode == 1
    assert problem in result.stderr, result.stderr


def test_the_image_health_check_asks_the_port_the_config_file_sets(tmp_path: Path) -> None:
    """The Dockerfile's HEALTHCHECK asks `/api/autoroute/ready` where the proxy listens:
    with `listen.port` set in the mounted config file (not AUTOROUTE_LISTEN__PORT) it
    asked 11435, and the container stayed unhealthy."""
    import http.server
    import json
    import threading

    asked: list[str] = []

    class Ready(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            self.send_response(200 if self.path == "/api/autoroute/ready" else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ready)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    config = tmp_path / "config.yaml"
    config.write_text(f"listen: {{host: 0.0.0.0, port: {port}}}\n")
    line = next(line for line in (ROOT / "Dockerfile").read_text().splitlines() if "CMD [" in line)
    command = json.loads(line.split("CMD", 1)[1])
    assert command[0] == "python3"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "AUTOROUTE_CONFIG": str(config)}
    try:
        result = subprocess.run(
            [sys.executable, *command[1:]], env=env, capture_output=True, timeout=60, check=False
        )
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr
    assert asked == ["/api/autoroute/ready"]
