"""The review loop on the fruit set, from the page alone: open the training photos in the Review
tab, correct the boxes of the first photos it shows with the mouse, retrain from the tab, and find
the new checkpoint in Localize; then score its boxes. Prints JSON.

    python benchmarks/review_loop.py ../shared/data/fruit [--review 30] [--model default]

Starts the real app (`python app.py`, checkpoints in a scratch folder) and headless Chromium. The
person is played by the script: for each photo the tab shows, it removes the proposed boxes (click
one, "Remove box") and draws the true ones from `boxes.csv` (press "Create box", drag, pick the
class in the dialog, OK), then "Save and next"; each save is checked against the true boxes (the
review's saved.json: as many boxes, each one's IoU with its true box reported). "Retrain with my
boxes" runs with the tab's defaults. The new checkpoint is scored in this process, held out on
`mixed/` (photos never trained on) and on the training photos left unreviewed (trained on from their
labels only: the boxes a user would export), with the boxes `auto` gives, the maps' box and the
detector's (`benchmarks/detector.py`'s scoring).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from detector import fruit_set, scored_sources  # noqa: E402
from review import app_page, open_for_review, served_app  # noqa: E402


def screen_box(area: dict, shown: tuple[int, int], size: tuple[int, int], box) -> tuple[float, ...]:
    """A box in a photo's own pixels (`size` (h, w)) on the screen, the photo shown at `shown`
    (h, w) drawn fitted and centred in the canvas `area`."""
    scale = min(area["width"] / shown[1], area["height"] / shown[0])
    left = area["x"] + (area["width"] - shown[1] * scale) / 2
    top = area["y"] + (area["height"] - shown[0] * scale) / 2
    sx, sy = shown[1] / size[1] * scale, shown[0] / size[0] * scale
    return left + box[0] * sx, top + box[1] * sy, left + box[2] * sx, top + box[3] * sy


def correct(page, area, shown, size, proposals, truths) -> None:
    """Remove every proposed box, then draw each true one and name its class, as a person would."""
    annotator = page.locator("#review_annotator")
    for box in reversed(proposals):  # the last drawn lies on top
        x0, y0, x1, y1 = screen_box(area, shown, size, box)
        annotator.get_by_role("button", name="Drag boxes").click()
        page.mouse.click(x0 + min(4, (x1 - x0) / 3), y0 + min(4, (y1 - y0) / 3))  # inside, by its corner
        annotator.get_by_role("button", name="Remove box").click()
    for name, box in truths:
        x0, y0, x1, y1 = screen_box(area, shown, size, box)
        annotator.get_by_role("button", name="Drag boxes").click()  # a known mode: Create box toggles
        annotator.get_by_role("button", name="Create box").click()
        page.mouse.move(x0, y0)
        page.mouse.down()
        page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=4)
        page.mouse.move(x1, y1, steps=4)
        page.mouse.up()
        dialog = page.locator("#model-box-edit")
        dialog.get_by_role("listbox", name="Label").click()
        dialog.get_by_role("option", name=name, exact=True).click()
        dialog.get_by_role("button", name="OK").click()


def matched(saved: list, truths: list) -> list[float]:
    """For each true box, the IoU of the saved box of its class that fits it best (0 if none)."""
    from cam.boxes import iou

    return [max((iou(tuple(s[:4]), box) for s in saved if s[4] == name), default=0.0) for name, box in truths]


def main() -> None:
    from playwright.sync_api import expect, sync_playwright

    import cam

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="the fruit set: train/<class>/, mixed/, boxes.csv")
    parser.add_argument("--review", type=int, default=30, help="photos to correct and save")
    parser.add_argument("--model", default="default", help="the model the review opens with")
    parser.add_argument("--per-class", type=int, default=0, help="only this many training photos a class (a quick run)")
    parser.add_argument("--wait", type=float, default=1800, help="seconds to wait for any one step")
    args = parser.parse_args()

    photos, tests, truths = fruit_set(args.folder.resolve())
    if args.per_class:
        photos = [p for c in sorted({c for _, c in photos}) for p in [q for q in photos if q[1] == c][:args.per_class]]
    classes = sorted({c for _, c in photos})
    by_name = {f"{c}/{p.name}": p for p, c in photos}
    scratch = Path(tempfile.mkdtemp(prefix="bench-review-loop-"))
    data = scratch / "fruit.zip"
    with zipfile.ZipFile(data, "w") as archive:
        for name, path in by_name.items():
            archive.write(path, name)
    report = {"photos": len(photos), "classes": classes, "model": args.model, "cpus": os.cpu_count()}
    try:
        with served_app(scratch) as (url, _), sync_playwright() as p:
            page = app_page(p, url, args.wait)
            report["open_seconds"] = open_for_review(page, data, args.model, len(photos))
            (folder,) = [f for f in (scratch / "checkpoints" / ".reviews").iterdir() if f.is_dir()]
            meta = json.loads((folder / "review.json").read_text())
            from cam.service.reviews import display_size

            fits, started, reviewed = [], time.perf_counter(), []
            for k in range(1, args.review + 1):
                name = json.loads((folder / "saved.json").read_text())["current"]
                size = tuple(meta["sizes"][name])
                area = page.locator("#review_annotator canvas").bounding_box()
                true = [(c, b) for c, b in truths[by_name[name]]]
                page.wait_for_timeout(300)  # the picture drawn
                correct(page, area, display_size(size), size, meta["proposals"].get(name, []), true)
                page.locator("#review_save").click()
                expect(page.locator("#review_status")).to_contain_text(f"{k} of {len(photos)} reviewed")
                saved = json.loads((folder / "saved.json").read_text())["reviewed"][name]
                if len(saved) != len(true):  # a proposed box left in place, or a drawn one lost
                    raise RuntimeError(f"{name}: {len(saved)} boxes saved for {len(true)} true ones: {saved}")
                fit = matched(saved, true)
                fits += fit
                reviewed.append(name)
                print(f"{k}: {name}: {len(saved)} saved for {len(true)} true, IoU {min(fit):.2f}", file=sys.stderr,
                      flush=True)
            report["reviewed"] = {"photos": len(reviewed), "a_class": {c: sum(n.startswith(c + "/") for n in reviewed)
                                                                       for c in classes},
                                  "true_boxes": len(fits), "drawn_iou_min": round(min(fits), 3),
                                  "drawn_iou_mean": round(sum(fits) / len(fits), 3),
                                  "seconds_a_photo": round((time.perf_counter() - started) / len(reviewed), 1)}

            page.get_by_role("button", name="Download reviewed boxes (COCO)").click()
            with page.expect_download() as download:
                page.locator("#review_coco_file a[download]").first.click()
            download.value.save_as(scratch / "reviewed.json")
            coco = json.loads((scratch / "reviewed.json").read_text())
            report["download"] = {"images": len(coco["images"]), "boxes": len(coco["annotations"])}

            page.get_by_role("button", name="Retrain with my boxes").first.click()  # the accordion
            started = time.perf_counter()
            page.locator("#review_train").click()
            expect(page.locator("#review_train_status")).to_contain_text("Done")
            report["retrain_seconds"] = round(time.perf_counter() - started, 1)
            report["retrain_status"] = page.locator("#review_train_status").inner_text()
            new = page.locator("#review_train_status strong").first.inner_text()
            page.get_by_role("tab", name="Localize").click()
            expect(page.locator("#model input")).to_have_value(new)
            page.locator("#photo input[type=file]").set_input_files(str(sorted(tests["mixed"])[0]))
            page.get_by_role("button", name="Localize", exact=True).click()
            expect(page.locator("#boxes img")).to_be_visible()
            page.wait_for_timeout(1000)
            page.screenshot(path=str(scratch / "localize.png"), full_page=True)
            report["localize_model"] = new

        model = cam.load_model(str(scratch / "checkpoints" / new), runtime="torch")  # the app stopped
        unreviewed = [p for n, p in by_name.items() if n not in set(reviewed)]
        report["scores"] = scored_sources(model, {"mixed": tests["mixed"], "unreviewed": unreviewed}, truths, classes)
        shutil.copy(scratch / "localize.png", Path(tempfile.gettempdir()) / "review_loop_localize.png")
        print(json.dumps(report, indent=2))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
