"""The web app: Gradio Blocks built by `build_app`, one module per tab, each building its tab and
wiring its events. UI only: every computation comes from `cam`. `main` (the `cam app` command and
the repository's app.py) loads and warms the default model before the server reports ready."""

from __future__ import annotations

import argparse
import logging
import os
import signal
from dataclasses import dataclass

import gradio as gr

from ..localize import localize
from ..runtime import steady_allocator
from ..service import ModelCache, OutputFolders, limit_malloc_arenas, private_gradio_cache
from . import collection_tab, compare_tab, finetune_tab, live_tab, localize_tab, review_tab
from .components import example_photos, refresh_on_load

INTRO = """# Where does the classifier look?
Upload a photo or click an example: one forward pass gives the top classes, a **class activation map**
for each and a **box** around what it highlights: object localization without one annotated box.
"""
CSS = ("#camera_message {color: var(--error-text-color)} .gradio-container {max-width: 1400px !important} "
       "@media (max-width: 700px) {.gradio-container {padding: 4px !important}} "
       "#review_annotator button[title^='Rotate'] {display: none}")  # boxes are kept in the upright photo's pixels


@dataclass
class Context:
    """What the tabs share: the models, the per-request output folders, the live streams' limits."""

    cache: ModelCache
    outputs: OutputFolders
    live_seconds: int
    live_streams: int


def build_app(cache: ModelCache | None = None) -> gr.Blocks:
    """The whole UI; `cache` holds the models (a fresh one by default)."""
    ttl = int(os.environ.get("CAM_CACHE_TTL", 3600))  # seconds a result file stays downloadable
    ctx = Context(cache=cache or ModelCache(),
                  outputs=OutputFolders(max_age=min(ttl, 120)),  # Gradio has copied them by the time the answer is sent
                  live_seconds=int(os.environ.get("CAM_LIVE_SECONDS", 60)),  # one stream's length: slots come back
                  live_streams=int(os.environ.get("CAM_LIVE_STREAMS", 2)))  # streams at once; more wait in the queue
    with gr.Blocks(title="CAM localizer", delete_cache=(max(ttl // 4, 10), ttl)) as demo:
        gr.Markdown(INTRO)
        model = localize_tab.build(ctx, demo)
        live_tab.build(ctx)
        finetune_tab.build(ctx, model)
        review_tab.build(ctx, demo, model)
        compare_tab.build(ctx)
        collection_tab.build(ctx)
        refresh_on_load(demo, ctx.cache, model)
    return demo


def warm(cache: ModelCache) -> None:
    """Load the default model and run it once on the first example photo (its runtime compiled, its
    buffers made), so that the first visitor's click costs what later ones do."""
    photos = example_photos()
    model = cache.get("default")
    if photos:
        localize(model, photos[0])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cam app", description="Serve the CAM localizer web app.")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    limit_malloc_arenas()
    steady_allocator()  # process-wide malloc tuning, the server's own (cam.runtime)
    private_gradio_cache()
    # A stop request (SIGTERM: what Spaces and process managers send) is handled as Ctrl-C: Gradio
    # closes its server, deleting the files it cached, and the app's own folders go at exit.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    cache = ModelCache()
    warm(cache)
    # show_error off: gr.Error's readable messages still reach the page; any other exception's text
    # could name the server's folders (every event handler is `guarded` and logs those in full).
    demo = build_app(cache).queue(default_concurrency_limit=4)
    try:
        demo.launch(server_name=args.host, server_port=args.port, show_error=False, css=CSS,
                    head=live_tab.CAMERA_MESSAGES, max_file_size="50mb")
    except KeyboardInterrupt:  # a stop request while launch was still setting up (once serving, Gradio catches it)
        demo.close()
