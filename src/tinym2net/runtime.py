"""Device runtime: open a `.tm2` artifact in a backend and run it.

This is what runs on the device (`pip install tinym2net[runtime]`): numpy and the backends' runtimes,
never torch. Backends (`backends/`): `litert` (a TFLite flatbuffer built from the artifact's integers,
run by LiteRT with XNNPACK: the fastest on the measured machines, see the README) and `onnx` (an int8
QDQ graph for ONNX Runtime: the second, independent runtime the export stage checks against).
"""
from __future__ import annotations

import logging
import os
import time

import numpy as np

from . import tm2
from .errors import ModelFileError

log = logging.getLogger(__name__)

BACKENDS = ("litert", "onnx")
DEFAULT_BACKEND = "litert"


def backend_module(name: str):
    """The module of backend `name` (`Session`, `version`)."""
    if name == "litert":
        from .backends import litert
        return litert
    if name == "onnx":
        from .backends import ort
        return ort
    raise ValueError(f"unknown runtime backend {name!r} (choose from {', '.join(BACKENDS)})")


class Model:
    """An opened artifact: `logits(inputs)` / `predict(inputs)` on NCHW float32 arrays, any batch size."""

    def __init__(self, artifact: tm2.Artifact, session, load_seconds: float):
        self.artifact = artifact
        self.session = session
        self.backend = session.name
        self.load_seconds = load_seconds
        self.header = artifact.header
        self.modalities: list[str] = list(artifact.header["inputs"])
        self.classes: list[str] = artifact.header["classes"]
        self.input_shapes = {m: tuple(s) for m, s in artifact.header["inputs"].items()}

    def logits(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """(B, n_classes) logits for a batch given as modality -> (B, C, H, W)."""
        feed = {}
        for m in self.modalities:
            if m not in inputs:
                raise KeyError(f"missing input {m!r} (the model takes {', '.join(self.modalities)})")
            feed[m] = np.ascontiguousarray(inputs[m], dtype=np.float32)
        return self.session.run(feed)

    def predict(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Class indices (B,)."""
        return self.logits(inputs).argmax(1)


def load(path: str | os.PathLike, threads: int | None = 1, backend: str = DEFAULT_BACKEND,
         limits: tm2.Limits = tm2.DEFAULT_LIMITS, **options) -> Model:
    """Open a `.tm2` artifact in `backend` (CPU, `threads` threads; None: all cores)."""
    module = backend_module(backend)
    start = time.perf_counter()
    artifact = tm2.read(path, limits)
    try:
        session = module.Session(artifact, threads, **options)
    except ModelFileError:
        raise
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: corrupt graph description ({type(exc).__name__}: {exc})") from None
    seconds = time.perf_counter() - start
    log.info("loaded %s (%s, %d bytes) in %s in %.3f s", path, artifact.header.get("variant"), artifact.size_bytes,
             backend, seconds)
    return Model(artifact, session, seconds)


def backend_version(backend: str) -> str:
    """The name and version of the library behind `backend`."""
    return backend_module(backend).version()
