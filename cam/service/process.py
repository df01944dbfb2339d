"""A web server process's own setup: a private Gradio file cache, capped malloc arenas."""

from __future__ import annotations

import atexit
import os
import shutil

from ..data import private_temp_folder, remove_orphaned_temp_folders
from ..runtime import glibc_mallopt


def private_gradio_cache() -> None:
    """Point Gradio's file cache (uploads, answers) at a private temp folder removed at exit, unless
    GRADIO_TEMP_DIR is set. Gradio's own cleanup at shutdown left them in the shared /tmp/gradio
    whenever clients were still connected; folders of killed servers go when the next one starts.
    Its path is public (every file's URL carries it), so it lies in the temp dir, not under the
    working dir or home. Call before building the UI."""
    if os.environ.get("GRADIO_TEMP_DIR"):
        return
    remove_orphaned_temp_folders("cam-gradio-")
    folder = private_temp_folder("cam-gradio-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.environ["GRADIO_TEMP_DIR"] = str(folder)


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas (as MALLOC_ARENA_MAX does): with many request threads the
    default of 8 per core lets a server's resident memory creep through fragmentation."""
    if os.environ.get("MALLOC_ARENA_MAX") is None:
        glibc_mallopt(-8, arenas)  # M_ARENA_MAX
