"""Progress of training and inference: INFO lines in a log, a bar only on a terminal."""

from __future__ import annotations

import io
import logging
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from pnoc.data.synthetic import generate_synthetic
from pnoc.data.voc import VOCDataset
from pnoc.engine import Runtime, TrainData, build_sgd, fit
from pnoc.engine.progress import TrainingProgress, format_duration, track
from pnoc.models.deeplab import DeepLabV3Plus
from pnoc.steps import evaluate
from tests.engine.test_trainer import LinearMethod, RegressionData

LOGGER = "pnoc.engine.progress"
EPOCH_LINE = re.compile(
    r"epoch (?P<epoch>\d+)/(?P<epochs>\d+) done: step (?P<step>\d+)/(?P<steps>\d+) "
    r"\| loss (?P<loss>\S+) \| (?P<rate>[\d.]+) images/s \| elapsed \S+, ETA (?P<eta>\S+)$"
)


class Terminal(io.StringIO):
    """A stderr that says it is an interactive terminal."""

    def isatty(self) -> bool:
        return True


def _train(runtime: Runtime, epochs: int = 3) -> list[dict[str, float]]:
    method = LinearMethod()
    opt = build_sgd([{"params": method.net.parameters()}], lr=0.1)
    data = TrainData(RegressionData(), epochs=epochs, batch_size=4, max_steps_per_epoch=3)
    return fit(method, data, {"sgd": opt}, runtime).history


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def test_fit_logs_one_line_per_epoch_without_a_terminal(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="pnoc")
    log_file = io.StringIO()  # stderr redirected to a file, as under `dvc repro > log`
    monkeypatch.setattr(sys, "stderr", log_file)
    history = _train(Runtime(seed=0, progress=True, amp=True))

    messages = _messages(caplog)
    start, *epochs = messages
    assert start.startswith("training: 3 epoch(s) x 3 step(s) of 4 image(s) on cpu")
    assert "AMP applies to CUDA only" in start
    assert len(epochs) == 3  # a short run: no in-epoch lines between them
    for e, (line, means) in enumerate(zip(epochs, history, strict=True)):
        m = EPOCH_LINE.match(line)
        assert m, line
        assert (m["epoch"], m["epochs"], m["step"], m["steps"]) == (str(e + 1), "3", "3", "3")
        assert m["loss"] == f"{means['loss']:.4g}"  # the epoch's mean loss
        assert float(m["rate"]) > 0
    assert EPOCH_LINE.match(epochs[-1])["eta"] == "0s"
    assert all(r.levelno == logging.INFO for r in caplog.records if r.name.startswith("pnoc"))
    assert log_file.getvalue() == ""  # no bar


def test_in_epoch_lines_follow_the_interval_without_a_bar(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    progress = TrainingProgress(epochs=2, steps_per_epoch=4, images_per_step=8, interval_s=0)
    progress.start("cpu, float32")
    for step in range(1, 9):
        epoch = (step - 1) // 4
        progress.step(epoch, step, {"loss": 1.0 / step, "lr/sgd": 0.1})
        if step % 4 == 0:
            progress.end_epoch(epoch, step, {"loss": 0.5, "lr/sgd": 0.1})
    progress.close()
    lines = _messages(caplog)[1:]
    # three in-epoch lines (steps 1-3), then the epoch line, twice
    assert [line.split(" |")[0] for line in lines] == [
        "epoch 1/2 step 1/4",
        "epoch 1/2 step 2/4",
        "epoch 1/2 step 3/4",
        "epoch 1/2 done: step 4/4",
        "epoch 2/2 step 1/4",
        "epoch 2/2 step 2/4",
        "epoch 2/2 step 3/4",
        "epoch 2/2 done: step 4/4",
    ]
    assert "loss 0.3333" in lines[2] and "lr/" not in "".join(lines)
    assert all("images/s" in line and "ETA" in line for line in lines)


def test_on_a_terminal_the_bar_shows_steps_and_only_epoch_lines_are_logged(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    progress = TrainingProgress(epochs=1, steps_per_epoch=3, images_per_step=2, interval_s=0)
    progress.start("cpu, float32")
    for step in range(1, 4):
        progress.step(0, step, {"loss": 0.5})
    progress.end_epoch(0, 3, {"loss": 0.5})
    progress.close()
    lines = _messages(caplog)
    assert len(lines) == 2 and lines[1].startswith("epoch 1/1 done: step 3/3")
    assert "3/3" in terminal.getvalue() and "\r" in terminal.getvalue()  # the bar was drawn

    quiet = Terminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    _train(Runtime(seed=0, progress=False), epochs=1)
    assert quiet.getvalue() == ""  # progress=False: no bar, even on a terminal


def test_inference_loop_logs_one_summary_line_and_no_carriage_return(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    generate_synthetic(
        tmp_path / "ds", num_train=1, num_val=3, num_classes=2, image_size=32, seed=0
    )
    dataset = VOCDataset(tmp_path / "ds", "val")
    model = DeepLabV3Plus("resnet18", len(dataset.class_names))
    caplog.set_level(logging.INFO, logger=LOGGER)
    log_file = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log_file)
    result = evaluate.run(
        model, dataset, Runtime(progress=True), scales=(1.0,), flip=False, crf=False
    )
    assert result.confusion.matrix.sum() == 3 * 32 * 32 - np.sum(
        [(dataset.load_mask(i) == 255).sum() for i in dataset.ids]
    )
    (summary,) = _messages(caplog)
    m = re.fullmatch(r"evaluate: 3 images in ([\d.]+) s \(([\d.]+) images/s\)", summary)
    assert m, summary
    assert log_file.getvalue() == "" and "\r" not in caplog.text


def test_track_logs_nothing_for_a_loop_left_early(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    for i in track(range(5), "early"):
        if i == 2:
            break
    assert _messages(caplog) == []
    assert list(track(iter([1, 2]), "ids", unit="id")) == [1, 2]
    assert _messages(caplog)[0].startswith("ids: 2 ids in ")


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0.4, 42, 187, 7500)] == ["0s", "42s", "3m07s", "2h05m"]
