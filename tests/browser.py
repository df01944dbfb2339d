"""Chromium for the browser tests and benchmarks/live.py: its flags, and the app's Live tab driven
through its fake camera."""

import shutil

BROWSER_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def chromium() -> str | None:
    """Debian's Chromium, which the browser tests drive (Playwright's own download does not work here)."""
    return shutil.which("chromium") or shutil.which("chromium-browser")

# Counts the live picture's updates (each a new data URL) in window.overlayUpdates, with their times.
WATCH_OVERLAY = """() => {
  window.overlayUpdates = [];
  let last = null;
  const poll = () => {
    const img = document.querySelector("#live_overlay img");
    if (img && img.src && img.src !== last) { last = img.src; window.overlayUpdates.push(performance.now()); }
    requestAnimationFrame(poll);
  };
  poll();
}"""


def fake_camera_flags(video) -> list[str]:
    """Chromium's flags for a fake camera that plays `video` (Y4M) in a loop, allowed without asking."""
    return ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
            f"--use-file-for-fake-video-capture={video}"]


def start_live(page, open_camera: bool = True) -> None:
    """Open the Live tab and its camera (unless already open), start counting updates, press record."""
    if open_camera:
        page.get_by_role("tab", name="Live").click()
        page.get_by_text("Click to Access Webcam").click()
    page.evaluate(WATCH_OVERLAY)
    page.locator("#webcam").get_by_role("button", name="capture photo").click()
