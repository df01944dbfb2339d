"""The Live tab: a webcam stream localized frame by frame, the newest frame always the one shown."""

from __future__ import annotations

import gradio as gr

from ..service import live_frame
from .components import LiveInput, LiveOverlay, guarded, model_menu, readable

# Gradio shows nothing when the webcam cannot be had; this wraps the browser's camera request to say why.
CAMERA_MESSAGES = """<script>
(() => {
  const messages = {
    NotAllowedError: "The browser refused this page the webcam. Allow the camera for this site (the camera icon in the address bar), then click the webcam box again.",
    NotFoundError: "No webcam was found. Plug one in and click the webcam box again, or upload a photo in the Localize tab.",
    NotReadableError: "The webcam is busy in another program or tab. Close it there, then click the webcam box again.",
    none: "This browser gives this page no webcam: browsers allow cameras only on HTTPS pages (or localhost)."
  };
  messages.SecurityError = messages.NotAllowedError;
  messages.OverconstrainedError = messages.NotFoundError;
  messages.AbortError = messages.NotReadableError;
  const say = (text) => { const box = document.querySelector("#camera_message"); if (box) box.textContent = text; };
  const media = navigator.mediaDevices;
  if (!media || !media.getUserMedia) {
    document.addEventListener("click", (event) => { if (event.target.closest("#webcam")) say(messages.none); }, true);
    return;
  }
  const ask = media.getUserMedia.bind(media);
  media.getUserMedia = async (constraints) => {
    try {
      const stream = await ask(constraints);
      say("");
      return stream;
    } catch (error) {
      say(messages[error.name] || `The webcam could not be opened (${error.name}).`);
      throw error;
    }
  };
})();
</script>"""


def build(ctx) -> None:
    """The tab and its stream event: `ctx.live_streams` at once, each `ctx.live_seconds` long."""
    cache = ctx.cache

    def run_live(frame, choice, topk):
        if frame is None:
            return gr.skip(), gr.skip()
        try:
            return live_frame(cache, choice, frame, topk)
        except ValueError as exc:
            raise readable(exc) from None

    with gr.Tab("Live"):
        gr.Markdown(f"Click the webcam box, allow the camera, point it at something and press Record: every "
                    f"frame is localized at the recommended setting, its top classes boxed over the top class's heatmap (about 10 "
                    f"frames/s on 2 CPU cores; the newest frame is always the one shown, none wait in a queue). "
                    f"A stream stops after {ctx.live_seconds} s, so that the server's live slots ({ctx.live_streams}) "
                    "come back to others; press Record again to go on.")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=280):
                webcam = LiveInput(label="Webcam", sources=["webcam"], streaming=True, elem_id="webcam")
                gr.HTML('<p id="camera_message" role="alert"></p>', padding=False)
                live_model = model_menu(cache, label="Model", elem_id="live_model")
                live_topk = gr.Slider(1, 5, value=3, step=1, label="Top-k classes")
            with gr.Column(scale=1, min_width=320):
                live_overlay = LiveOverlay(show_label=False, interactive=False, format="jpeg", elem_id="live_overlay")
                live_caption = gr.Markdown(elem_id="live_caption")
    webcam.stream(guarded(run_live), [webcam, live_model, live_topk], [live_overlay, live_caption], api_visibility="private",
                  stream_every=0.1, time_limit=ctx.live_seconds, concurrency_limit=ctx.live_streams,
                  concurrency_id="live", show_progress="hidden")
