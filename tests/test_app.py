"""The real app on a free local port: its API through gradio_client, its page through Chromium."""

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest
import yaml
from gradio_client.exceptions import AppError

from cam.export import split_of

from .conftest import EXAMPLES, ROOT
from .datasets import COLOURS, dataset_zip
from .browser import BROWSER_FLAGS, chromium, fake_camera_flags, start_live

pytestmark = pytest.mark.slow  # a real server per module

ARTIFACTS = ROOT / "test-artifacts"
SYSTEM_TEMP = Path(tempfile.gettempdir())  # where the app keeps its folders (the tests point tempfile elsewhere)
LIVE_SECONDS = 8  # the test server's live streams are short, and one at a time: a closed tab's slot must come back
CATS = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from _serve(tmp_path_factory)


@pytest.fixture
def fresh_server(tmp_path_factory):
    """A server of its own that no test has used: its first visitor's first click is the first."""
    yield from _serve(tmp_path_factory)


def _serve(tmp_path_factory):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    checkpoints = tmp_path_factory.mktemp("checkpoints")
    log = open(tmp_path_factory.mktemp("log") / "app.log", "w")
    proc = subprocess.Popen([sys.executable, "app.py", "--host", "127.0.0.1", "--port", str(port)], cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT,
                            env={**{k: v for k, v in os.environ.items() if k != "GRADIO_TEMP_DIR"},
                                 "CAM_CHECKPOINTS": str(checkpoints), "CAM_LIVE_SECONDS": str(LIVE_SECONDS),
                                 "CAM_LIVE_STREAMS": "1"})
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise RuntimeError(f"the app did not start: {Path(log.name).read_text()[-2000:]}")
            time.sleep(0.5)
    assert len(_owned_temp_folders(proc.pid)) == 2, "the app should keep its files in two private folders"
    # gradio_client leaves an empty folder in the system temp dir per downloaded file: keep them here.
    system_temp, tempfile.tempdir = tempfile.tempdir, str(tmp_path_factory.mktemp("client-temp"))
    yield {"url": url, "checkpoints": checkpoints, "downloads": tmp_path_factory.mktemp("downloads"), "pid": proc.pid}
    tempfile.tempdir = system_temp
    proc.terminate()  # SIGTERM: the app exits normally and removes its temporary folders
    assert proc.wait(timeout=30) == 0
    left = _owned_temp_folders(proc.pid)
    assert left == [], f"the stopped app left {left}"  # its result folders and Gradio's cached files


def _owned_temp_folders(pid: int) -> list[Path]:
    """The app's private temp folders (result files, Gradio's cache) that name `pid` as owner."""
    return [p for prefix in ("cam-outputs-*", "cam-gradio-*") for p in SYSTEM_TEMP.glob(prefix)
            if (p / "owner.pid").is_file() and (p / "owner.pid").read_text() == str(pid)]


def _client(server):
    from gradio_client import Client

    return Client(server["url"], verbose=False, download_files=str(server["downloads"]))


def _localize(client, path, choice="default", topk=5):
    from gradio_client import handle_file

    return client.predict(handle_file(str(path)), choice, topk, 0.2, False, 0.5, 288, False, True, api_name="/localize")


