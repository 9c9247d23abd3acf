"""The command line: flags, help with the environment variables, and one-line errors."""

from __future__ import annotations

import argparse
import logging
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from proxy import cli, config, config_loading, config_serving
from proxy.cli import PortInUse, build_parser, main
from tests.support import free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _shipped_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts from the shipped config.yaml and no other AUTOROUTE_* variable."""
    for name in list(os.environ):
        if name.startswith("AUTOROUTE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AUTOROUTE_CONFIG", str(ROOT / "config.yaml"))


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Runs the CLI expecting exit code 2; its stderr, checked to be one line."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.count("\n") == 1, err
    return err.strip()


def _config_file_error(capsys: pytest.CaptureFixture[str], path: Path, text: str) -> str:
    """`serve` on a config file at `path` holding `text`: what its one line of error says
    after the prefix naming the file (checked)."""
    path.write_text(text)
    err = _error(capsys, ["serve", "--config", str(path)])
    prefix = f"autoroute: configuration error: {path}: "
    assert err.startswith(prefix), err
    return err.removeprefix(prefix)


def _serve_refused(tmp_path: Path, argv: list[str], **environ: str) -> str:
    """`autoroute serve` with `argv` run as a process (the shipped config, usage events
    written under `tmp_path`, `environ` added): checked to exit 2 without a traceback;
    its stderr."""
    result = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "serve", *argv, "--config", str(ROOT / "config.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "AUTOROUTE_USAGE__FILE_PATH": str(tmp_path / "e.jsonl"), **environ},
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    return result.stderr


def _environment_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> str:
    """`serve` with the environment variable `name` set to `value`: what its one line of
    error says after the prefix naming the variable (checked)."""
    monkeypatch.setenv(name, value)
    err = _error(capsys, ["serve"])
    prefix = f"autoroute: configuration error: environment variable {name}: "
    assert err.startswith(prefix), err
    return err.removeprefix(prefix)


@pytest.mark.parametrize("command", [["serve"], ["demo"], ["usage", "export"], ["profile"]])
def test_help_lists_the_flags_and_the_environment_variables(
    capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--config FILE" in out
    assert "AUTOROUTE_CONFIG" in out
    assert "AUTOROUTE_BACKENDS          comma-separated backend URLs " in out
    assert "(default: http://127.0.0.1:11434)" in out
    assert "AUTOROUTE_LISTEN__HOST      address the proxy listens on (default: 127.0.0.1)" in out
    assert "AUTOROUTE_LISTEN__PORT      port the proxy listens on (default: 11435)" in out
    assert "AUTOROUTE_<SECTION>__<KEY>  any other setting of config.yaml" in out


def test_serve_help_lists_host_port_and_repeatable_backend(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    assert "--host HOST" in out and "--port PORT" in out
    assert "--backend URL" in out and "repeat for" in out


def test_demo_has_a_port_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert "--port PORT" in capsys.readouterr().out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("autoroute ") and out.split()[1][0].isdigit(), out


def test_serve_flags_win_over_file_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("listen: {host: 127.0.0.1, port: 9000}\n")
    monkeypatch.setenv("AUTOROUTE_LISTEN__PORT", "9100")
    # --config after the subcommand, and before it.
    for argv in (
        ["serve", "--config", str(path)],
        ["--config", str(path), "serve"],
    ):
        args = build_parser(None).parse_args(
            [
                *argv,
                "--host",
                "0.0.0.0",
                "--port",
                "9200",
                "--backend",
                "http://10.0.0.1:11434",
                "--backend",
                "http://10.0.0.2:11434",
            ]
        )
        assert args.config == str(path)
        loaded = config_loading.load(args.config)
        assert loaded.listen.port == 9100  # the variable over the file
        cfg = cli._with_flags(loaded, args)
        assert (cfg.listen.host, cfg.listen.port) == ("0.0.0.0", 9200)
        assert [b.url for b in cfg.backends] == ["http://10.0.0.1:11434", "http://10.0.0.2:11434"]


def test_demo_backend_ports_flag_takes_one_port_a_backend() -> None:
    args = build_parser(None).parse_args(["demo", "--backend-ports", "19251, 19252"])
    cfg = cli.demo_config(config_loading.load(None), args.backend_ports)
    assert [b.url for b in cfg.backends] == ["http://127.0.0.1:19251", "http://127.0.0.1:19252"]
    assert build_parser(None).parse_args(["demo"]).backend_ports == (0, 0)  # free ones
    for wrong in ("19251", "19251,19252,19253", "19251,x", "19251,70000"):
        with pytest.raises(SystemExit):
            build_parser(None).parse_args(["demo", "--backend-ports", wrong])


def test_demo_port_flag_moves_the_proxy() -> None:
    args = build_parser(None).parse_args(["demo", "--port", "11999"])
    cfg = cli.demo_config(cli._with_flags(config_loading.load(None), args), args.backend_ports)
    assert cfg.listen.port == 11999


@pytest.mark.parametrize("argv", [["train", "--help"], ["train"], ["evaluate"], ["evaluate", "x"]])
def test_without_the_train_extra_says_how_to_install_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> None:
    monkeypatch.setitem(sys.modules, "training.cli", None)  # import fails as if not installed
    err = _error(capsys, argv)
    assert err == (
        f"autoroute {argv[0]}: the training extra (xgboost, onnxmltools, matplotlib) is not "
        "installed; from a clone of the repository: pip install -e '.[train]'"
    )


def test_with_the_train_extra_train_help_lists_its_flags(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pytest.importorskip("xgboost")
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    # `--from` takes a PostgreSQL DSN too (training/pipeline.py reads its usage events),
    # and the bundled MMLU-Pro and ZeroEval outcomes
    assert "--from dataset|mmlu-pro[:N]|zeroeval[:N]|FILE.jsonl|postgres://..." in out
    assert "PostgreSQL" in out and "ZeroEval's of 15" in " ".join(out.split())
    assert "AUTOROUTE_LISTEN__PORT" in out


def test_evaluate_help_names_the_configuration_it_replays(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`evaluate` reads `$AUTOROUTE_CONFIG` before ./config.yaml, as `serve` does; its
    help named ./config.yaml alone."""
    pytest.importorskip("xgboost")
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: $AUTOROUTE_CONFIG, else ./config.yaml, else the built-ins)" in out


