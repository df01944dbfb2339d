"""How the network runs for inference: PyTorch, or OpenVINO's compiled CPU runtime.

`OpenVinoRunner` converts the network once per input size (the batch stays dynamic; through an
ONNX export) into a model whose outputs are the logits, the feature map entering the pooling and
the guide map of `refine`, compiles it for the CPU in float32 and keeps a few sizes. Converted models are cached on disk,
keyed by the weights' SHA-256, the runtime's version, the output layers and the size, so a new process
compiles in a fraction of a second.
Sizes are compiled one by one because some networks' padding depends on the input size (timm's
"same" padding is computed in Python and traced as constants).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import functools
import hashlib
import importlib.util
import logging
import os
import platform
import tempfile
import threading
import warnings
from pathlib import Path

import torch
from torch import nn

from .extractor import FeatureExtractor

RUNTIMES = ("auto", "torch", "openvino")
CACHE = Path(os.environ.get("CAM_RUNTIME_CACHE", Path.home() / ".cache" / "cam-localizer" / "openvino"))
SIZES_KEPT = 4  # compiled input sizes per model
MMAP_THRESHOLD = 64 << 20  # blocks from this size up are mapped from the system anew (glibc's default: 128 KB, rising)
TRIM_THRESHOLD = 256 << 20  # free memory kept at the top of the heap before it goes back to the system
_EXPORTING = threading.Lock()  # torch.onnx.export keeps process-wide state: one export (and conversion) at a time


@functools.cache
def steady_allocator() -> bool:
    """On glibc, fix malloc's thresholds once per process (`MMAP_THRESHOLD`, `TRIM_THRESHOLD`); False elsewhere.

    glibc maps every block over its mmap threshold from the system and unmaps it on free, and moves
    the threshold as blocks come and go. Which way it has moved decides whether a forward pass's
    activations (1-30 MB each) reuse freed memory or fault in fresh pages: PyTorch's Lite0 forward
    of 3 photos at 288 px took 25 or 43 ms from one process to the next, and could switch within a
    process. With the thresholds fixed it took 25 ms in every process (docs/experiments.md).
    """
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    return glibc_mallopt(m_mmap_threshold, MMAP_THRESHOLD) and glibc_mallopt(m_trim_threshold, TRIM_THRESHOLD)


def glibc_mallopt(parameter: int, value: int) -> bool:
    """Set one of glibc malloc's parameters (`mallopt`, malloc.h's M_* numbers); False where the C
    library is not glibc or refuses the value."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(parameter, value))
    except OSError:
        return False


@contextlib.contextmanager
def torch_yields_threads():
    """The calling thread's PyTorch ops run on one thread while inside; its count comes back after
    (PyTorch's OpenMP thread count is the calling thread's own; other threads keep theirs, but one
    whose first parallel op falls inside starts with one thread, PyTorch's default then). Around
    a compiled runtime's calls: OpenVINO's threads and PyTorch's OpenMP threads each spin a while
    after their work, and alternating within a call they slow each other, as OpenVINO's documentation
    warns ("Composability of different threading runtimes", which recommends torch.set_num_threads).
    Measured: `localize` 14.8 -> 12.3 ms on a 1 MP photo, 65.7 -> 57.6 ms on 12 MP, on 2 cores
    (README, "Compiled CPU runtime")."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


_FULL_FLOAT32 = threading.Lock()
_float32_users = {"count": 0, "saved": True}  # threads inside `full_float32`, and the flag they found


@contextlib.contextmanager
def full_float32(device: torch.device):
    """cuDNN's convolutions in full float32 (TF32 off) while inside, on CUDA; nothing elsewhere.
    cuDNN's default TF32 moved Lite0's maps by up to 0.5% of their peak on an H200 and a box edge
    by 29 px; in float32 the GPU's maps and boxes are the CPU's (tests/test_cuda.py). The flag is
    PyTorch's, for the whole process: the caller's value comes back when the last thread inside
    leaves, and other threads' convolutions meanwhile also run in float32."""
    if device.type != "cuda":
        yield
        return
    with _FULL_FLOAT32:
        if _float32_users["count"] == 0:
            _float32_users["saved"] = torch.backends.cudnn.allow_tf32
            torch.backends.cudnn.allow_tf32 = False
        _float32_users["count"] += 1
    try:
        yield
    finally:
        with _FULL_FLOAT32:
            _float32_users["count"] -= 1
            if _float32_users["count"] == 0:
                torch.backends.cudnn.allow_tf32 = _float32_users["saved"]


def run_compiled(model, x: torch.Tensor):
    """The compiled runtime's (logits, features, guide) for the batch `x`, or None where PyTorch must
    run it: the model has no compiled runner, the runner cannot run this input size (it says so
    by returning None, and keeps to PyTorch for that size only), or this call failed. A failed
    call is this call's alone, run again on PyTorch and logged; the next call tries the runtime again."""
    runner = model.runner
    if runner is None:
        return None
    try:
        return runner(x)
    except Exception as exc:  # a call's failure can be any error; that call still gets its answer
        logging.getLogger("cam.runtime").warning("%s failed on a batch of %s (%s: %s); this batch runs on PyTorch",
                                                 model.runtime, model.spec, type(exc).__name__, _first_line(exc))
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def check_runtime(runtime: str) -> str:
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    return runtime


def openvino_available() -> bool:
    """Whether the openvino package, and onnx for the export it converts, are installed (found, not
    imported: openvino's import takes a second)."""
    return all(importlib.util.find_spec(name) is not None for name in ("openvino", "onnx"))


