"""What the web app needs from the package, by concern: the shared model cache (`model_cache`),
what a request gets back (`outputs`: pictures, tables, download files), long work (`jobs`:
labelling, fine-tuning, review) and the server process's setup (`process`). app.py holds UI only."""

from .jobs import (SHEET_PHOTOS, checkpoint_archive, confusion_table, epoch_progress, hold_uploads, label_collection,
                   training_updates, validation_review, without_folders)
from .model_cache import CHECKPOINTS, EXAMPLES, ROOT, ModelCache, analyze, is_checkpoint
from .outputs import (DISPLAY_SIDE, GALLERY_SIDE, LIVE_SIDE, OutputFolders, compact, compare_views, live_frame,
                      reboxed, views, write_downloads)
from .process import limit_malloc_arenas, private_gradio_cache

__all__ = [
    "CHECKPOINTS", "DISPLAY_SIDE", "EXAMPLES", "GALLERY_SIDE", "LIVE_SIDE", "ModelCache", "OutputFolders", "ROOT",
    "SHEET_PHOTOS", "analyze", "checkpoint_archive", "compact", "confusion_table", "compare_views", "epoch_progress",
    "hold_uploads", "is_checkpoint", "label_collection", "limit_malloc_arenas", "live_frame", "private_gradio_cache",
    "reboxed", "training_updates", "validation_review", "views", "without_folders", "write_downloads",
]