@pytest.mark.parametrize("where", ["before", "after"])
def test_evaluate_refuses_a_configuration_it_cannot_replay_before_it_starts(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, where: str
) -> None:
    """`--config` before the command (as `serve` takes it) or after: a catalogue that
    cannot be read is refused at once. Before the command the file was not read at all
    (the evaluation ran on ./config.yaml), after it the error came once the artifact's
    evaluation was done, minutes later."""
    pytest.importorskip("xgboost")
    path = tmp_path / "c.yaml"
    path.write_text("selector: {catalog: /nonexistent/models.yaml}\n")
    flag = ["--config", str(path)]
    command = ["evaluate", "--hold-out", "0", "--no-lomo", "--no-progress"]
    command += ["--report-dir", str(tmp_path / "reports")]
    argv = flag + command if where == "before" else command + flag
    err = _error(capsys, argv)
    assert err == (
        f"autoroute evaluate: configuration error: {path}: selector.catalog: "
        "/nonexistent/models.yaml: No such file or directory"
    )
    assert not (tmp_path / "reports").exists()


def test_invalid_yaml_names_the_file_and_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    err = _config_file_error(capsys, tmp_path / "broken.yaml", "listen:\n  port: 1\n host: x\n")
    assert err == (
        "invalid YAML at line 3, column 2: expected <block end>, but found '<block mapping start>'"
    )
    assert "<unicode string>" not in err


def test_missing_config_file_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "absent.yaml"
    err = _error(capsys, ["--config", str(path), "serve"])
    assert err == f"autoroute: configuration error: {path}: no such file"