class _Outputs(nn.Module):
    """The network with the maps that CAM needs as outputs: (logits, features, guide input)."""

    def __init__(self, model):
        super().__init__()
        self.net = model.net  # registered, so that tracing sees the weights as parameters
        self.feature_module, self.guide_module = model.feature_module, model.guide_module

    def forward(self, x):
        guide = FeatureExtractor(self.guide_module, inputs=True, detach=False) if self.guide_module is not None else None
        with FeatureExtractor(self.feature_module, detach=False) as features:
            if guide is None:
                return self.net(x), features.features
            with guide:
                logits = self.net(x)
            return logits, features.features, guide.features


class OpenVinoRunner:
    """`runner(batch) -> (logits, features, guide or None)` as float32 tensors from OpenVINO, or None
    for an input size it cannot convert or compile: that size runs on PyTorch from then on (logged
    once), every other size keeps the compiled runtime.

    Thread-safe: each call gets its own infer request. A size is converted once, under a lock of
    its own: requests for sizes already compiled never wait on a conversion. Exports run one at a
    time in the process (`torch.onnx.export` is not thread-safe); compiling runs in parallel.
    """

    name = "openvino"

    def __init__(self, model):
        self.model = model
        self.digest = model.weights_digest()
        self._compiled: collections.OrderedDict = collections.OrderedDict()
        self._unconvertible: set[tuple[int, int]] = set()
        self._converting: dict[tuple[int, int], threading.Lock] = {}
        self._lock = threading.Lock()  # guards the three above; held only for lookups

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
        compiled = self._compiled_for(tuple(batch.shape[2:]))
        if compiled is None:
            return None
        outputs = compiled.create_infer_request().infer({0: batch.detach().cpu().contiguous().numpy()})
        values = [torch.from_numpy(outputs[port]) for port in compiled.outputs]
        return values[0], values[1], values[2] if len(values) > 2 else None

    def _compiled_for(self, size: tuple[int, int]):
        """The model compiled at `size`, converted now if need be; None where it cannot be."""
        with self._lock:
            if size in self._compiled:
                self._compiled.move_to_end(size)
                return self._compiled[size]
            if size in self._unconvertible:
                return None
            converting = self._converting.setdefault(size, threading.Lock())
        with converting:  # one conversion per size; a second request for it waits for the first
            with self._lock:
                if size in self._compiled or size in self._unconvertible:
                    return self._compiled.get(size)
            try:
                compiled = self._convert(size)
            except Exception as exc:  # a converter's failure can be any error
                logging.getLogger("cam.runtime").warning(
                    "%s cannot convert %s at %dx%d (%s: %s); that input size runs on PyTorch", self.name,
                    self.model.spec, *size, type(exc).__name__, _first_line(exc))
                compiled = None
            with self._lock:
                if compiled is None:
                    self._unconvertible.add(size)
                else:
                    self._compiled[size] = compiled
                    while len(self._compiled) > SIZES_KEPT:
                        self._compiled.popitem(last=False)
                self._converting.pop(size, None)
            return compiled

    def _convert(self, size: tuple[int, int]):
        """The model converted (or read from the disk cache) and compiled for the CPU at `size`."""
        import openvino as ov

        path = self.cache_path(size, ov.__version__)
        core = ov.Core()
        converted = None
        if path.is_file():
            try:
                converted = core.read_model(path)
            except Exception:  # a damaged cache: OpenVINO raises its own errors
                logging.getLogger("cam.runtime").warning("cannot read the cached model %s; converting it again", path)
                for damaged in (path, path.with_suffix(".bin")):
                    damaged.unlink(missing_ok=True)
        if converted is None:
            with tempfile.TemporaryDirectory(prefix="cam-onnx-") as scratch, _EXPORTING:
                converted = ov.convert_model(export_onnx(self.model, size, Path(scratch) / "model.onnx"))
            _save_atomically(ov, converted, path)
        return core.compile_model(converted, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})

    def cache_path(self, size: tuple[int, int], version: str) -> Path:
        """Where the model converted at `size` is kept: named by the weights' digest and by what else
        decides the converted model (the runtime's version, the layers whose maps are outputs)."""
        made_by = f"openvino {version}|{self.model.feature_layer}|{self.model.guide_layer}"
        return CACHE / f"{self.digest[:32]}_{hashlib.sha256(made_by.encode()).hexdigest()[:12]}_{size[0]}x{size[1]}.xml"


def export_onnx(model, size: tuple[int, int], path: Path) -> Path:
    """`model`'s network at `size`, with a dynamic batch and the outputs of `_Outputs`, as an ONNX
    file: through ONNX, converting and compiling Lite0 takes about 1 s, against 2.4 s converting
    the traced network directly."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracing's warnings about Python values turned constants
        torch.onnx.export(_Outputs(model).eval(), (torch.zeros(1, 3, *size),), str(path),
                          input_names=["x"], dynamic_axes={"x": {0: "batch"}}, opset_version=17, dynamo=False)
    return path


def _save_atomically(ov, converted, path: Path) -> None:
    """Write the IR (.xml + .bin) under temporary names, then rename both: a reader never sees half of one.
    A cache that cannot be written (any error: OpenVINO raises its own) is skipped and logged: the
    model is converted again in the next process."""
    temp = path.with_name(f".{os.getpid()}.{threading.get_ident()}.{path.name}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        ov.save_model(converted, temp, compress_to_fp16=False)
        os.replace(temp.with_suffix(".bin"), path.with_suffix(".bin"))
        os.replace(temp, path)
    except Exception as exc:
        logging.getLogger("cam.runtime").warning("cannot cache the converted model in %s (%s: %s)", path.parent,
                                                 type(exc).__name__, _first_line(exc))
        for leftover in (temp, temp.with_suffix(".bin")):
            leftover.unlink(missing_ok=True)
