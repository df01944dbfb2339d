"""The output sweeper never deletes a running job's folder: a job holds a lease while it runs, and
its folder then has the full expiry from the job's end for Gradio to copy what it returned."""

import os
import shutil
import threading
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


def test_a_slow_deletion_does_not_hold_up_new_leases(monkeypatch):
    """The sweep decides what to delete under its lock and deletes after: a job asking for a lease
    while an expired folder of many files is being removed gets it at once."""
    import cam.service.outputs as outputs

    folders = OutputFolders(max_age=600)
    expired = folders.new()
    long_ago = time.time() - 3600
    os.utime(expired, (long_ago, long_ago))
    real, deleting = outputs.shutil.rmtree, threading.Event()

    def slow_rmtree(path, *args, **kwargs):  # a folder of thousands of files
        deleting.set()
        time.sleep(1.5)
        real(path, *args, **kwargs)

    monkeypatch.setattr(outputs.shutil, "rmtree", slow_rmtree)
    sweep = threading.Thread(target=folders.sweep)
    sweep.start()
    assert deleting.wait(10)
    started = time.monotonic()
    with folders.lease() as folder:
        waited = time.monotonic() - started
    sweep.join()
    assert waited < 0.5 and folder.exists() and not expired.exists()
