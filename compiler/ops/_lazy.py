"""`torch` and `torch.nn.functional`, imported on first use.

Compiling a spec (parse, check, shapes, summary) never touches torch, so `dlc check`
and `dlc compile` answer quickly; only running an op's reference forward imports it.
"""
from __future__ import annotations

import importlib


class _LazyModule:
    def __init__(self, name: str):
        self._name = name
        self._mod = None

    def __getattr__(self, attr):
        if self._mod is None:
            self._mod = importlib.import_module(self._name)
        return getattr(self._mod, attr)


torch = _LazyModule("torch")
F = _LazyModule("torch.nn.functional")
