from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from pathlib import Path

import pytest

from proxy import config, config_loading, config_selector, config_services, state_dir
from proxy.cli import demo_config
from proxy.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def _refusal(tmp_path: Path, text: str) -> str:
    """What loading a config file holding `text` is refused with, after the file's path
    that the message starts with (checked)."""
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        config_loading.load(path, environ={})
    prefix = f"{path}: "
    assert str(caught.value).startswith(prefix), caught.value
    return str(caught.value).removeprefix(prefix)


def test_defaults_listen_on_11435_and_forward_to_11434() -> None:
    cfg = config_loading.load(path=None, environ={"AUTOROUTE_CONFIG": str(ROOT / "config.yaml")})
    assert (cfg.listen.host, cfg.listen.port) == ("127.0.0.1", 11435)
    assert [b.url for b in cfg.backends] == ["http://127.0.0.1:11434"]
    assert cfg.routing.admin_target == "all"


def test_shipped_config_yaml_equals_builtin_defaults(tmp_path: Path) -> None:
    """config.yaml documents every key with its default: the two must not drift."""
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    shipped = config_loading.load(ROOT / "config.yaml", environ={})
    builtin = config_loading.load(empty, environ={})
    assert [b.url for b in shipped.backends] == [b.url for b in builtin.backends]
    assert (shipped.listen, shipped.timeouts, shipped.limits, shipped.health) == (
        builtin.listen,
        builtin.timeouts,
        builtin.limits,
        builtin.health,
    )
    assert (shipped.routing, shipped.logging) == (builtin.routing, builtin.logging)
    assert shipped.usage == builtin.usage
    assert shipped.auth == builtin.auth


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("listen: {port: 9000}\ntimeouts: {idle_read_seconds: 12}\n")
    cfg = config_loading.load(
        path,
        environ={
            "AUTOROUTE_LISTEN__PORT": "9100",
            "AUTOROUTE_BACKENDS": "http://10.0.0.1:11434, http://10.0.0.2:11434",
            "AUTOROUTE_LOGGING__JSON": "false",
        },
    )
    assert cfg.listen.port == 9100
    assert cfg.timeouts.idle_read_seconds == 12.0
    assert [b.url for b in cfg.backends] == ["http://10.0.0.1:11434", "http://10.0.0.2:11434"]
    assert cfg.logging.json is False


def test_ollama_host_is_not_read() -> None:
    environ = {"OLLAMA_HOST": "http://10.9.9.9:1234", "AUTOROUTE_CONFIG": str(ROOT / "config.yaml")}
    cfg = config_loading.load(path=None, environ=environ)
    assert all("10.9.9.9" not in b.url for b in cfg.backends)


@pytest.mark.parametrize(
    "backend",
    ["http://127.0.0.1:11435", "http://localhost:11435"],
)
def test_backend_equal_to_own_address_is_refused(backend: str) -> None:
    with pytest.raises(ConfigError, match="own address"):
        config_loading.load(
            path=None, environ={"AUTOROUTE_CONFIG": "/dev/null", "AUTOROUTE_BACKENDS": backend}
        )


def test_wildcard_listen_refuses_loopback_backend_on_same_port() -> None:
    with pytest.raises(ConfigError, match="own address"):
        config_loading.load(
            path=None,
            environ={
                "AUTOROUTE_CONFIG": "/dev/null",
                "AUTOROUTE_LISTEN__HOST": "0.0.0.0",
                "AUTOROUTE_BACKENDS": "http://127.0.0.1:11435",
            },
        )


def test_same_port_on_another_host_is_allowed() -> None:
    cfg = config_loading.load(
        path=None,
        environ={"AUTOROUTE_CONFIG": "/dev/null", "AUTOROUTE_BACKENDS": "http://192.0.2.10:11435"},
    )
    assert cfg.backends[0].url == "http://192.0.2.10:11435"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("listen: {prot: 1}", "unknown key"),
        ("listen: {port: eleven}", "expected int"),
        ("routing: {admin_target: some}", "not one of"),
        ("backends: [ftp://x]", "not an http:// URL"),
        ("backends: []", "at least one backend"),
        ("- a list", "mapping"),
        # A name is a key's id in usage events: two keys in the file never share one.
        (
            f"auth: {{keys: [{{sha256: {'a' * 64}, name: x}}, {{sha256: {'b' * 64}, name: x}}]}}",
            "used twice",
        ),
        # An empty list would read as any model: a typo must not open every model.
        (f"auth: {{keys: [{{sha256: {'a' * 64}, name: x, models: []}}]}}", "names no model"),
    ],
)
def test_bad_configuration_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    assert re.search(message, _refusal(tmp_path, text))


def test_default_usage_paths_follow_xdg_state_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", "/srv/state")
    assert config_services.Usage().file_path == "/srv/state/autoroute/usage/events.jsonl"
    assert config_services.Usage().spool_dir == "/srv/state/autoroute/usage/spool"
    for unset in ("", "relative/dir"):  # the XDG specification ignores a relative one
        monkeypatch.setenv("XDG_STATE_HOME", unset)
        assert state_dir.state_dir() == Path.home() / ".local" / "state" / "autoroute"


