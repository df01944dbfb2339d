"""The installable package: a wheel built from the checkout installs apart from it and runs `cam`
offline from another folder; its dependencies are those of requirements.txt."""

import json
import os
import shutil
import subprocess
import sys
import tomllib

import pytest

from .conftest import EXAMPLES, ROOT

pytestmark = pytest.mark.slow  # builds and installs the wheel


def _requirements(name: str) -> set[str]:
    return {line.split("#")[0].strip() for line in (ROOT / name).read_text().splitlines()
            if line.split("#")[0].strip() and not line.startswith("-r")}


def test_the_package_needs_what_requirements_txt_lists():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert set(project["dependencies"]) | set(extras["fast"]) == _requirements("requirements.txt")
    assert set(extras["scale"]) == _requirements("requirements-scale.txt")
    assert project["scripts"]["cam"] == "cam.__main__:main"


def test_the_wheel_installs_apart_from_the_checkout_and_runs_cam_offline(tmp_path):
    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info beside the sources
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__",
                                                                 "test-artifacts", "checkpoints", "*.pyi"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                            "-q", "-w", str(tmp_path / "wheels")], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next((tmp_path / "wheels").glob("cam_localizer-*.whl"))
    site = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                                str(wheel)], capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr[-2000:]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    photo = shutil.copy(EXAMPLES / "coffee.png", elsewhere / "coffee.png")
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "NO_PROXY": "*"}

    def run(*args):
        return subprocess.run(args, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)

    where = run(sys.executable, "-c", "import cam, cam.service; print(cam.__file__); print(cam.service.EXAMPLES)")
    assert where.returncode == 0, where.stderr
    module, examples = where.stdout.split()
    assert module.startswith(str(site)) and sorted(os.listdir(examples))[:2] == ["README.md", "astronaut.png"]
    answer = run(str(site / "bin" / "cam"), "localize", str(photo), "--topk", "1")
    assert answer.returncode == 0, answer.stderr
    assert json.loads(answer.stdout)["predictions"][0]["label"] == "espresso"
    assert "app" in run(str(site / "bin" / "cam"), "--help").stdout