def test_unknown_key_suggests_the_closest(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    err = _config_file_error(capsys, tmp_path / "c.yaml", "listen: {prot: 8080}\n")
    assert err == "listen: unknown key 'prot'; did you mean 'port'?"


def test_unknown_section_suggests_the_closest(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("timeout: {}\n")
    with pytest.raises(config.ConfigError) as error:
        config_loading.load(path, environ={})
    assert str(error.value) == f"{path}: config: unknown key 'timeout'; did you mean 'timeouts'?"


def test_bad_logging_level_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    err = _config_file_error(capsys, tmp_path / "c.yaml", "logging: {level: verbose}\n")
    assert err == (
        "logging.level: 'verbose' is not a level; use one of DEBUG, INFO, WARNING, ERROR, CRITICAL"
    )


# What the kubelet gives every pod of a namespace with a Service named `autoroute`
# (enableServiceLinks, on by default): Docker's link variables and the service's own.
KUBERNETES = {
    "AUTOROUTE_PORT": "tcp://10.0.0.1:11435",
    "AUTOROUTE_PORT_11435_TCP": "tcp://10.0.0.1:11435",
    "AUTOROUTE_PORT_11435_TCP_PROTO": "tcp",
    "AUTOROUTE_PORT_11435_TCP_PORT": "11435",
    "AUTOROUTE_PORT_11435_TCP_ADDR": "10.0.0.1",
    "AUTOROUTE_SERVICE_HOST": "10.0.0.1",
    "AUTOROUTE_SERVICE_PORT": "11435",
}


def _ignored(caplog: pytest.LogCaptureFixture, **environ: str) -> tuple[config.Config, list[str]]:
    """The shipped configuration loaded with `environ`, and the warnings it logged."""
    with caplog.at_level(logging.WARNING):
        shipped = {"AUTOROUTE_CONFIG": str(ROOT / "config.yaml")}
        loaded = config_loading.load(None, environ={**shipped, **environ})
    return loaded, [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_variables_of_a_kubernetes_service_named_autoroute_are_ignored_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """They name no setting, and no one set them for the proxy: the proxy starts, the
    settings variables give still apply, and each of them is named once in a warning."""
    loaded, warned = _ignored(caplog, **KUBERNETES, AUTOROUTE_LISTEN__PORT="9100")
    assert loaded.listen.port == 9100
    assert len(warned) == len(KUBERNETES)
    for name in KUBERNETES:
        (line,) = [w for w in warned if w.startswith(f"environment variable {name} ")]
        setting = name.removeprefix("AUTOROUTE_").lower()
        assert line.startswith(f"environment variable {name} ignored: no setting {setting}")


def test_environment_variable_typo_is_a_warning_naming_the_variable_and_the_closest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loaded, warned = _ignored(caplog, AUTOROUTE_LISTEN__PROT="8080")
    assert loaded.listen.port == config_serving.Listen().port
    assert warned == [
        "environment variable AUTOROUTE_LISTEN__PROT ignored: no setting listen.prot; "
        "did you mean 'AUTOROUTE_LISTEN__PORT'?"
    ]


def test_environment_variable_bad_value_is_reported_as_that_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    err = _environment_error(capsys, monkeypatch, "AUTOROUTE_LOGGING__LEVEL", "loud")
    assert err == (
        "logging.level: 'loud' is not a level; use one of DEBUG, INFO, WARNING, ERROR, CRITICAL"
    )
    monkeypatch.setenv("AUTOROUTE_LOGGING__LEVEL", "INFO")
    err = _environment_error(capsys, monkeypatch, "AUTOROUTE_LISTEN__PORT", "eleven")
    assert err == "listen.port: expected int, got 'eleven'"


def test_environment_variable_typo_in_a_nested_setting(caplog: pytest.LogCaptureFixture) -> None:
    _, warned = _ignored(caplog, AUTOROUTE_SELECTOR__PROFILES__FAST__COST_WEIGT="1")
    assert warned == [
        "environment variable AUTOROUTE_SELECTOR__PROFILES__FAST__COST_WEIGT ignored: no "
        "setting selector.profiles.fast.cost_weigt; did you mean "
        "'AUTOROUTE_SELECTOR__PROFILES__FAST__COST_WEIGHT'?"
    ]


def test_serve_logs_the_variables_it_ignores_once_as_its_log_lines(tmp_path: Path) -> None:
    """`autoroute serve` in a pod beside a Service named `autoroute` goes on to listen
    (here on a port in use, to stop at once): each variable of the Service's is one
    warning among its JSON log lines, before the reason it stops."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        stderr = _serve_refused(
            tmp_path, ["--port", str(port), "--backend", "http://127.0.0.1:9"], **KUBERNETES
        )
    *logged, last = stderr.splitlines()
    assert last.startswith(f"autoroute serve: port {port} on 127.0.0.1 is already in use")
    lines = [orjson.loads(line) for line in logged]
    for name in KUBERNETES:
        (line,) = [x for x in lines if f" {name} " in x["msg"]]
        assert line["level"] == "warning" and line["variable"] == name, line


def test_serve_on_a_port_in_use_names_it_and_what_moves_it(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        stderr = _serve_refused(tmp_path, ["--port", str(port), "--backend", "http://127.0.0.1:9"])
    assert stderr.splitlines()[-1] == (
        f"autoroute serve: port {port} on 127.0.0.1 is already in use; choose another with "
        "--port, listen.port in the config file or AUTOROUTE_LISTEN__PORT"
    )


def test_demo_port_in_use_says_another_demo_may_be_running() -> None:
    cfg = config_loading.load(None)
    proxy_port = cli.demo_config(cfg, [18124, 18125]).listen.port
    assert cli.port_in_use_message(PortInUse("127.0.0.1", proxy_port), "demo", cfg) == (
        f"autoroute demo: port {proxy_port} on 127.0.0.1 is already in use; choose another "
        "with --port, listen.port in the config file or AUTOROUTE_LISTEN__PORT; "
        "another `autoroute demo` may be running"
    )
    backend_port = proxy_port + 1
    assert cli.port_in_use_message(PortInUse("127.0.0.1", backend_port), "demo", cfg) == (
        f"autoroute demo: port {backend_port} on 127.0.0.1 (an emulated backend's, "
        "--backend-ports) is already in use; another `autoroute demo` may be running"
    )


async def test_start_site_reports_the_port_in_use() -> None:
    from aiohttp import web

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PortInUse) as error:
            await cli.start_site(web.Application(), "127.0.0.1", port)
    assert (error.value.host, error.value.port) == ("127.0.0.1", port)


def test_a_server_may_hold_as_many_connections_as_the_system_lets_it() -> None:
    """A server raises its soft limit on open files to the hard one, as every Go program
    (Ollama) does at start: at a soft limit of 1024 (systemd's default) one client
    holding a thousand idle connections would lock every other client out."""
    script = """
import asyncio, resource, socket
from aiohttp import web
from proxy import cli
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
async def main():
    runner = await cli.start_site(web.Application(), "127.0.0.1", port)
    await runner.cleanup()
asyncio.run(main())
print(resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        # The system takes a port above 65535 modulo 65536: 70000 listened on 4464.
        (["serve", "--port", "70000"], "argument --port: '70000' is not a port (1-65535)"),
        (["demo", "--port", "-1"], "argument --port: '-1' is not a port (1-65535)"),
        (["emulate", "--port", "0"], "argument --port: '0' is not a port (1-65535)"),
        # A --since neither relative nor a date was a ValueError's traceback.
        (["usage", "export", "--since", "yesterday"], "argument --since: 'yesterday' is"),
        (["usage", "export", "--since", "99999999d"], "argument --since: '99999999d' is"),
        (["experiments", "report", "x", "--since", "1 week"], "argument --since: '1 week' is"),
    ],
)
def test_a_flag_value_out_of_range_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and message in err


def test_a_bad_value_in_the_file_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("backends: [{name: gpu-a}]\n")
    err = _error(capsys, ["--config", str(path), "serve"])
    assert err == f"autoroute: configuration error: {path}: backends: missing key 'url'"


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("selector: {catalog: /nonexistent/models.yaml}", "selector.catalog: /nonexistent/"),
        ("selector: {catalog: CONFIG}", "selector.catalog: .*: version"),
        ("selector: {models: {'my:1b': {like: 'nosuch:1b'}}}", "selector.models: .*nosuch:1b"),
    ],
)
def test_a_catalogue_that_cannot_be_read_is_a_configuration_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, setting: str, message: str
) -> None:
    """Missing, not a catalogue, or a model `like` one it does not list: each was a
    traceback or an errno line naming no setting. Read once the configuration is loaded,
    the line names the file the setting came from, as every other setting's does."""
    path = tmp_path / "c.yaml"
    path.write_text(f"listen: {{port: {free_port()}}}\n" + setting.replace("CONFIG", str(path)))
    err = _error(capsys, ["--config", str(path), "serve"])
    assert re.match(f"autoroute: configuration error: {re.escape(str(path))}: {message}", err), err


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("AUTOROUTE_SELECTOR__CATALOG", "/nonexistent/models.yaml", "selector.catalog: "),
        ("AUTOROUTE_WARM__KEEP_ALIVE", "bogus", "warm.keep_alive: "),
    ],
)
def test_a_setting_checked_at_start_names_the_variable_that_set_it(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str,
    message: str,
) -> None:
    """The catalogue and the warm keep_alive are read as the proxy starts, after the
    configuration was loaded: their error named the setting but not the variable its
    value came from."""
    monkeypatch.setenv("AUTOROUTE_LISTEN__PORT", str(free_port()))
    err = _environment_error(capsys, monkeypatch, variable, value)
    assert err.startswith(message), err


