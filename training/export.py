"""XGBoost → ONNX (opset 15), a parity check, and the artifact on disk.

The ONNX graph takes one float32 input `input` of shape [N, len(feature_names)] and
returns `label` (int64 [N]) and `probabilities` (float32 [N, 2], no ZipMap: a plain
tensor); column 1 is P(success). The artifact is two files written atomically,
`selector.onnx` first and `selector.json` last, so a watcher that reloads on the JSON
never sees metadata without its model.
"""

from __future__ import annotations

import errno
import json
import os
import platform
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxmltools  # type: ignore[import-untyped]
import xgboost as xgb
from onnxmltools.convert.common.data_types import (  # type: ignore[import-untyped]
    FloatTensorType,
)

from selector_model.onnx_session import ort, session

TARGET_OPSET = 15
INPUT_NAME = "input"
OUTPUT_NAME = "probabilities"
SUCCESS_COLUMN = 1
PARITY_TOLERANCE = 1e-5
ONNX_FILE = "selector.onnx"
META_FILE = "selector.json"
GRAPH_NAME = "autoroute_selector"


class ParityError(RuntimeError):
    """onnxruntime and xgboost disagree beyond PARITY_TOLERANCE."""


def to_onnx(booster: xgb.Booster, n_features: int) -> bytes:
    if booster.feature_names is not None:
        raise ValueError("booster feature names must be None (exported as f0..fN)")
    model = onnxmltools.convert_xgboost(
        booster,
        initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
        target_opset=TARGET_OPSET,
    )
    model.graph.name = GRAPH_NAME  # onnxmltools picks a random UUID: keep bytes reproducible
    return bytes(model.SerializeToString())


def onnx_predict(sess: ort.InferenceSession, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """P(success) per row from the ONNX model."""
    if len(x) == 0:
        return np.zeros(0, dtype=np.float32)
    (probs,) = sess.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})
    return np.asarray(probs, dtype=np.float32)[:, SUCCESS_COLUMN]


def parity(onnx_bytes: bytes, booster: xgb.Booster, x: npt.NDArray[np.float32]) -> float:
    """Largest |P_onnx - P_xgboost| over the rows; raises ParityError above tolerance."""
    expected = np.asarray(booster.predict(xgb.DMatrix(x)), dtype=np.float64)
    got = onnx_predict(session(onnx_bytes), x).astype(np.float64)
    diff = float(np.max(np.abs(got - expected))) if len(x) else 0.0
    if not diff <= PARITY_TOLERANCE:
        raise ParityError(f"onnxruntime and xgboost differ by {diff:.3g} > {PARITY_TOLERANCE}")
    return diff


LIBRARIES = ("xgboost-cpu", "onnxmltools", "onnx", "onnxruntime", "numpy", "scikit-learn")


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return out


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_artifact(out_dir: Path, onnx_bytes: bytes, meta: dict[str, Any]) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / ONNX_FILE
    meta_path = out_dir / META_FILE
    _atomic_write(onnx_path, onnx_bytes)
    text = json.dumps(meta, indent=2, sort_keys=False) + "\n"
    _atomic_write(meta_path, text.encode())
    return onnx_path, meta_path


def read_artifact(path: Path) -> tuple[bytes, dict[str, Any]]:
    """An artifact from its directory, its `.json` or its `.onnx` path."""
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
    directory = path if path.is_dir() else path.parent
    meta = json.loads((directory / META_FILE).read_text())
    onnx_bytes = (directory / str(meta.get("onnx_file", ONNX_FILE))).read_bytes()
    return onnx_bytes, meta