def test_api_localize_bad_file_then_good(server, tmp_path):
    client = _client(server)
    overlay, boxed, gallery, table, result = _localize(client, EXAMPLES / "chelsea.png")
    assert result["predictions"][0]["label"] in CATS and (result["width"], result["height"]) == (451, 300)
    scores = [p["score"] for p in result["predictions"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 5
    for x0, y0, x1, y1 in result["predictions"][0]["boxes"]:
        assert 0 <= x0 < x1 <= 451 and 0 <= y0 < y1 <= 300
    assert len(gallery) == 5 and os.path.exists(overlay) and os.path.exists(boxed)
    assert table["data"][0][1] == result["predictions"][0]["label"]

    bad = tmp_path / "broken.jpg"
    bad.write_text("not an image at all")
    with pytest.raises(AppError, match="not an image this app can read"):
        _localize(client, bad)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes((EXAMPLES / "grace_hopper.jpg").read_bytes()[:5000])
    with pytest.raises(AppError, match="truncated or corrupt"):
        _localize(client, truncated)
    assert _localize(client, EXAMPLES / "coffee.png", topk=2)[4]["predictions"][0]["label"] == "espresso"


def test_api_localize_with_a_gradient_method_names_it(server):
    from gradio_client import handle_file

    client = _client(server)
    _, _, gallery, _, result = client.predict(handle_file(str(EXAMPLES / "coffee.png")), "default", 2, 0.2, False, 0.5,
                                              288, False, True, "gradcam", api_name="/localize")
    assert result["method"] == "gradcam" and result["predictions"][0]["label"] == "espresso"
    assert all(tile["caption"].endswith("· Grad-CAM, refined") for tile in gallery)
    assert _localize(client, EXAMPLES / "coffee.png", topk=1)[4]["method"] == "cam"  # auto, the default
    _, _, gallery, _, result = client.predict(handle_file(str(EXAMPLES / "coffee.png")), "default", 2, 0.2, False, 0.5,
                                              288, True, True, "auto", True, api_name="/localize")
    assert result["adapted"] is True and all(tile["caption"].endswith("· CAM, refined, adapted") for tile in gallery)
    with pytest.raises(AppError, match="scorecam is not in the list of choices: .'auto', 'cam', 'gradcam'"):
        client.predict(handle_file(str(EXAMPLES / "coffee.png")), "default", 2, 0.2, False, 0.5, 288, False, True,
                       "scorecam", api_name="/localize")


def test_api_compare_two_settings_then_a_deleted_checkpoint(server):
    from gradio_client import handle_file

    import cam
    from cam.checkpoint import save_checkpoint

    client = _client(server)
    photo = handle_file(str(EXAMPLES / "coffee.png"))
    cap_a, pic_a, table_a, cap_b, pic_b, table_b = client.predict(
        photo, "default", "cam", False, "default", "gradcam", True, 3, api_name="/compare")
    assert cap_a == "**A**: default, CAM" and cap_b == "**B**: default, Grad-CAM, refined"
    assert os.path.exists(pic_a) and os.path.exists(pic_b)
    assert table_a["data"][0][1] == table_b["data"][0][1] == "espresso" and len(table_a["data"]) == 3

    folder = save_checkpoint(cam.load_model("timm:test_resnet", pretrained=False, device="cpu"), server["checkpoints"],
                             {}, {})
    assert client.predict(photo, "default", "auto", True, folder.name, "auto", True, 2, api_name="/compare")[3] == \
        f"**B**: {folder.name}, CAM, refined"
    shutil.rmtree(folder)
    with pytest.raises(AppError, match=f"B: unknown model '{folder.name}': choose 'default' or a checkpoint"):
        client.predict(photo, "default", "auto", True, folder.name, "auto", True, 2, api_name="/compare")


def test_api_rejects_models_outside_checkpoints(server):
    client = _client(server)
    with pytest.raises(AppError, match="unknown model '../../etc': choose 'default' or a checkpoint listed in the menu"):
        _localize(client, EXAMPLES / "coffee.png", choice="../../etc")


def test_api_train_then_localize_with_the_new_model(server, tmp_path):
    from gradio_client import handle_file

    client = _client(server)
    zip_path = dataset_zip(tmp_path / "colours.zip")
    status, _plot, metrics, _confusion, _model, review = client.predict(
        handle_file(str(zip_path)), "head", 5, 0.01, 0.2, api_name="/train")
    assert "Done" in status and metrics["class_names"] == sorted(COLOURS)
    # The validation photos with the new model's maps: as many as validated, misclassified ones first.
    captions = [tile["caption"] for tile in review]
    assert len(captions) == metrics["val_images"] and all(os.path.exists(tile["image"]) for tile in review)
    wrong = sum(c.startswith("WRONG") for c in captions)
    assert all(c.startswith("WRONG") for c in captions[:wrong]) and all(c.startswith("right") for c in captions[wrong:])
    assert len(captions) - wrong == round(metrics["val_accuracy"] * metrics["val_images"])
    assert {c.split(": ")[1].split(" ->")[0] for c in captions} == set(COLOURS)
    names = [p.name for p in server["checkpoints"].iterdir() if not p.name.startswith(".")]  # .reviews: hidden
    assert len(names) == 1 and names[0].startswith("experiment_")
    archive = client.predict(names[0], api_name="/checkpoint_archive")
    with zipfile.ZipFile(archive) as packed:
        assert sorted(packed.namelist()) == ["config.json", "model.safetensors"]
    result = _localize(client, EXAMPLES / "coffee.png", choice=names[0], topk=3)[4]
    assert {p["label"] for p in result["predictions"]} == set(COLOURS)


@pytest.mark.browser
def test_browser_example_upload_and_slider(server):
    with _app_page(server, 90_000) as page:
        from playwright.sync_api import expect

        # The gallery opens on photos the ImageNet model gets right; nothing to download takes room yet.
        expect(page.locator("img[src*='astronaut']").first).to_be_attached()
        names = [p.name for p in EXAMPLES.iterdir() if p.suffix in (".png", ".jpg")]
        shown = [name for src in page.locator("img").evaluate_all("els => els.map(e => e.src)")
                 for name in names if name in src]
        assert shown[0] == "coffee.png" and shown[-1] == "astronaut.png", shown
        expect(page.locator("#downloads")).to_be_hidden()
        expect(page.locator("#boxes [data-testid='block-label']")).to_be_hidden()  # no tab over the captions

        # Click the cat in the example gallery: it runs by itself.
        page.locator(".gallery-item, [data-testid='examples'] button, table.table tbody tr").filter(
            has=page.locator("img[src*='chelsea']")).first.click()
        expect(page.locator("#overlay img")).to_be_visible()
        expect(page.locator("#boxes img")).to_be_visible()
        expect(page.locator("#gallery img").first).to_be_visible()
        expect(page.locator("#table")).to_contain_text("cat", timeout=30_000)  # a loaded CI machine: seconds
        page.screenshot(path=str(ARTIFACTS / "localize_example.png"), full_page=True)

        # Upload a photo through the file input.
        page.locator("input[type=file]").first.set_input_files(str(EXAMPLES / "coffee.png"))
        expect(page.locator("#table")).to_contain_text("espresso")
        page.screenshot(path=str(ARTIFACTS / "localize_upload.png"), full_page=True)

        # Move the threshold slider: the boxes picture changes without a new upload.
        before = page.locator("#boxes img").get_attribute("src")
        slider = page.locator("input[type=range]").nth(1)
        slider.fill("0.8")
        expect(page.locator("#boxes img")).not_to_have_attribute("src", before)
        page.screenshot(path=str(ARTIFACTS / "localize_threshold.png"), full_page=True)

        # The paper's CAM takes the maps' box; the best quality ticks its options; the captions name them.
        page.locator("#quality").get_by_text("The paper's CAM").click()
        expect(page.locator("#boxes-from").get_by_label("cam", exact=True)).to_be_checked()
        page.locator("#quality").get_by_text("Best").click()
        expect(page.locator("#boxes-from").get_by_label("auto", exact=True)).to_be_checked()
        page.get_by_role("button", name=re.compile("^Localization options")).click()
        expect(page.get_by_label("Average with the mirror image (flip)")).to_be_checked()
        expect(page.get_by_label(re.compile("Adapt each map's contrast"))).to_be_checked()
        page.get_by_role("button", name="Localize", exact=True).click()
        expect(page.locator("#gallery")).to_contain_text("refined, adapted")
        page.screenshot(path=str(ARTIFACTS / "localize_best.png"), full_page=True)

        # Downloads appear once prepared.
        page.get_by_role("button", name="Prepare downloads at full size").click()
        expect(page.locator("#downloads").get_by_role("cell", name="maps.npy")).to_be_visible()

        # Phone width still shows the outputs.
        page.set_viewport_size({"width": 390, "height": 844})
        expect(page.locator("#boxes img")).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "localize_phone.png"), full_page=True)


