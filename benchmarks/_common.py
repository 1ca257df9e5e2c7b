"""Helpers shared by the benchmark scripts: machine description and JSON output."""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from icao_mtl import io as aio  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    import psutil

    info = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1), "date": time.strftime("%Y-%m-%d")}
    try:
        import cv2

        info["opencv"] = cv2.__version__
    except ImportError:
        pass
    if "tensorflow" in sys.modules:
        import tensorflow as tf

        info["tensorflow"] = tf.__version__
    return info


def write(name: str, payload: dict) -> Path:
    path = RESULTS / f"{name}.json"
    aio.write_json(path, {"machine": machine(), **payload})
    print(f"wrote {path}")
    return path
