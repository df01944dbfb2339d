import json
import re
import subprocess
import sys
from dataclasses import fields, replace

import pytest

import cam

from .conftest import EXAMPLES, ROOT

pytestmark = pytest.mark.slow  # each test runs the CLI in processes of its own


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "cam", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def run_cli_in_terminal(*args) -> tuple[int, str, str]:
    """Run the CLI with its stderr on a pseudo-terminal, as for a person at one: (exit code, stdout,
    everything the terminal showed). Skips where the machine has no pseudo-terminals."""
    import os
    import pty

    try:
        leader, follower = pty.openpty()
    except OSError as exc:
        pytest.skip(f"no pseudo-terminal on this machine ({exc})")
    proc = subprocess.Popen([sys.executable, "-m", "cam", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=follower,
                            text=True)
    os.close(follower)
    stdout, _ = proc.communicate(timeout=300)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    return proc.returncode, stdout, seen.decode()


def test_localize_good_and_bad_images(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_text("not an image")
    out = tmp_path / "out"
    proc = run_cli("localize", str(EXAMPLES / "chelsea.png"), str(bad), str(EXAMPLES / "coffee.png"),
                   "--topk", "2", "--out", str(out), "--device", "cpu")
    assert proc.returncode == 1
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [line["image"].split("/")[-1] for line in lines] == ["chelsea.png", "coffee.png"]
    assert lines[1]["predictions"][0]["label"] == "espresso" and lines[1]["refined"] is True
    assert proc.stderr.strip().splitlines() == [f"error: {bad}: not a supported image (expected JPEG, PNG, BMP, GIF, WebP or TIFF)"]
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "chelsea.json", "chelsea_boxes.png", "chelsea_overlay.png", "coffee.json", "coffee_boxes.png", "coffee_overlay.png"]


def test_folder_is_walked_and_bad_model_is_one_line(tmp_path):
    proc = run_cli("localize", str(EXAMPLES), "--topk", "1", "--all-boxes")
    assert proc.returncode == 0
    assert len(proc.stdout.splitlines()) == len([p for p in EXAMPLES.iterdir() if p.suffix in (".png", ".jpg")])
    proc = run_cli("localize", str(EXAMPLES / "chelsea.png"), "--model", "timm:resnet5")
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "timm:resnet50" in proc.stderr


def test_a_reader_that_stops_early_ends_the_run_quietly():
    proc = subprocess.Popen([sys.executable, "-m", "cam", "localize", str(EXAMPLES), "--topk", "1"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()  # like `| head -1`: read one line, then close the pipe
    proc.stdout.close()
    stderr = proc.stderr.read()
    assert json.loads(first)["predictions"] and proc.wait(timeout=300) == 141
    assert stderr == "", stderr


def test_a_terminal_gets_a_progress_bar_and_error_lines_stay_whole(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_text("not an image")
    returncode, stdout, screen = run_cli_in_terminal("localize", str(EXAMPLES / "chelsea.png"), str(bad),
                                                     str(EXAMPLES / "coffee.png"), "--topk", "1")
    assert returncode == 1 and len(stdout.splitlines()) == 2
    assert "localize [" + "#" * 30 + "] 3/3" in screen
    assert f"\r\x1b[Kerror: {bad}: not a supported image" in screen  # the bar's line cleared first


def test_no_refine_and_plain_give_the_exact_cams():
    for flags in (["--no-refine"], ["--plain"]):
        proc = run_cli("localize", str(EXAMPLES / "coffee.png"), "--topk", "1", *flags)
        assert proc.returncode == 0 and json.loads(proc.stdout)["refined"] is False, proc.stderr


def test_best_sets_its_options_and_each_flag_still_overrides():
    from cam.__main__ import _cam_settings, build_parser

    def settings(*flags):
        return _cam_settings(build_parser().parse_args(["localize", "x.png", *flags]))

    assert settings("--best") == cam.BEST and settings() == cam.RECOMMENDED and settings("--plain") == cam.PLAIN
    assert settings("--best", "--no-adapt", "--input-size", "320") == replace(cam.BEST, adapt=False, input_size=320)
    assert settings().adapt is False and settings("--adapt").adapt is True
    assert settings("--input-size", "0").input_size is None and settings("--classes", "ant,7").classes == ("ant", 7)
    proc = run_cli("localize", str(EXAMPLES / "coffee.png"), "--plain", "--best")
    assert proc.returncode == 2 and "not allowed with argument" in proc.stderr


def test_bad_parameter_is_one_line():
    proc = run_cli("localize", str(EXAMPLES / "chelsea.png"), "--threshold", "2")
    assert proc.returncode == 2 and "threshold" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("localize", str(EXAMPLES / "chelsea.png"), "--input-size", "5")  # checked before any batch
    assert proc.returncode == 2 and proc.stdout == "" and proc.stderr.strip().splitlines() == [
        "error: input_size must be an integer between 32 and 1024 (or None), got 5"]
    import torch

    gpus = torch.cuda.device_count()
    proc = run_cli("localize", str(EXAMPLES / "chelsea.png"), "--device", f"cuda:{gpus}")
    assert proc.returncode == 2 and proc.stdout == "" and proc.stderr.strip().splitlines() == [
        f"error: device 'cuda:{gpus}' is not here: this machine has {gpus} CUDA GPU(s)"]


def test_hostile_images_each_get_one_line_and_the_rest_is_done(tmp_path):
    import numpy as np

    from .images import hostile_files

    photo = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    names = []
    for name, data in hostile_files(photo).items():
        (tmp_path / name).write_bytes(data)
        names.append(str(tmp_path / name))
    proc = run_cli("localize", *names, str(EXAMPLES / "coffee.png"), "--topk", "1")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == len(names) and all(line.startswith("error: ") for line in errors)
    assert [json.loads(line)["predictions"][0]["label"] for line in proc.stdout.splitlines()] == ["espresso"]


def _docs() -> str:
    return (ROOT / "README.md").read_text() + "".join(p.read_text() for p in sorted((ROOT / "docs").glob("*.md")))


def test_the_settings_options_are_built_from_the_settings_and_every_option_is_documented():
    from cam.__main__ import build_parser

    from cam.methods import METHODS
    from cam.settings import METHOD_NAMES

    assert METHOD_NAMES == ("auto", *METHODS)  # the settings' choices are the registry's names
    commands = build_parser()._subparsers._group_actions[0].choices
    evaluate_skips = {"topk", "classes", "min_score", "all_regions"}
    for name, parser in commands.items():
        dests = {action.dest for action in parser._actions}
        if name not in ("train", "app"):
            expected = {f.name for f in fields(cam.Settings)} - (evaluate_skips if name == "evaluate" else set())
            assert expected <= dests, (name, expected - dests)
        undocumented = [action.option_strings[0] for action in parser._actions
                        if action.option_strings and action.option_strings[0] != "-h"
                        and action.option_strings[0] not in _docs()]
        assert not undocumented, (name, undocumented)


def test_every_option_the_readme_shows_exists():
    from cam.__main__ import build_parser

    known = {flag for parser in build_parser()._subparsers._group_actions[0].choices.values()
             for action in parser._actions for flag in action.option_strings}
    usage = [line for line in (ROOT / "README.md").read_text().splitlines()
             if line.lstrip().startswith(("python -m cam", "[", "SETTINGS:"))]
    shown = {flag.split("/")[0] for line in usage for flag in re.findall(r"--[a-z][a-z-]*(?:/--[a-z-]+)?", line)}
    assert shown and shown <= known, shown - known


def test_the_readme_python_example_runs_as_pasted(monkeypatch):
    text = (ROOT / "README.md").read_text()
    block = text.split("## Python\n\n```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(ROOT)
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)  # offline, the bundled model, the example photos
    assert namespace["p"].label and namespace["result"].predictions[0].boxes


def test_a_two_class_checkpoint_localizes_both_classes_by_default(tmp_path):
    from cam.checkpoint import save_checkpoint
    from cam.train import _replace_classifier

    model = cam.load_model("timm:test_resnet", pretrained=False, device="cpu")
    _replace_classifier(model, 2)
    model.class_names = ["ants", "bees"]
    folder = save_checkpoint(model, tmp_path, {}, {})
    proc = run_cli("localize", str(EXAMPLES / "coffee.png"), "--model", str(folder))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p["label"] for p in json.loads(proc.stdout)["predictions"]) == ["ants", "bees"]
    proc = run_cli("localize", str(EXAMPLES / "coffee.png"), "--model", str(folder), "--topk", "3")
    assert proc.returncode == 2 and "topk must be between 1 and 2, got 3" in proc.stderr  # an explicit value stays checked


def test_hub_names_take_no_pretrained_and_errors_name_the_flag():
    proc = run_cli("localize", str(EXAMPLES / "coffee.png"), "--model", "timm:test_resnet", "--no-pretrained", "--topk", "1")
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("localize", str(EXAMPLES / "coffee.png"), "--model", "timm:test_resnet")
    last = proc.stderr.strip().splitlines()[-1]  # before it, the hub client's own retry warnings
    assert proc.returncode == 2 and last.startswith("error: ") and "--no-pretrained" in last


def test_train_help_states_the_input_size_each_mode_really_defaults_to(monkeypatch):
    import cam.train
    from cam.__main__ import build_parser
    from cam.train import Recipe

    proc = run_cli("train", "--help")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    option = text.rsplit("--input-size INPUT_SIZE", 1)[1].split(" --", 1)[0]  # its help (the first is the usage's)
    head, full = (Recipe(mode=mode).resolved().input_size for mode in ("head", "full"))
    assert head and full and "model's own" not in option
    assert (f"(default {head} in both modes)" if head == full else f"(default {head} (head) or {full} (full))") in option
    monkeypatch.setattr(cam.train, "DEFAULT_INPUT_SIZE", {"head": 288, "full": 224})  # the help follows the defaults
    train_help = " ".join(build_parser()._subparsers._group_actions[0].choices["train"].format_help().split())
    assert "(default 288 (head) or 224 (full))" in train_help