@contextlib.contextmanager
def _app_page(server, timeout_ms: int, camera: list[str] = ()):
    """A Chromium page on the app (skipped, or failed where required, without Chromium), closed after.
    `camera`: Chromium's flags for its fake camera."""
    _browser_or_skip()
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=BROWSER_FLAGS + list(camera), headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(timeout_ms)
            page.goto(server["url"])
            yield page
        finally:
            browser.close()


def _browser_or_skip():
    if not chromium():
        if os.environ.get("CAM_REQUIRE_BROWSER"):
            pytest.fail("Chromium is required (CAM_REQUIRE_BROWSER is set) but not installed")
        pytest.skip("Chromium is not installed (apt-get install chromium); browser test skipped")


@pytest.mark.browser
def test_browser_fine_tune_tab_trains_and_selects_the_new_model(server, tmp_path):
    from playwright.sync_api import expect

    zip_path = dataset_zip(tmp_path / "colours.zip")
    before = {p.name for p in server["checkpoints"].iterdir()}
    with _app_page(server, 120_000) as page:
        page.get_by_role("tab", name="Fine-tune").click()
        page.locator("#dataset input[type=file]").set_input_files(str(zip_path))
        # the file table shows the name as two spans (stem, extension); its accessible name joins them
        expect(page.locator("#dataset").get_by_role("cell", name="colours.zip")).to_be_visible()
        page.get_by_role("button", name="Start training").click()
        expect(page.locator("#train_status")).to_contain_text("Done", timeout=120_000)  # expect() waits 5 s by default
        new = {p.name for p in server["checkpoints"].iterdir()} - before
        assert len(new) == 1, new
        name = new.pop()
        expect(page.locator("#train_status")).to_contain_text(name)
        expect(page.locator("#confusion")).to_contain_text("green")
        expect(page.locator("#confusion")).to_contain_text("class accuracy")
        expect(page.locator("#review img").first).to_be_visible()  # the validation photos with their maps
        expect(page.locator("#review")).to_contain_text("->")
        plot = page.locator("#train_plot")
        for series in ("training loss", "training accuracy", "validation accuracy"):
            expect(plot).to_contain_text(series)  # the legend
        expect(plot.locator("g.mark-line path")).to_have_count(3)  # one drawn line per series
        expect(plot.locator("[aria-label^='Y-axis']")).to_have_attribute("aria-label", re.compile("linear scale"))
        expect(page.locator("#checkpoint_file a[download]").first).to_have_attribute(
            "download", f"{name}.zip", timeout=60_000)  # the checkpoint's download link
        page.screenshot(path=str(ARTIFACTS / "fine_tune_done.png"), full_page=True)
        page.get_by_role("tab", name="Localize").click()
        expect(page.locator("#model input")).to_have_value(name)


