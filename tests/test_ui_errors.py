"""Unexpected errors in the app's handlers reach the visitor as one line and the log in full; the
messages a visitor reads name no server folder."""

import inspect
import logging

import gradio as gr
import pytest

from cam.service import ModelCache, without_folders
from cam.service.jobs import server_folders
from cam.ui import build_app
from cam.ui.components import UNEXPECTED, guarded


def test_an_unexpected_error_is_one_line_for_the_visitor_and_logged_in_full(caplog):
    def handler(image, progress=gr.Progress()):
        raise RuntimeError(f"cannot open {server_folders()[-1]}/secret/file.bin")

    with caplog.at_level(logging.ERROR, logger="cam.ui"), pytest.raises(gr.Error) as info:
        guarded(handler)("photo.jpg")
    assert info.value.message == UNEXPECTED
    assert "secret/file.bin" in caplog.text and "Traceback" in caplog.text
    assert "progress" in inspect.signature(guarded(handler)).parameters  # Gradio still sees its gr.Progress


def test_a_generator_handler_streams_and_its_readable_errors_pass_through():
    def stream():
        yield 1
        raise gr.Error("Upload a .zip first.")

    wrapped = guarded(stream)
    assert inspect.isgeneratorfunction(wrapped)
    updates = wrapped()
    assert next(updates) == 1
    with pytest.raises(gr.Error, match="Upload a .zip first."):
        next(updates)


def test_every_api_event_is_guarded(tmp_path):
    demo = build_app(ModelCache(tmp_path / "checkpoints"))
    named = {fn.api_name: fn.fn for fn in demo.fns.values() if fn.api_name and fn.fn is not None}
    expected = {"localize", "rerender", "downloads", "compare", "label", "train", "checkpoint_archive"}
    assert expected <= set(named)
    assert all(hasattr(named[name], "__wrapped__") for name in expected), named


def test_paths_under_the_servers_folders_are_cut_to_their_names(tmp_path):
    for folder in server_folders():
        text = (f"'{folder}/deep/er/photo 1.jpg': cannot read {folder}/x.zip:kitchen/a.jpg, ({folder}), in {folder}. "
                f"cannot write '{folder}.' (in {folder}.) in {folder}.\" cannot find {folder}?")
        cut = without_folders(text, [f"{folder}/deep/er/photo 1.jpg"])
        assert not any(f in cut for f in server_folders()), cut
        assert cut.startswith("'photo 1.jpg': cannot read x.zip:kitchen/a.jpg")


def test_a_stop_request_while_launch_sets_up_closes_the_server_and_returns(monkeypatch):
    import cam.ui as ui

    closed = []

    def interrupted_launch(self, **options):  # SIGTERM (as Ctrl-C) after the server started, before serving
        raise KeyboardInterrupt

    monkeypatch.setattr(gr.Blocks, "launch", interrupted_launch)
    monkeypatch.setattr(gr.Blocks, "close", lambda self: closed.append(self))
    for name, stub in (("private_gradio_cache", lambda: None), ("warm", lambda cache: None)):
        monkeypatch.setattr(ui, name, stub)
    monkeypatch.setattr(ui.signal, "signal", lambda *args: None)  # the test process keeps its own handlers
    ui.main(["--port", "0"])  # returns: the process exits 0 and its folders go at exit
    assert len(closed) == 1


def test_a_training_line_that_is_not_json_is_skipped_and_logged(monkeypatch, caplog):
    import subprocess
    import sys

    import cam.service.jobs as jobs

    printed = ('print("Downloading weights: 100%"); print(7); '
               'print(\'{"stage": "training", "epoch": 1, "epochs": 1}\'); print(\'{"checkpoint": "c"}\')')
    real = subprocess.Popen
    monkeypatch.setattr(jobs.subprocess, "Popen", lambda command, **kwargs: real([sys.executable, "-c", printed], **kwargs))
    with caplog.at_level(logging.WARNING, logger="cam.jobs"):
        updates = list(jobs.training_updates("data.zip", "head", 1, 0.01, 0.2))
    assert updates == [{"stage": "training", "epoch": 1, "epochs": 1}, {"stage": "done", "checkpoint": "c"}]
    assert [r.getMessage() for r in caplog.records] == [
        "training printed a line that is not progress: Downloading weights: 100%",
        "training printed a line that is not progress: 7"]


def test_the_confusion_table_has_a_row_per_true_class_and_each_class_accuracy():
    import pandas as pd

    from cam.service import confusion_table

    table = confusion_table({"class_names": ["ant", "bee", "wasp"], "confusion_matrix": [[3, 1, 0], [0, 2, 0], [0, 0, 0]],
                             "per_class_accuracy": {"ant": 0.75, "bee": 1.0, "wasp": None}})
    assert list(table.columns) == ["true \\ predicted", "ant", "bee", "wasp", "class accuracy"]
    assert table.iloc[:, :4].values.tolist() == [["ant", 3, 1, 0], ["bee", 0, 2, 0], ["wasp", 0, 0, 0]]
    accuracy = table["class accuracy"].tolist()
    assert accuracy[:2] == ["75%", "100%"] and pd.isna(accuracy[2])  # no validation photo: blank
