"""The directory of the files the proxy writes for itself, as the XDG base directory
specification places them: every default path of the configuration lies in it."""

from __future__ import annotations

import os
from pathlib import Path


def state_dir(name: str = "autoroute") -> Path:
    """Where files the proxy writes for itself live: `$XDG_STATE_HOME/<name>`, and
    `~/.local/state/<name>` when XDG_STATE_HOME is unset or not absolute (as the XDG
    base directory specification says). Read when a default is made, so a process
    (a test run) that sets XDG_STATE_HOME first keeps every default path inside it."""
    base = os.environ.get("XDG_STATE_HOME", "")
    root = Path(base) if os.path.isabs(base) else Path.home() / ".local" / "state"
    return root / name