def test_api_hostile_inputs_get_errors_and_the_server_keeps_serving(server, tmp_path):
    import numpy as np
    from gradio_client import handle_file

    from .images import bomb_png, hostile_files, jpeg_bytes

    client = _client(server)
    photo = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    for name, data in {**hostile_files(photo), "bomb.png": bomb_png()}.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(AppError) as info:
            _localize(client, path)
        assert "Traceback" not in str(info.value) and len(str(info.value)) < 400, name

    def call(**changes):
        values = {"topk": 5, "threshold": 0.2}
        values.update(changes)
        return client.predict(handle_file(str(EXAMPLES / "coffee.png")), "default", values["topk"], values["threshold"],
                              False, 0.5, 288, False, True, api_name="/localize")

    for bad, message in (({"topk": 0}, "Value 0 is less than minimum value 1"),
                         ({"topk": 10000}, "Value 10000 is greater than maximum value 10"),
                         ({"threshold": -1}, "Value -1 is less than minimum value 0"),
                         ({"threshold": 2}, "Value 2 is greater than maximum value 1")):
        with pytest.raises(AppError, match=message):
            call(**bad)

    rotated = tmp_path / "rotated.jpg"  # stored 80 wide, 40 high; EXIF says: display rotated 90 degrees
    rotated.write_bytes(jpeg_bytes(np.full((40, 80, 3), 128, np.uint8), exif_orientation=6))
    upright = _localize(client, rotated, topk=1)[4]
    assert (upright["width"], upright["height"]) == (40, 80)

    bad_zip = tmp_path / "escape.zip"
    with zipfile.ZipFile(bad_zip, "w") as archive:
        archive.writestr("../evil.png", b"x")
    before = sorted(p.name for p in server["checkpoints"].iterdir())  # other tests share the folder
    with pytest.raises(AppError, match="outside"):
        client.predict(handle_file(str(bad_zip)), "head", 2, 0.01, 0.2, api_name="/train")
    assert sorted(p.name for p in server["checkpoints"].iterdir()) == before
    assert _localize(client, EXAMPLES / "chelsea.png", topk=1)[4]["predictions"][0]["label"] in CATS


def test_readme_front_matter_configures_the_space():
    """Hugging Face Spaces reads the README's front matter: the app file, and a Gradio and Python
    version inside what requirements.txt allows."""
    text = (ROOT / "README.md").read_text()
    assert text.startswith("---\n")
    fields = dict(line.split(": ", 1) for line in text.split("---\n")[1].splitlines())
    assert fields["sdk"] == "gradio" and fields["app_file"] == "app.py" and (ROOT / "app.py").is_file()
    assert fields["sdk_version"].split(".")[0] == "6"  # requirements.txt: gradio>=6.0,<7
    assert fields["python_version"].strip('"') == "3.11"