def test_tests_never_write_into_the_real_usage_file() -> None:
    """The run's own state directory (tests/conftest.py) holds every default path:
    in-process proxies and subprocesses alike, with or without config.yaml."""
    state_home = Path(os.environ["XDG_STATE_HOME"]).resolve()
    assert state_home.is_relative_to(Path(tempfile.gettempdir()).resolve())
    real = Path.home() / ".local" / "state" / "autoroute"
    for cfg in (config.Config(), config_loading.load(ROOT / "config.yaml", environ={})):
        for path in (cfg.usage.file_path, cfg.usage.spool_dir):
            resolved = Path(path).expanduser().resolve()
            assert resolved.is_relative_to(state_home), path
            assert not resolved.is_relative_to(real), path


def test_the_demo_records_usage_apart_from_serve() -> None:
    served = config_loading.load(ROOT / "config.yaml", environ={})
    served = dataclasses.replace(
        served,
        usage=dataclasses.replace(
            served.usage, postgres_dsn="postgresql://db/autoroute", kafka_bootstrap="k:9092"
        ),
    )
    demo = demo_config(served, [18124, 18125])
    serve_dir = Path(served.usage.file_path).parent
    for path in (demo.usage.file_path, demo.usage.spool_dir):
        assert not Path(path).is_relative_to(serve_dir), path
    assert demo.usage.file_path != served.usage.file_path
    # Nor into the databases real traffic is recorded in.
    assert demo.usage.postgres_dsn is None and demo.usage.kafka_bootstrap is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # A port outside 1-65535: listening on 70000 took 4464 (70000 - 65536) unsaid.
        ("listen: {port: 70000}", "listen.port: 70000 is not a port"),
        ("listen: {port: -5}", "listen.port: -5 is not a port"),
        ("listen: {port: 0}", "listen.port: 0 is not a port"),
        # Numbers YAML reads that int() would have cut or turned into 1.
        ("listen: {port: 1.7}", "listen.port: expected int, got 1.7"),
        ("listen: {port: true}", "listen.port: expected int, got True"),
        ("timeouts: {connect_seconds: yes}", "timeouts.connect_seconds: expected float"),
        ("listen: {host: [a, b]}", "listen.host: expected str, got"),
        ("usage: {postgres_dsn: {host: db}}", "usage.postgres_dsn: expected str, got"),
        # Negative amounts mean nothing anywhere.
        ("timeouts: {shutdown_seconds: -3}", "timeouts.shutdown_seconds: must not be negative"),
        ("limits: {max_body_bytes: -1}", "limits.max_body_bytes: must not be negative"),
        ("health: {retries: -2}", "health.retries: must not be negative"),
        (
            "selector: {profiles: {fast: {cost_weight: -1}}}",
            "selector.profiles.fast.cost_weight: must not be negative",
        ),
        # 0 where it does not mean "no limit": health checks with no pause between
        # them (a busy loop against every backend), reads that time out at once.
        ("health: {interval_seconds: 0}", "health.interval_seconds: must be above 0"),
        ("timeouts: {idle_read_seconds: 0}", "timeouts.idle_read_seconds: must be above 0"),
        ("usage: {batch_size: 0}", "usage.batch_size: must be above 0"),
        # A backend without a URL, or with a port no URL can have: no traceback.
        ("backends: [{name: a}]", "backends: missing key 'url'"),
        ("backends: ['http://x:99999']", "backends: 'http://x:99999' has no valid port"),
        ("backends: ['http://x:1;http://y:2']", "has no valid port"),
    ],
)
def test_values_no_setting_can_take_are_refused(tmp_path: Path, text: str, message: str) -> None:
    assert re.search(message, _refusal(tmp_path, text))


def test_a_section_given_as_a_plain_value_names_its_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        config_loading.load(
            path=None, environ={"AUTOROUTE_CONFIG": "/dev/null", "AUTOROUTE_LISTEN": "5"}
        )
    assert str(caught.value) == (
        "environment variable AUTOROUTE_LISTEN: listen: expected a mapping, got str"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # Each was accepted, then failed at every write or read, the proxy running on.
        ("usage: {postgres_dsn: 'db.internal/usage'}", "usage.postgres_dsn: 'db.internal/"),
        ("auth: {postgres_dsn: 'mysql://db/keys'}", "auth.postgres_dsn: 'mysql://db/keys'"),
        ("usage: {postgres_dsn: 'postgresql://db:x/usage'}", "usage.postgres_dsn: .* port"),
        ("usage: {kafka_bootstrap: 'kafka'}", "usage.kafka_bootstrap: 'kafka' is not host:port"),
        ("usage: {kafka_bootstrap: 'a:1,b:c'}", "usage.kafka_bootstrap: 'b:c' is not host:port"),
        ("cache: {redis_url: 'http://cache:6379'}", "cache.redis_url: 'http' is not redis://"),
    ],
)
def test_service_addresses_that_cannot_work_are_refused(
    tmp_path: Path, text: str, message: str
) -> None:
    assert re.match(message, _refusal(tmp_path, text))


