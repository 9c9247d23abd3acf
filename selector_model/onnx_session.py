"""onnxruntime as the proxy and training use it: imported here alone, with its own
telemetry off, and sessions opened one way (single-threaded, on the CPU).

onnxruntime records telemetry from its import on (a device id and an offline store
under ~/.cache/Microsoft/DeveloperTools, uploaded over HTTPS where it can): a proxy
keeps and sends nothing of its users' unless configured to, and its tests write
nothing outside temporary directories. Only an environment variable read at import
turns it off; an operator who sets ORT_DISABLE_TELEMETRY keeps their value.
"""

from __future__ import annotations

import os

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import onnxruntime as ort

__all__ = ["ort", "session"]


def session(raw: bytes) -> ort.InferenceSession:
    """A session of the ONNX model `raw` on one CPU thread: a decision is one small
    batch, and more threads only contend with the event loop."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(raw, options, providers=["CPUExecutionProvider"])
