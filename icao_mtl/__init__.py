"""icao-mtl: multi-task learning and architecture search for ICAO face-photo compliance.

Importing the package is cheap (no TensorFlow): the renderer and the data reader can run in worker
processes without loading TensorFlow. To load a model any command of the package saved (a run's
``model.keras``, whichever method built it)::

    import icao_mtl
    model = icao_mtl.load_model("runs/my_run/model.keras")    # safe_mode=True
"""

from __future__ import annotations

import os

__version__ = "0.1.0"

# TensorFlow turns its oneDNN kernels on by itself only on CPUs with AVX-512 VNNI, BF16 or AMX; on the
# others (AVX2: most AMD and desktop Intel CPUs) the default model's training step is about 1.75 times
# as fast with them (a 2-core AMD EPYC, benchmarks/bench_onednn.py). TensorFlow reads the variable when
# it is first imported: every command of the package imports icao_mtl first (a notebook must too);
# TF_ENABLE_ONEDNN_OPTS=0 still wins.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

#: Packages whose modules may define the registered layers of a saved model.
LAYER_PACKAGES = ("icao_mtl", "nas")


def register_layers(path=None) -> list[str]:
    """Import the modules that define the custom layers of a saved ``.keras`` file, so that Keras finds
    them: the modules named in its configuration (only those of :data:`LAYER_PACKAGES`), or, without a
    path, every layer module of ``icao_mtl``. Returns the modules imported."""
    import importlib
    import json
    import zipfile

    modules = {"icao_mtl.backbones"}
    if path is not None:
        try:
            with zipfile.ZipFile(path) as archive:
                config = json.loads(archive.read("config.json"))
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            from .errors import ConfigError

            raise ConfigError(f"{path} is not a Keras model file (.keras) that can be read ({exc}). Fix: pass the "
                              "model.keras of a run directory.") from exc

        def walk(node):
            if isinstance(node, dict):
                module = node.get("module")
                if isinstance(module, str) and module.split(".")[0] in LAYER_PACKAGES:
                    modules.add(module)
                for v in node.values():
                    walk(v)
            elif isinstance(node, list):
                for v in node:
                    walk(v)

        walk(config)
    for name in sorted(modules):
        importlib.import_module(name)
    return sorted(modules)


def load_model(path, **kwargs):
    """``keras.saving.load_model(path, safe_mode=True)`` after :func:`register_layers` (the layers of
    ``icao_mtl`` and of the search methods in ``nas``)."""
    from pathlib import Path

    import keras

    from .errors import ConfigError

    if not Path(path).is_file():
        raise ConfigError(f"Model file {path} not found. Fix: pass the model.keras of a finished run directory.")
    register_layers(path)
    return keras.saving.load_model(path, safe_mode=kwargs.pop("safe_mode", True), **kwargs)