def test_api_label_a_collection_and_refuse_a_hostile_zip(server, tmp_path):
    from gradio_client import handle_file

    client = _client(server)
    bundle = tmp_path / "more.zip"
    with zipfile.ZipFile(bundle, "w") as archive:
        archive.write(EXAMPLES / "coffee.png", "kitchen/coffee.png")
        archive.writestr("kitchen/broken.jpg", b"not a photo")
    status, sheet, archive_path = client.predict(
        [handle_file(str(EXAMPLES / "chelsea.png")), handle_file(str(bundle))], "default", 2, 0.0, 0.2, api_name="/label")
    assert "Labelled **2** photos" in status and "**1** could not be read: kitchen/broken.jpg" in status
    assert [item["caption"].split(":")[0] for item in sheet] == ["chelsea.png", "kitchen/coffee.png"]
    assert "espresso" in sheet[1]["caption"]
    with zipfile.ZipFile(archive_path) as packed:
        names = set(packed.namelist())
        coco = json.loads(packed.read("coco.json"))
        data = yaml.safe_load(packed.read("yolo/data.yaml"))
    assert data["path"] == "" and data["train"] == "images/train"  # Ultralytics: the folder data.yaml is in
    assert {"coco.json", "yolo/classes.txt", f"yolo/labels/{split_of('kitchen/coffee.png', 0.1)}/kitchen__coffee.txt",
            f"yolo/images/{split_of('chelsea.png', 0.1)}/chelsea.png", "voc/VOCdevkit/VOC2012/Annotations/chelsea.xml",
            "voc/VOCdevkit/VOC2012/JPEGImages/kitchen__coffee.jpg"} <= names
    assert [image["file_name"] for image in coco["images"]] == ["chelsea.png", "kitchen/coffee.png"]
    assert len(coco["annotations"]) == 4  # two classes a photo, one box each

    _, _, chosen_path = client.predict([handle_file(str(EXAMPLES / "chelsea.png"))], "default", 1, 0.0, 0.2,
                                       "espresso, Egyptian cat", api_name="/label")
    with zipfile.ZipFile(chosen_path) as packed:
        chosen = json.loads(packed.read("coco.json"))
    assert chosen["categories"] == [{"id": 1, "name": "espresso"}, {"id": 2, "name": "Egyptian cat"}]
    assert [a["category_id"] for a in chosen["annotations"]] == [2]  # the cat, the better of the two

    _, _, default_path = client.predict(files=[handle_file(str(EXAMPLES / "chelsea.png"))], api_name="/label")
    with zipfile.ZipFile(default_path) as packed:  # the default, `cam label`'s: the top class without a detector
        assert len(json.loads(packed.read("coco.json"))["annotations"]) == 1

    escape = tmp_path / "escape.zip"
    with zipfile.ZipFile(escape, "w") as archive:
        archive.writestr("../evil.png", b"x")
    with pytest.raises(AppError, match="outside"):
        client.predict([handle_file(str(escape))], "default", 1, 0.0, 0.2, api_name="/label")
    with pytest.raises(AppError, match="Add photos"):
        client.predict([], "default", 1, 0.0, 0.2, api_name="/label")


@pytest.mark.browser
def test_browser_collection_tab_labels_three_photos_and_downloads_the_zip(server, tmp_path):
    from playwright.sync_api import expect

    photos = [str(EXAMPLES / name) for name in ("chelsea.png", "coffee.png", "rocket.jpg")]
    with _app_page(server, 90_000) as page:
        page.get_by_role("tab", name="Collection").click()
        page.locator("#collection input[type=file]").set_input_files(photos)
        expect(page.locator("#collection").get_by_role("cell", name="rocket.jpg")).to_be_visible()
        page.get_by_role("button", name="Label the collection").click()
        expect(page.locator("#collection_status")).to_contain_text("Labelled 3 photos")
        expect(page.locator("#sheet img")).to_have_count(3)
        expect(page.locator("#sheet")).to_contain_text("coffee.png: espresso")
        page.screenshot(path=str(ARTIFACTS / "collection.png"), full_page=True)
        with page.expect_download() as download:
            page.locator("#labels_file a[download]").first.click()
        saved = tmp_path / download.value.suggested_filename
        download.value.save_as(saved)
    with zipfile.ZipFile(saved) as packed:
        coco = json.loads(packed.read("coco.json"))
        assert sorted(i["file_name"] for i in coco["images"]) == ["chelsea.png", "coffee.png", "rocket.jpg"]
        split = split_of("rocket.jpg", 0.1)
        assert {f"yolo/labels/{split}/rocket.txt", "voc/VOCdevkit/VOC2012/Annotations/coffee.xml"} <= set(packed.namelist())


def _cached_files(server) -> set[Path]:
    return {f for folder in _owned_temp_folders(server["pid"]) for f in folder.rglob("*") if f.is_file()}


