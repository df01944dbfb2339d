"""The output sweeper never deletes a running job's folder: a job holds a lease while it runs, and
its folder then has the full expiry from the job's end for Gradio to copy what it returned."""

import os
import shutil
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest

import cam.service.jobs as jobs
import cam.ui
import cam.ui.finetune_tab
from cam.service import ModelCache, OutputFolders, label_collection

from .conftest import EXAMPLES

EXPIRY = 0.3  # seconds; the app's is 120
SLOW = 4 * EXPIRY + 0.5  # a step outlasting several expiries and sweeps


def _app_handlers(monkeypatch, cache) -> dict:
    """The app's event functions by API name, its output folders expiring after EXPIRY."""
    monkeypatch.setattr(cam.ui, "OutputFolders", lambda max_age: OutputFolders(max_age=EXPIRY))
    demo = cam.ui.build_app(cache)
    return {fn.api_name: fn.fn for fn in demo.fns.values() if fn.api_name}


def _upload(tmp_path, name="coffee.png") -> Path:
    """A copy of an example photo where Gradio would keep an upload."""
    path = tmp_path / "gradio" / "0123abcd" / name
    path.parent.mkdir(parents=True)
    shutil.copyfile(EXAMPLES / "coffee.png", path)
    return path


def test_a_leased_folder_outlives_the_expiry_and_expires_after_the_job():
    folders = OutputFolders(max_age=EXPIRY)
    unleased = folders.new()
    with folders.lease() as folder:
        (folder / "part.txt").write_text("written at the start")
        time.sleep(4 * EXPIRY + 0.5)  # several expiries and sweeps
        assert folder.exists() and not unleased.exists()
    assert folder.exists()  # fresh from the job's end
    time.sleep(4 * EXPIRY + 0.5)
    assert not folder.exists()