@pytest.mark.parametrize(
    ("host", "reason"),
    [("999.1.1.1", "Name or service not known"), ("192.0.2.1", "cannot assign requested")],
)
def test_serve_on_an_address_it_cannot_take_names_it_and_the_setting(
    tmp_path: Path, host: str, reason: str
) -> None:
    """A host that does not resolve, or is no address of this machine: the errno line
    (`autoroute: [Errno -2] Name or service not known`, exit 1) named neither the
    address nor the setting."""
    port = free_port()
    argv = ["--host", host, "--port", str(port), "--backend", "http://127.0.0.1:9"]
    stderr = _serve_refused(tmp_path, argv)
    last = stderr.splitlines()[-1]
    assert last.startswith(
        f"autoroute serve: cannot listen on {host}:{port} (listen.host, listen.port): "
    )
    assert reason.lower() in last.lower()
    # Nothing listened, so nothing was exposed to warn of.
    assert "without API keys" not in stderr


def test_a_spool_dir_that_cannot_be_made_is_a_configuration_error(tmp_path: Path) -> None:
    """`usage.spool_dir` naming a file: `autoroute: [Errno 17] File exists: ...`
    (exit 1) named no setting."""
    taken = tmp_path / "a-file"
    taken.write_text("")
    argv = ["--port", str(free_port()), "--backend", "http://127.0.0.1:9"]
    stderr = _serve_refused(tmp_path, argv, AUTOROUTE_USAGE__SPOOL_DIR=str(taken))
    assert stderr.splitlines()[-1] == (
        "autoroute: configuration error: environment variable AUTOROUTE_USAGE__SPOOL_DIR: "
        f"usage.spool_dir: cannot use {taken}: File exists"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        # Loaded only after the evaluation (minutes), then an ImportError's traceback.
        (["--feedback", "no_such_module:hook"], "argument --feedback: 'no_such_module:hook'"),
        (["--feedback", "training.replay:no_such_hook"], "argument --feedback: 'training"),
        (["--hold-out", "-1"], "argument --hold-out: '-1' is not 0 or more"),
        (["--passes", "-2"], "argument --passes: '-2' is not 0 or more"),
        (["--splits", "0"], "argument --splits: '0' is not 1 or more"),
    ],
)
def test_evaluate_refuses_a_bad_flag_before_it_starts(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    pytest.importorskip("xgboost")
    parser = build_parser(cli._training_cli())
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["evaluate", *argv])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        # A key stored without a name, and `keys revoke "$NAME"` with NAME unset revoking it.
        (["keys", "add", "--name", ""], "argument --name: a key's name must not be empty"),
        (["keys", "add", "--name", "  "], "argument --name: a key's name must not be empty"),
        (["keys", "revoke", ""], "argument NAME_OR_PREFIX: a key's name must not be empty"),
        (["keys", "add", "--name", "a", "--rpm", "ten"], "argument --rpm: must be 0"),
    ],
)
def test_keys_refuse_an_empty_name(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--dsn", "postgresql://127.0.0.1:9/none"])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("models", "message"),
    [
        # `--models "$MODELS"` with MODELS unset made a key that may use every model.
        ("", "argument --models: names no model (leave --models out for a key that may use any)"),
        (" , ", "argument --models: names no model"),
        # Space-separated: one name Ollama cannot parse, which no request ever matches.
        ("llama3.1:8b qwen2.5:7b", "argument --models: 'llama3.1:8b qwen2.5:7b' is no model"),
    ],
)
def test_keys_add_refuses_a_model_list_that_names_no_model(
    capsys: pytest.CaptureFixture[str], models: str, message: str
) -> None:
    argv = ["keys", "add", "--name", "a", "--models", models, "--dsn", "postgresql://127.0.0.1:9/x"]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_keys_add_takes_a_model_list_as_ollama_names_models() -> None:
    parser = build_parser(None)
    argv = ["keys", "add", "--name", "a", "--models"]
    names = " llama3.1:8b, hf.co/someone/m-GGUF:Q4_K_M ,gpt-oss:120b-cloud"
    models = parser.parse_args([*argv, names]).models
    assert models == ["llama3.1:8b", "hf.co/someone/m-GGUF:Q4_K_M", "gpt-oss:120b-cloud"]
    assert parser.parse_args(argv[:-1]).models == []


