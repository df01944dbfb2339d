"""The models a server shares: loaded once, lazily, by menu choice, kept in one small LRU."""

from __future__ import annotations

import collections
import contextlib
import os
import socket
import threading
from dataclasses import replace
from pathlib import Path

from ..localize import Result, localize
from ..loading import load_model
from ..models import DEFAULT_SPEC, CamModel, check_hub_spec
from ..runtime import check_runtime
from ..settings import Settings


ROOT = Path(__file__).resolve().parents[2]  # the repository, in a checkout
CHECKOUT = (ROOT / "app.py").is_file() and (ROOT / "cam").is_dir()
# Fine-tuned checkpoints: the repository's checkpoints/ in a checkout, ./checkpoints where installed.
CHECKPOINTS = Path(os.environ.get("CAM_CHECKPOINTS", ROOT / "checkpoints" if CHECKOUT else Path.cwd() / "checkpoints"))
EXAMPLES = ROOT / "examples" if CHECKOUT else Path(__file__).resolve().parents[1] / "examples"  # the wheel's cam/examples


def is_checkpoint(folder: Path) -> bool:
    """A complete checkpoint folder: visible name, both files present (half-written ones are hidden)."""
    return (folder.is_dir() and not folder.name.startswith(".")
            and (folder / "config.json").is_file() and (folder / "model.safetensors").is_file())


class ModelCache:
    """Models by menu choice, each loaded once, lazily, and shared by all requests.

    Menu choices are 'default' and the names of complete checkpoint folders under `checkpoints`.
    A typed 'timm:NAME' or 'torchvision:NAME' loads with its hub weights (where the machine reaches
    the hub, as on Spaces). Anything else, a path included, is refused. Every kind shares one LRU of
    `max_models` models (a visitor can name hundreds of hub models, a server can hold many
    checkpoints). Each model loads under a lock of its own: a slow download delays only the
    requests for that model; at most LOADS_AT_ONCE hub models download at once, and 'default' and
    checkpoints never wait for them. Models load on `runtime` (default: the CAM_RUNTIME environment
    variable, else "auto").
    """

    def __init__(self, checkpoints: Path = CHECKPOINTS, device: str | None = None, max_models: int = 4,
                 runtime: str | None = None):
        self.checkpoints = Path(checkpoints)
        self.device = device
        self.runtime = check_runtime(runtime or os.environ.get("CAM_RUNTIME", "auto"))  # what runs the networks
        if max_models < 1:
            raise ValueError(f"max_models must be at least 1, got {max_models!r}")
        self.max_models = max_models
        self._models: collections.OrderedDict[tuple[str, int], CamModel] = collections.OrderedDict()
        # A lock per model being loaded, with the requests holding or awaiting it: kept until the last leaves.
        self._loading: dict[tuple[str, int], _Loading] = {}
        self._lock = threading.Lock()  # guards both dicts; held only for lookups
        self._downloads = threading.BoundedSemaphore(LOADS_AT_ONCE)  # distinct hub models load in parallel, this many

    def choices(self) -> list[str]:
        found = sorted(p.name for p in self.checkpoints.iterdir() if is_checkpoint(p)) if self.checkpoints.is_dir() else []
        return [DEFAULT_SPEC] + found

    def get(self, choice: str) -> CamModel:
        choice = str(choice or "").strip()
        listed = choice in self.choices()
        if not listed and not choice.startswith(("timm:", "torchvision:")):
            raise ValueError(f"unknown model {choice!r}: choose 'default' or a checkpoint listed in the menu, "
                             "or type timm:NAME or torchvision:NAME")
        key = self._key(choice)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            loading = self._loading.setdefault(key, _Loading())
            loading.requests += 1
        try:
            with loading.lock:  # a second request for the same model waits for the first's load (or retries it)
                with self._lock:
                    if key in self._models:
                        self._models.move_to_end(key)
                        return self._models[key]
                with contextlib.nullcontext() if listed else self._downloads:
                    model = self._load(choice, listed)
                with self._lock:
                    for old in [k for k in self._models if k[0] == choice]:  # a checkpoint since written again
                        del self._models[old]
                    self._models[key] = model
                    while len(self._models) > self.max_models:  # least recently used first
                        self._models.popitem(last=False)
                return model
        finally:
            with self._lock:
                loading.requests -= 1
                if not loading.requests:
                    del self._loading[key]

    def _load(self, choice: str, listed: bool) -> CamModel:
        if choice == DEFAULT_SPEC:
            return load_model(DEFAULT_SPEC, device=self.device, runtime=self.runtime)
        if listed:
            model = load_model(str(self.checkpoints / choice), device=self.device, runtime=self.runtime)
            model.spec = choice  # its menu name, not the server's path: results and downloads carry it
            return model
        check_hub_spec(choice)
        _check_reachable(HUB_HOSTS[choice.partition(":")[0]], choice)
        return load_model(choice, pretrained=True, device=self.device, runtime=self.runtime)

    def _key(self, choice: str) -> tuple[str, int]:
        """A checkpoint is known by its name and its weights file's modification time: one trained again
        under a name that was deleted is loaded afresh."""
        weights = self.checkpoints / choice / "model.safetensors"
        return choice, weights.stat().st_mtime_ns if choice != DEFAULT_SPEC and weights.is_file() else 0


class _Loading:
    """A model's load lock and the requests holding or awaiting it (it goes when the last leaves)."""

    def __init__(self):
        self.lock, self.requests = threading.Lock(), 0


LOADS_AT_ONCE = 2  # hub models loading at once (each a download and its memory), beyond the `max_models` kept
HUB_HOSTS = {"timm": "huggingface.co", "torchvision": "download.pytorch.org"}  # where typed models' weights come from


def _check_reachable(host: str, choice: str) -> None:
    """A quick look for the hub before a download, whose own retries take a minute to fail offline."""
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError:
        raise ValueError(f"{choice!r} needs its pretrained weights from {host}, which this server cannot reach; "
                         "choose 'default' or a fine-tuned checkpoint from the menu") from None


def analyze(cache: ModelCache, choice: str, image, settings: Settings) -> Result:
    """Run the model once on `image` (a path or array) at `settings`, its top-k at most the model's
    class count, and keep every map for later re-boxing."""
    model = cache.get(choice)
    if settings.topk is not None:
        settings = replace(settings, topk=min(settings.topk, len(model.class_names)))
    return localize(model, image, settings)
