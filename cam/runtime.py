"""How the network runs for inference: PyTorch, or OpenVINO's compiled CPU runtime.

`OpenVinoRunner` converts the network once per input size (the batch stays dynamic; through an
ONNX export) into a model whose outputs are the logits, the feature map entering the pooling and
the guide map of `refine`, compiles it for the CPU in float32 and keeps a few sizes. Converted models are cached on disk,
keyed by the weights' SHA-256 and the size, so a new process compiles in a fraction of a second.
Sizes are compiled one by one because some networks' padding depends on the input size (timm's
"same" padding is computed in Python and traced as constants).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import functools
import importlib.util
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
    """`runner(batch) -> (logits, features, guide or None)` as float32 tensors, from OpenVINO.

    Thread-safe: each call gets its own infer request; compiling a new size happens once, under a lock.
    """

    name = "openvino"

    def __init__(self, model):
        self.model = model
        self.digest = model.weights_digest()
        self._compiled: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        compiled = self._compiled_for(tuple(batch.shape[2:]))
        outputs = compiled.create_infer_request().infer({0: batch.detach().cpu().contiguous().numpy()})
        values = [torch.from_numpy(outputs[port]) for port in compiled.outputs]
        return values[0], values[1], values[2] if len(values) > 2 else None

    def _compiled_for(self, size: tuple[int, int]):
        with self._lock:
            if size in self._compiled:
                self._compiled.move_to_end(size)
                return self._compiled[size]
            import openvino as ov

            path = CACHE / f"{self.digest[:32]}_{size[0]}x{size[1]}.xml"
            core = ov.Core()
            if path.is_file():
                converted = core.read_model(path)
            else:
                with tempfile.TemporaryDirectory(prefix="cam-onnx-") as scratch:
                    converted = ov.convert_model(export_onnx(self.model, size, Path(scratch) / "model.onnx"))
                    _save_atomically(ov, converted, path)
            compiled = core.compile_model(converted, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
            self._compiled[size] = compiled
            while len(self._compiled) > SIZES_KEPT:
                self._compiled.popitem(last=False)
            return compiled

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
    A cache that cannot be written is skipped: the model is converted again in the next process."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{os.getpid()}.{threading.get_ident()}.{path.name}")
        ov.save_model(converted, temp, compress_to_fp16=False)
        os.replace(temp.with_suffix(".bin"), path.with_suffix(".bin"))
        os.replace(temp, path)
    except OSError:
        pass