@pytest.mark.parametrize("value", ["0", "-1", "many"])
def test_profile_num_predict_is_a_positive_count(
    capsys: pytest.CaptureFixture[str], value: str
) -> None:
    """0 was taken as the default silently, and -1 (Ollama's "no limit") would let a
    profiling prompt generate until the context is full."""
    with pytest.raises(SystemExit) as exit_:
        build_parser(None).parse_args(["profile", "m:1b", "--num-predict", value])
    assert exit_.value.code == 2
    assert f"argument --num-predict: {value!r} is not 1 or more" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["ftp://gpu-a", "gpu-a:11434", "http://"])
def test_profile_backend_is_an_http_url(capsys: pytest.CaptureFixture[str], value: str) -> None:
    """`--backend ftp://x` went on to print `ftp://x: ftp://x/api/chat` as its error."""
    with pytest.raises(SystemExit) as exit_:
        build_parser(None).parse_args(["profile", "m:1b", "--backend", value])
    assert exit_.value.code == 2
    assert f"argument --backend: {value!r} is not an http:// URL" in capsys.readouterr().err


def test_usage_export_with_postgresql_down_says_which_database(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """It said `autoroute: [Errno 111] Connection refused`, naming nothing."""
    port = free_port()
    monkeypatch.setenv("AUTOROUTE_USAGE__POSTGRES_DSN", f"postgresql://u:pw@127.0.0.1:{port}/x")
    assert main(["usage", "export"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(
        f"autoroute: cannot read usage events from PostgreSQL (usage.postgres_dsn, "
        f"127.0.0.1:{port}): "
    )
    assert "pw" not in err


@pytest.mark.parametrize(
    ("variable", "after"),
    [("AUTOROUTE_", ""), ("AUTOROUTE_LISTEN__", " after listen"), ("AUTOROUTE___PORT", "")],
)
def test_environment_variable_with_an_empty_setting_name_says_so(
    caplog: pytest.LogCaptureFixture, variable: str, after: str
) -> None:
    """A variable with nothing (or nothing between two `__`) where a setting's name goes
    names no setting: the warning names the variable and what is missing in it."""
    _, warned = _ignored(caplog, **{variable: "x"})
    assert warned == [
        f"environment variable {variable} ignored: an empty setting name{after}; a setting "
        "is overridden as AUTOROUTE_<SECTION>__<KEY>, for example AUTOROUTE_LISTEN__PORT"
    ]


def test_environment_variable_below_a_setting_names_none(caplog: pytest.LogCaptureFixture) -> None:
    _, warned = _ignored(caplog, AUTOROUTE_LISTEN__PORT__TCP="1")
    assert warned == [
        "environment variable AUTOROUTE_LISTEN__PORT__TCP ignored: listen.port has no sub-settings"
    ]


def test_every_command_says_what_it_does_in_its_own_help() -> None:
    """`autoroute <command> --help` opens with what the command does, as the list in
    `autoroute --help` says it, and that list's heading names the tool, not three of
    its commands."""
    import training.cli as training_cli

    parser = build_parser(training_cli)
    assert parser.description and "Ollama" in parser.description
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    listed = {a.dest: a.help for a in commands._choices_actions}
    assert set(listed) == set(commands.choices)
    for name, command in commands.choices.items():
        assert command.description == listed[name], name
