"""The training report's summary sentence, its plot's legend and names, and the training
CLI's progress bars, on small score tables built to give known answers."""

from __future__ import annotations

import io
import itertools
from typing import Any

import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="the train extra is not installed")
pytest.importorskip("tqdm", reason="the train extra is not installed")

from matplotlib.text import Annotation, Text

from training import cli, evaluate, report

PROMPTS = 100


def _scores() -> np.ndarray:
    """Two models, a (cost 1) and b (cost 2), on 100 prompts. a scores on prompts 0-69
    (quality 0.70, the best single model); b is a but fails 0-9 and succeeds on 70-75
    (0.66)."""
    y = np.zeros((PROMPTS, 2))
    y[:70, 0] = 1
    y[:, 1] = y[:, 0]
    y[:10, 1] = 0
    y[70:76, 1] = 1
    return y


def _router(prefers_b: list[int]) -> np.ndarray:
    """P(success) that picks b (at λ = 0) on `prefers_b`, a elsewhere."""
    p = np.tile([0.6, 0.5], (PROMPTS, 1))
    p[prefers_b, 1] = 0.7
    return p


def _price(p: np.ndarray, y: np.ndarray, names: list[str], cost: np.ndarray) -> dict[str, Any]:
    prior = np.tile(np.linspace(0, 1, len(cost)), (len(y), 1))  # the size-only rule
    return evaluate.summarize(p, y, cost, names, prior, seed=0)


def test_summary_says_a_consistent_gain_is_significant() -> None:
    # b where it is better (70-75) and nowhere else: better on 6 prompts, worse on none,
    # so p = 2 / 2**6.
    price = _price(_router(list(range(70, 76))), _scores(), ["a", "b"], np.array([1.0, 2.0]))
    assert report.summary(price) == (
        "auto:best beats the best single model (a) by 6.0 points at 106% of its cost; the "
        "difference is significant (p=0.031, sign test over prompts: better on 6, worse on "
        "0, tied on 94)."
    )


def test_summary_says_a_mixed_gain_is_not_significant() -> None:
    # b on 0-4 (worse there) and 70-75 (better): better on 6, worse on 5, so p = 1.
    prefers_b = [*range(5), *range(70, 76)]
    price = _price(_router(prefers_b), _scores(), ["a", "b"], np.array([1.0, 2.0]))
    assert report.summary(price) == (
        "auto:best beats the best single model (a) by 1.0 points at 111% of its cost; the "
        "difference is not significant (p=1.000, sign test over prompts: better on 6, worse "
        "on 5, tied on 89)."
    )


def test_summary_of_a_loss() -> None:
    # b on 0-9, where it fails: 10 points below a, significant.
    price = _price(_router(list(range(10))), _scores(), ["a", "b"], np.array([1.0, 2.0]))
    assert report.summary(price).startswith(
        "auto:best is 10.0 points below the best single model (a) at 110% of its cost; the "
        "difference is significant (p=0.002,"
    )


def _crowded_report() -> dict[str, Any]:
    """Nine models, three of them at nearly one cost and quality and two more at another:
    their names compete for the same room."""
    rng = np.random.default_rng(3)
    names = [f"model-{n}:{size}b" for n, size in zip("abcdefghi", range(3, 12), strict=True)]
    quality = [0.50, 0.50, 0.505, 0.55, 0.60, 0.52, 0.52, 0.58, 0.62]
    cost = np.array([1.0, 1.002, 1.004, 1.2, 1.5, 2.0, 2.003, 3.0, 4.0])
    y = np.zeros((400, len(names)))
    for m, q in enumerate(quality):
        y[rng.permutation(400)[: round(q * 400)], m] = 1
    p = np.clip(y * 0.3 + rng.random(y.shape) * 0.7, 0, 1)
    price = _price(p, y, names, cost)
    evaluation = {
        "prompts": len(y),
        "dropped_test_prompts": 0,
        "auc": evaluate.auc(p, y),
        "price": price,
        "params": _price(p, y, names, cost * 7),
    }
    return {
        "artifact_version": "test",
        "trained_on": names,
        "targets": report.targets(evaluation, None),
        "evaluation": evaluation,
        "lomo": None,
        "definitions": list(evaluate.DEFINITIONS),
        "tried": [],
    }


def test_markdown_leads_with_the_summary() -> None:
    doc = _crowded_report()
    lines = report.markdown(doc).splitlines()
    assert lines[0] == "# Selector evaluation — test"
    assert lines[2] == report.summary(doc["evaluation"]["price"])


def test_plot_has_a_legend_entry_for_everything_drawn_and_names_apart() -> None:
    doc = _crowded_report()
    fig = report.figure(doc)
    renderer = fig.canvas.get_renderer()
    try:
        for ax, kind in zip(fig.axes, ("price", "params"), strict=True):
            handles, labels = ax.get_legend_handles_labels()
            drawn = [*ax.lines, *ax.collections, *ax.patches]
            assert len(drawn) == 6
            assert set(drawn) == set(handles)
            legend = ax.get_legend()
            assert [t.get_text() for t in legend.get_texts()] == labels
            # The legend sits below the axes: it covers no point.
            assert legend.get_window_extent(renderer).y1 < ax.get_window_extent(renderer).y0

            names = [t for t in ax.texts if isinstance(t, Annotation)]
            singles = doc["evaluation"][kind]["singles"]
            assert sorted(t.get_text() for t in names) == sorted(s["model"] for s in singles)
            # The crowded names could not all take the first place beside their marker.
            assert {t.xyann for t in names} != {report._LABEL_OFFSETS[0]}
            boxes = [Text.get_window_extent(t, renderer) for t in names]  # without leader lines
            for first, second in itertools.combinations(boxes, 2):
                assert not first.overlaps(second)
            inside = ax.get_window_extent(renderer)
            assert all(inside.contains(b.x0, b.y0) and inside.contains(b.x1, b.y1) for b in boxes)
            # Nor does a name cover a marker (here there is room for all of them).
            offsets = [c.get_offsets() for c in ax.collections]
            markers = ax.transData.transform(np.concatenate(offsets))
            for box in boxes:
                assert not any(box.contains(x, y) for x, y in markers), box
    finally:
        report.plt.close(fig)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_line_is_not_drawn_over_by_a_progress_bar() -> None:
    terminal = _Terminal()
    bars = cli._Bars(terminal)
    update = bars("leave-one-model-out fold 2/9: without qwen3:8b")
    update(5, 10)
    cli._log("parity: max |onnx - xgboost| = 1e-07", terminal)
    update(10, 10)
    bars.close()
    out = terminal.getvalue()
    assert "leave-one-model-out fold 2/9: without qwen3:8b" in out
    before, found, after = out.partition("parity: max |onnx - xgboost| = 1e-07")
    assert found and after.startswith("\n")
    # The line starts on a cleared line: what the bar drew on it was erased first.
    assert before.rsplit("\n", 1)[-1].rsplit("\r", 1)[-1].strip() == ""


def test_no_bar_outside_a_terminal() -> None:
    log_file = io.StringIO()
    bars = cli._Bars(log_file)
    bars("training the selector")(3, 10)
    cli._log("training on 10 rows from 2 models", log_file)
    bars.close()
    assert log_file.getvalue() == "training on 10 rows from 2 models\n"
