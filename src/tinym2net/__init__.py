"""tinym2net: tiny multimodal networks, mixed-precision quantized, reproducible with DVC."""
import os
from pathlib import Path

# librosa's first MFCC call JIT-compiles through numba (~20 s); keep the compiled code.
os.environ.setdefault("NUMBA_CACHE_DIR", str(Path.home() / ".cache" / "tinym2net" / "numba"))

__version__ = "0.1.0"