def test_a_collection_slower_than_the_expiry_keeps_its_sheet_and_zip(tiny_model, monkeypatch):
    folders = OutputFolders(max_age=EXPIRY)
    real = shutil.make_archive

    def slow_archive(*args, **kwargs):  # a 2 GiB zip, in effect
        time.sleep(4 * EXPIRY + 0.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(jobs.shutil, "make_archive", slow_archive)
    cache = SimpleNamespace(get=lambda choice: tiny_model)
    with folders.lease() as folder:
        sheet, summary, archive = label_collection(cache, "default", [EXAMPLES / "coffee.png"], folder)
    assert summary["labelled"] == 1 and Path(archive).is_file() and all(Path(p).is_file() for p, _ in sheet)


def test_a_slow_deletion_does_not_hold_up_new_leases(monkeypatch):
    """The sweep decides what to delete under its lock and deletes after: a job asking for a lease
    while an expired folder of many files is being removed gets it at once."""
    import cam.service.outputs as outputs

    DELETION = 3.0  # seconds; a lease taken meanwhile must not wait for it, however loaded the machine
    folders = OutputFolders(max_age=600)
    expired = folders.new()
    long_ago = time.time() - 3600
    os.utime(expired, (long_ago, long_ago))
    real, deleting = outputs.shutil.rmtree, threading.Event()

    def slow_rmtree(path, *args, **kwargs):  # a folder of thousands of files
        deleting.set()
        time.sleep(DELETION)
        real(path, *args, **kwargs)

    monkeypatch.setattr(outputs.shutil, "rmtree", slow_rmtree)
    sweep = threading.Thread(target=folders.sweep)
    sweep.start()
    assert deleting.wait(10)
    started = time.monotonic()
    with folders.lease() as folder:
        waited = time.monotonic() - started
    sweep.join()
    assert waited < DELETION / 3 and folder.exists() and not expired.exists()


def test_the_compare_tab_keeps_its_folder_through_a_slow_first_load(tiny_model, tmp_path, monkeypatch):
    class SlowSecondLoad(ModelCache):  # side B's first load (a hub download) outlasts the expiry
        def get(self, choice):
            self.calls = getattr(self, "calls", 0) + 1
            if self.calls == 2:
                time.sleep(SLOW)
            return tiny_model

    compare = _app_handlers(monkeypatch, SlowSecondLoad(tmp_path / "checkpoints"))["compare"]
    outputs = compare(str(EXAMPLES / "coffee.png"), "default", "cam", False, "default", "cam", False, 2)
    assert Path(outputs[1]).is_file() and Path(outputs[4]).is_file()


def test_the_collection_tab_keeps_its_folder_and_uploads_through_a_long_job(tiny_model, tmp_path, monkeypatch):
    class Cache(ModelCache):
        def get(self, choice):
            return tiny_model

    real = shutil.make_archive

    def slow_archive(*args, **kwargs):
        time.sleep(SLOW)
        return real(*args, **kwargs)

    monkeypatch.setattr(jobs.shutil, "make_archive", slow_archive)
    label = _app_handlers(monkeypatch, Cache(tmp_path / "checkpoints"))["label"]
    upload = _upload(tmp_path)
    status, sheet, archive = label([str(upload)], "default", 0, 0.0, 0.5, "",
                                   progress=lambda *args, **kwargs: upload.unlink(missing_ok=True))  # Gradio's expiry
    assert not upload.exists() and "Labelled **1** photos" in status
    assert Path(archive).is_file() and all(Path(p).is_file() for p, _ in sheet)


def test_the_fine_tune_tab_keeps_its_folder_and_upload_through_a_long_job(tmp_path, monkeypatch):
    upload, checkpoint = _upload(tmp_path, "data.zip"), tmp_path / "checkpoints" / "new"
    checkpoint.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):  # listed in the menu the handler selects it in
        (checkpoint / name).touch()
    metrics = {"class_names": ["a", "b"], "confusion_matrix": [[1, 0], [0, 1]], "per_class_accuracy": {"a": 1, "b": 1},
               "val_accuracy": 1.0, "seconds": 1}

    def training(data, *args, **kwargs):  # the upload expires while the training runs
        upload.unlink()
        yield {"stage": "training"}
        time.sleep(SLOW)
        yield {"stage": "done", "checkpoint": str(checkpoint), "metrics": metrics}

    def review(cache, choice, data, folder):  # reads the upload again, writes into the job's folder
        tile = folder / "review_000.jpg"
        tile.write_bytes(Path(data).read_bytes())
        return [(str(tile), "right")]

    monkeypatch.setattr(cam.ui.finetune_tab, "training_updates", training)
    monkeypatch.setattr(cam.ui.finetune_tab, "validation_review", review)
    train = _app_handlers(monkeypatch, ModelCache(tmp_path / "checkpoints"))["train"]
    *_, last = train(str(upload), "head", 1, 0.01, 0.2, progress=lambda *args, **kwargs: None)
    ((tile, _),) = last[-1]
    assert last[0].startswith("Done: **new**") and Path(tile).read_bytes()[:4] == b"\x89PNG"


def test_an_upload_gone_before_its_job_starts_is_a_readable_error(tiny_model, tmp_path, monkeypatch):
    """The page sat open past Gradio's cache expiry: the visitor reads what to do, not an unexpected error."""
    class Cache(ModelCache):
        def get(self, choice):
            return tiny_model

    handlers = _app_handlers(monkeypatch, Cache(tmp_path / "checkpoints"))
    with pytest.raises(gr.Error, match="kitchen.jpg: this upload has expired; upload it again"):
        handlers["label"]([str(tmp_path / "gone" / "kitchen.jpg")], "default", 0, 0.0, 0.5, "",
                          progress=lambda *args, **kwargs: None)
    with pytest.raises(gr.Error, match="ants.zip: this upload has expired; upload it again"):
        list(handlers["train"](str(tmp_path / "gone" / "ants.zip"), "head", 1, 0.01, 0.2,
                               progress=lambda *args, **kwargs: None))


def test_too_many_files_are_refused_before_any_is_held(tiny_model, tmp_path, monkeypatch):
    class Cache(ModelCache):
        def get(self, choice):
            return tiny_model

    held = []
    monkeypatch.setattr(jobs, "MAX_ARCHIVE_FILES", 2)
    monkeypatch.setattr(jobs, "hard_link_or_copy", lambda *paths: held.append(paths))
    label = _app_handlers(monkeypatch, Cache(tmp_path / "checkpoints"))["label"]
    with pytest.raises(gr.Error, match="3 files is over the limit of 2"):
        label([str(EXAMPLES / "coffee.png")] * 3, "default", 0, 0.0, 0.5, "", progress=lambda *args, **kwargs: None)
    assert held == []