@pytest.mark.browser
def test_browser_live_tab_streams_the_fake_camera_and_a_closed_tab_frees_its_slot(server, tmp_path):
    from playwright.sync_api import expect

    from cam.data import load_image
    from .images import write_camera_video

    video = tmp_path / "camera.y4m"
    write_camera_video(video, load_image(EXAMPLES / "chelsea.png"))
    camera = fake_camera_flags(video)
    files_before = _cached_files(server)
    with _app_page(server, 60_000, camera) as page:
        start_live(page)
        page.wait_for_function("window.overlayUpdates.length >= 8")  # the picture follows the camera
        expect(page.locator("#live_caption")).to_contain_text(re.compile("|".join(CATS)))
        page.screenshot(path=str(ARTIFACTS / "live.png"), full_page=True)
        page.locator("#webcam button", has_text="Stop").click()
        page.wait_for_timeout(400)  # a frame in flight may still land
        shown = page.evaluate("window.overlayUpdates.length")
        page.wait_for_timeout(1500)
        assert page.evaluate("window.overlayUpdates.length") == shown, "frames kept coming after Stop: a queue"

        start_live(page, open_camera=False)  # again, then the tab closes mid-stream
        page.wait_for_function("window.overlayUpdates.length >= 3")
        page.close()
        closed = time.monotonic()
        # The test server serves one stream at a time: the next visitor gets frames once the closed
        # tab's stream has ended, within one stream's length.
        page = page.context.browser.new_page()
        page.set_default_timeout((LIVE_SECONDS + 20) * 1000)
        page.goto(server["url"])
        start_live(page)
        page.wait_for_function("window.overlayUpdates.length >= 3")
        assert time.monotonic() - closed < LIVE_SECONDS + 15
    written = {f for f in _cached_files(server) - files_before  # but the Localize tab's result on each page load
               if not re.fullmatch(r"(overlay|boxes|map_\d+)\.jpg", f.name)}
    assert not written, "a live stream wrote files"


@pytest.mark.browser
def test_browser_live_tab_says_why_when_the_camera_is_absent_or_refused(server):
    from playwright.sync_api import expect

    for flags, message in (([], "No webcam was found"),
                           (["--use-fake-device-for-media-stream", "--deny-permission-prompts"], "refused this page")):
        with _app_page(server, 30_000, flags) as page:
            page.get_by_role("tab", name="Live").click()
            page.get_by_text("Click to Access Webcam").click()
            expect(page.locator("#camera_message")).to_contain_text(message)


def test_api_parameters_are_named_as_the_settings_fields(server):
    from cam.settings import NAMES

    info = _client(server).view_api(return_format="dict", print_info=False)
    names = [p["parameter_name"] for p in info["named_endpoints"]["/localize"]["parameters"]]
    assert names == ["image", "choice", "topk", "threshold", "all_regions", "opacity", "input_size", "flip", "refine",
                     "method", "adapt", "boxes"]
    assert set(names) - {"image", "choice", "opacity"} <= set(NAMES)  # the README's API example calls them so


@pytest.mark.browser
def test_browser_first_visit_opens_on_a_result_with_the_examples_in_view(fresh_server):
    import statistics

    from playwright.sync_api import expect

    with _app_page(fresh_server, 90_000) as page:
        page.set_viewport_size({"width": 1366, "height": 768})
        page.reload()
        # A finished result for the first example, without a click.
        expect(page.locator("#table")).to_contain_text("espresso")
        for part in ("#overlay img", "#boxes img", "#gallery img"):
            expect(page.locator(part).first).to_be_visible()
        examples = page.locator("#examples")
        expect(examples.locator("img").first).to_be_visible()
        assert examples.locator("img").first.bounding_box()["y"] + 40 <= 768  # on the first screen of a laptop
        page.screenshot(path=str(ARTIFACTS / "first_visit_laptop.png"))

        def answer_ms(photo: str, label: str) -> float:
            started = time.perf_counter()
            examples.locator(f"img[src*='{photo}']").first.click()
            expect(page.locator("#table")).to_contain_text(label)
            return (time.perf_counter() - started) * 1000

        first = answer_ms("chelsea", "Egyptian cat")
        later = [answer_ms(photo, label) for photo, label in (("flower", "daisy"), ("coffee", "espresso"),
                                                              ("rocket", "missile"), ("chelsea", "Egyptian cat"))]
        assert first <= 1.5 * statistics.median(later), (first, later)

        page.set_viewport_size({"width": 390, "height": 844})  # a phone: the examples come before the pictures
        expect(page.locator("#overlay img")).to_be_visible()
        assert examples.bounding_box()["y"] < page.locator("#overlay").bounding_box()["y"]
        page.screenshot(path=str(ARTIFACTS / "first_visit_phone.png"), full_page=True)


