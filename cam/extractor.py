"""Forward hooks that capture a feature map and never outlive the `with` block that made them."""

from __future__ import annotations

import threading

import torch
from torch import nn


class FeatureExtractor:
    """Capture the output of one submodule (with `inputs=True`, its first input) during forward passes.

    Use as a context manager: the hook is registered on entry and removed on exit, also when the
    body raises. The captured tensor is detached, so no autograd graph is kept alive by it, unless
    `detach=False` (the gradient methods differentiate through it). Only forward passes run by the
    thread that entered are captured, so requests that share a model in other threads never swap
    feature maps.
    """

    def __init__(self, module: nn.Module, inputs: bool = False, detach: bool = True):
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        self.module = module
        self.inputs = inputs
        self.detach = detach
        self.features: torch.Tensor | None = None
        self._handle = None
        self._thread = threading.get_ident()

    def _hook(self, _module, inputs, output=None):
        if threading.get_ident() == self._thread:
            captured = inputs[0] if self.inputs else output
            self.features = captured.detach() if self.detach else captured

    def __enter__(self) -> "FeatureExtractor":
        self._thread = threading.get_ident()
        register = self.module.register_forward_pre_hook if self.inputs else self.module.register_forward_hook
        self._handle = register(self._hook)
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove_hooks()

    def remove_hooks(self) -> None:
        """Remove the hook; safe to call more than once."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


class ModeGuard:
    """Put a network in eval mode for a block and restore every submodule's own flag afterwards.

    A network already wholly in eval mode (the usual case) is left untouched, which keeps this
    off the per-request cost.
    """

    def __init__(self, net: nn.Module):
        self.net = net
        self._flags: list[tuple[nn.Module, bool]] = []

    def __enter__(self) -> nn.Module:
        if _any_training(self.net):
            self._flags = [(m, m.training) for m in self.net.modules()]
            self.net.eval()
        return self.net

    def __exit__(self, *exc_info) -> None:
        for module, flag in self._flags:
            module.training = flag
        self._flags = []


def _any_training(module: nn.Module) -> bool:
    """Whether `module` or any submodule is in training mode; a plain recursion over the children,
    several times faster than `nn.Module.modules()` (no names, no de-duplication set)."""
    if module.training:
        return True
    for child in module._modules.values():
        if child is not None and _any_training(child):
            return True
    return False
