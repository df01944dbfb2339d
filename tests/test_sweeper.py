"""The output sweeper never deletes a running job's folder: a job holds a lease while it runs, and
its folder then has the full expiry from the job's end for Gradio to copy what it returned."""

import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import cam.service.jobs as jobs
from cam.service import OutputFolders, label_collection

from .conftest import EXAMPLES

EXPIRY = 0.3  # seconds; the app's is 120


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