def test_api_collection_errors_name_files_not_server_folders(server, tmp_path):
    from gradio_client import handle_file

    client = _client(server)
    broken = tmp_path / "holiday.zip"
    broken.write_bytes(b"not a zip at all")
    with pytest.raises(AppError) as info:
        client.predict([handle_file(str(broken))], "default", 1, 0.0, 0.2, api_name="/label")
    message = str(info.value)
    assert "holiday.zip" in message and "/tmp" not in message and "gradio" not in message, message
    unreadable = tmp_path / "holiday.jpg"
    unreadable.write_bytes(b"no photo here")
    with pytest.raises(AppError) as info:
        client.predict([handle_file(str(unreadable))], "default", 1, 0.0, 0.2, api_name="/label")
    message = str(info.value)
    assert "None of the 1 photos could be read: holiday.jpg: " in message and "/tmp" not in message, message


def test_api_nothing_of_the_server_leaks_from_any_endpoint(server, tmp_path):
    """Every endpoint with good and bad inputs, called through Gradio's HTTP API as it answers (no
    gradio_client in between): the page, its config, the API's description, every upload's and
    event's raw answer, every text file sent and every file in a sent zip name none of the server's
    folders: the temp dir, the working dir, checkpoints, home. Good inputs succeed, bad ones fail
    with their readable message.

    One folder cannot be hidden: Gradio's file cache, whose absolute path every file's URL and
    answer carry (`/gradio_api/file=<path>`; Gradio has no other form). The app makes it a fresh
    `cam-gradio-*` folder in the temp dir, which names none of the other folders; it is cut from
    the texts, and then the temp dir must not appear either."""
    import io
    import uuid

    import httpx
    import numpy as np

    import cam
    from cam.checkpoint import save_checkpoint

    from .images import jpeg_bytes

    (cache,) = [f for f in _owned_temp_folders(server["pid"]) if f.name.startswith("cam-gradio-")]
    others = {str(f) for p in (ROOT, server["checkpoints"], Path.home()) for f in (p, Path(p).resolve())}
    assert not any(folder in str(cache) for folder in others), cache
    folders = others | {str(SYSTEM_TEMP), str(SYSTEM_TEMP.resolve())}
    http = httpx.Client(base_url=server["url"], timeout=300)
    session = uuid.uuid4().hex  # one visitor: /rerender and /downloads work on its last /localize
    found = []  # (where, text) of everything a visitor reads

    def read(where, response):
        response.raise_for_status()
        found.append((where, response.text))
        return response

    def look_inside(url):
        name = url.rsplit("/", 1)[1]
        if name.endswith(".zip"):
            with zipfile.ZipFile(io.BytesIO(http.get(url).content)) as packed:
                found.extend((f"{name}:{member}", packed.read(member).decode("latin-1"))
                             for member in packed.namelist())
        elif name.endswith((".json", ".jsonl", ".txt", ".yaml", ".xml")):
            read(name, http.get(url))

    endpoints = read("info", http.get("gradio_api/info")).json()["named_endpoints"]
    read("page", http.get(""))
    read("config", http.get("config"))

    def upload(path):
        with open(path, "rb") as handle:
            (sent,) = read("upload", http.post("gradio_api/upload", files=[("files", (path.name, handle))])).json()
        return {"path": sent, "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}

    def call(api_name, *inputs):
        """The event's end, "complete" or "error", and its data; inputs left out take their defaults."""
        defaults = [p["parameter_default"] for p in endpoints[api_name]["parameters"]]
        posted = http.post(f"gradio_api/call{api_name}",
                           json={"data": [*inputs, *defaults[len(inputs):]], "session_hash": session})
        stream = read(api_name, http.get(f"gradio_api/call{api_name}/{posted.json()['event_id']}")).text
        for url in re.findall(r'"url": "([^"]+)"', stream):
            look_inside(url)
        event, data = re.findall(r"^event: (\w+)\ndata: (.*)$", stream, re.M)[-1]
        return event, json.loads(data)

    def succeeds(api_name, *inputs):
        event, data = call(api_name, *inputs)
        assert event == "complete", (api_name, data)
        return data

    def fails(message, api_name, *inputs):
        event, data = call(api_name, *inputs)
        assert event == "error" and isinstance(data, dict) and message in str(data["error"]), (api_name, data)

    def localize(photo, choice="default"):
        """A /localize call's endpoint and inputs."""
        return "/localize", upload(photo), choice, 2, 0.2, False, 0.5, 288, False, True

    checkpoint = save_checkpoint(cam.load_model("timm:test_resnet", pretrained=False, device="cpu"),
                                 server["checkpoints"], {}, {}).name
    bad = tmp_path / "broken.jpg"
    bad.write_text("not an image at all")
    rotated = tmp_path / "rotated.jpg"
    rotated.write_bytes(jpeg_bytes(np.full((40, 80, 3), 128, np.uint8), exif_orientation=6))
    broken_zip = tmp_path / "holiday.zip"
    broken_zip.write_bytes(b"not a zip")
    bundle = tmp_path / "bundle.zip"
    with zipfile.ZipFile(bundle, "w") as archive:
        archive.write(EXAMPLES / "coffee.png", "kitchen/coffee.png")
        archive.writestr("kitchen/broken.jpg", b"not a photo")

    assert succeeds(*localize(EXAMPLES / "coffee.png", checkpoint))[4]["model"] == checkpoint  # its menu name
    fails("not an image this app can read", *localize(bad))
    assert [succeeds(*localize(rotated))[4][side] for side in ("width", "height")] == [40, 80]
    fails("unknown model '../../etc'", *localize(EXAMPLES / "coffee.png", "../../etc"))
    fails("unknown model", *localize(EXAMPLES / "coffee.png", str(server["checkpoints"] / checkpoint)))
    succeeds(*localize(EXAMPLES / "chelsea.png", checkpoint))
    succeeds("/rerender", 0.5, True, 0.5)
    assert len(succeeds("/downloads", 0.5)[0]) == 4
    succeeds("/compare", upload(EXAMPLES / "coffee.png"), "default", "cam", False, checkpoint, "gradcam", True, 2)
    fails("not an image this app can read", "/compare", upload(bad), "default", "cam", False, "default", "cam", False, 2)
    assert "Labelled **2** photos" in succeeds("/label", [upload(f) for f in (EXAMPLES / "chelsea.png", bundle, bad)],
                                               "default", 1, 0.0, 0.2)[0]
    fails("holiday.zip", "/label", [upload(broken_zip)], "default", 1, 0.0, 0.2)
    fails("None of the 1 photos could be read: broken.jpg", "/label", [upload(bad)], "default", 1, 0.0, 0.2)
    fails("not a readable zip archive", "/train", upload(broken_zip), "head", 1, 0.01, 0.2)
    colours = upload(dataset_zip(tmp_path / "colours.zip", per_class=3))
    assert "Done" in succeeds("/train", colours, "head", 1, 0.01, 0.34)[0]
    succeeds("/checkpoint_archive", checkpoint)
    fails("Choose a fine-tuned checkpoint in the model menu", "/checkpoint_archive", "no-such-checkpoint")
    succeeds("/models")

    searched = {where.partition(":")[0] for where, _ in found}
    assert {"page", "config", "upload", "boxes.json", "labels.zip", f"{checkpoint}.zip"} <= searched, searched
    cut = [(where, text.replace(str(cache), "<cache>").replace(str(cache.resolve()), "<cache>"))
           for where, text in found]
    assert any("<cache>" in text for where, text in cut if where == "config")  # the examples: the cut was needed
    leaks = [(where, folder, text[max(text.find(folder) - 80, 0):text.find(folder) + 80])
             for where, text in cut for folder in folders if folder in text]
    assert not leaks, leaks


def test_api_localize_takes_boxes_from_the_detector_or_the_maps(server, tmp_path):
    from gradio_client import handle_file

    from cam.train import Recipe, train

    import torch

    torch.manual_seed(0)  # the random backbone draws from the global generator
    summary = train(dataset_zip(tmp_path / "colours.zip"), Recipe(model="timm:test_resnet", pretrained=False, epochs=2,
                                                                  input_size=64, detector=True, detector_epochs=10),
                    out=server["checkpoints"])
    name = Path(summary["checkpoint"]).name
    client = _client(server)
    photo = handle_file(str(EXAMPLES / "coffee.png"))
    try:
        runs = {boxes: client.predict(photo, name, 3, 0.2, False, 0.5, 288, False, True, "auto", False, boxes,
                                      api_name="/localize")[4] for boxes in ("auto", "both", "detector", "cam")}
        assert runs["auto"]["box_source"] == runs["both"]["box_source"] == "both"  # no reviewed photo chose
        assert runs["auto"]["predictions"] == runs["both"]["predictions"] and runs["detector"]["box_source"] == "detector"
        assert all(len(p["box_scores"]) == len(p["boxes"]) for p in runs["detector"]["predictions"])
        assert sum(len(p["boxes"]) for p in runs["detector"]["predictions"]) >= 1
        assert runs["cam"]["box_source"] == "cam" and all(len(p["boxes"]) == 1 and "box_scores" not in p
                                                          for p in runs["cam"]["predictions"])
        with pytest.raises(AppError, match="has no detector: train one with `cam train DATA --detector`"):
            client.predict(photo, "default", 3, 0.2, False, 0.5, 288, False, True, "auto", False, "detector",
                           api_name="/localize")
    finally:
        shutil.rmtree(summary["checkpoint"])