def test_a_refused_dsn_does_not_show_its_password(tmp_path: Path) -> None:
    refusal = _refusal(tmp_path, "usage: {postgres_dsn: 'postgres://u:hunter2@db:port/usage'}")
    assert "hunter2" not in refusal


def test_one_profile_setting_keeps_the_other_profiles_and_settings() -> None:
    """`AUTOROUTE_SELECTOR__PROFILES__FAST__DEFAULT_MODEL` (or a file naming only that)
    made `fast` the only profile, with the cost_weight of no profile: plain `auto`
    (balanced) then answered every request as a model that does not exist."""
    cfg = config_loading.load(
        path=None,
        environ={
            "AUTOROUTE_CONFIG": "/dev/null",
            "AUTOROUTE_SELECTOR__PROFILES__FAST__DEFAULT_MODEL": "llama3.2:3b",
        },
    )
    builtin = config_selector.Selector().profiles
    assert set(cfg.selector.profiles) == set(builtin)
    fast = cfg.selector.profiles["fast"]
    assert fast == dataclasses.replace(builtin["fast"], default_model="llama3.2:3b")
    assert cfg.selector.profiles["balanced"] == builtin["balanced"]


def test_profiles_listed_in_the_file_replace_the_built_in_set(tmp_path: Path) -> None:
    """As config.yaml says: listing profiles replaces the three. One named as a built-in
    keeps the built-in's values for what it leaves out."""
    path = tmp_path / "c.yaml"
    path.write_text("selector: {profiles: {balanced: {}, fast: {default_model: 'x:1b'}}}")
    cfg = config_loading.load(path, environ={})
    builtin = config_selector.Selector().profiles
    assert cfg.selector.profiles == {
        "balanced": builtin["balanced"],
        "fast": dataclasses.replace(builtin["fast"], default_model="x:1b"),
    }
    path.write_text("selector: {profiles: {fast: {}}}")
    with pytest.raises(ConfigError, match="default_profile: 'balanced' is not a profile"):
        config_loading.load(path, environ={})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("selector: {default_profile: nope}", "selector.default_profile: 'nope' is not"),
        ("cloud: {prefer_for_profiles: [nada]}", "cloud.prefer_for_profiles: 'nada' is not"),
    ],
)
def test_a_profile_no_profile_defines_is_refused(tmp_path: Path, text: str, message: str) -> None:
    assert re.match(f"{message} a profile in selector.profiles", _refusal(tmp_path, text))


def test_a_backend_url_with_credentials_is_refused_without_showing_them(tmp_path: Path) -> None:
    """The relay's HTTP client sends no credentials of a backend URL: a backend behind
    basic auth (`http://user:password@host`) refused every request, and the password
    was in every log line, metric, status page and usage event naming the backend."""
    assert _refusal(tmp_path, "backends: ['http://ops:S3cretPw@gpu-a:11434']") == (
        "backends: 'http://gpu-a:11434': credentials in a backend URL are not "
        "sent; reach the backend without them (a private network, or a reverse proxy in "
        "front of it that adds them)"
    )


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (
            "AUTOROUTE_SELECTOR__MODELS__MINE__AREAS__CODE",
            "2",
            "selector.models.mine.areas.code: 2.0 is not a score in [0, 1]",
        ),
        ("AUTOROUTE_AUTH__REFRESH_SECONDS", "0", "auth.refresh_seconds: must be above 0"),
    ],
)
def test_a_bad_value_from_a_variable_names_the_variable(
    variable: str, value: str, message: str
) -> None:
    environ = {
        "AUTOROUTE_CONFIG": "/dev/null",
        "AUTOROUTE_AUTH__POSTGRES_DSN": "postgresql://db/keys",
        variable: value,
    }
    with pytest.raises(ConfigError) as caught:
        config_loading.load(path=None, environ=environ)
    assert str(caught.value).startswith(f"environment variable {variable}: {message}")


def test_a_bad_key_in_the_file_names_the_file(tmp_path: Path) -> None:
    refusal = _refusal(tmp_path, "auth: {keys: [{sha256: abc, name: ops}]}")
    assert refusal.startswith("auth.keys: 'ops': sha256 must be 64")


def test_a_late_error_names_the_file_only_where_the_file_sets_its_key(tmp_path: Path) -> None:
    """A check made once the configuration is loaded (the catalogue read, the spool made)
    names the file that set the value, and nothing where the value is a default or the
    file is gone."""
    path = tmp_path / "c.yaml"
    path.write_text("selector: {catalog: /nowhere.yaml}\n")
    error = config.ConfigError("selector.catalog: /nowhere.yaml: gone", key="selector.catalog")
    assert str(config_loading.named(error, path, environ={})) == f"{path}: {error}"
    spool = config.ConfigError("usage.spool_dir: cannot use x", key="usage.spool_dir")
    assert config_loading.named(spool, path, environ={}) is spool
    path.unlink()
    assert config_loading.named(error, path, environ={}) is error
