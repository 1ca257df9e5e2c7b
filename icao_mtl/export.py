"""``python -m icao_mtl.export RUN_DIR --format savedmodel|tflite [--quantize]``

Exports the run's model (or, for STL, every per-requisite model) for serving:

- ``savedmodel``: a TensorFlow SavedModel with a ``serving_default`` signature: input ``image``, float32
  of shape (batch, size, size, 3) with raw RGB values in [0, 255]; one output per requisite id, the
  softmax probabilities (batch, 2), column 1 = compliant. Written to ``RUN_DIR/export/savedmodel/<name>/``.
- ``tflite``: the same graph for TensorFlow Lite (``RUN_DIR/export/tflite/<name>.tflite``), optionally
  with dynamic-range quantisation (``--quantize``: int8 weights, float activations).

Both compute in float32, whatever precision the run trained under (:func:`float32_twin`: a mixed
model's scores move by bfloat16's rounding: on 40 portraits of the default run a median of 6e-5, at most 0.025).

``export/<format>/signature.json`` records the models, their requisites and input sizes, so that
``python -m icao_mtl.check RUN_DIR --backend tflite ...`` can run on the export alone.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

from . import io as aio
from .errors import ConfigError, command

FORMATS = ("savedmodel", "tflite")


def float32_twin(model):
    """``model`` rebuilt with every layer computing in float32 and the same weights (``model`` itself
    where every layer already does). A model trained under mixed precision (``--mixed-precision``)
    computes in bfloat16 or float16: TFLite has no kernels for bfloat16 convolutions, and a serving
    machine may have none either; its variables are float32, so the twin holds them exactly."""
    import keras

    def to_float32(node):
        if isinstance(node, dict):
            if node.get("class_name") == "DTypePolicy" and str(node.get("config", {}).get("name", "")).startswith(
                    "mixed_"):
                return {**node, "config": {**node["config"], "name": "float32"}}
            return {k: to_float32(v) for k, v in node.items()}
        if isinstance(node, list):
            return [to_float32(v) for v in node]
        return node

    if all(layer.dtype_policy.name == "float32" for layer in model._flatten_layers(include_self=False)):
        return model
    twin = model.__class__.from_config(to_float32(model.get_config()))
    twin.set_weights(model.get_weights())
    return twin


def export_run(run_dir, fmt: str, *, quantize: bool = False, out=None) -> Path:
    """Export every model of a run; returns the export directory."""
    import tensorflow as tf

    from .runs import load_models

    if fmt not in FORMATS:
        raise ConfigError(f"Unknown export format {fmt!r}. Fix: use one of {FORMATS}.")
    if quantize and fmt != "tflite":
        raise ConfigError("--quantize applies to TFLite only. Fix: add --format tflite, or drop --quantize.")
    run_dir = Path(run_dir)
    models = load_models(run_dir)
    out = Path(out) if out else run_dir / "export" / fmt
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"format": fmt, "quantized": quantize, "models": {}}
    for name, model in models.items():
        model = float32_twin(model)
        tasks = list(model.output_names)
        size = int(model.inputs[0].shape[1])
        tmp = Path(tempfile.mkdtemp(dir=out))
        try:
            model.export(str(tmp / "sm"), format="tf_saved_model", verbose=False)
            if fmt == "savedmodel":
                target = out / name
                if target.exists():
                    shutil.rmtree(target)
                (tmp / "sm").rename(target)
                file = target.name
            else:
                converter = tf.lite.TFLiteConverter.from_saved_model(str(tmp / "sm"))
                if quantize:
                    converter.optimizations = [tf.lite.Optimize.DEFAULT]
                aio.write_bytes(out / f"{name}.tflite", converter.convert())
                file = f"{name}.tflite"
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        manifest["models"][name] = {"file": file, "tasks": tasks, "input_size": size}
    aio.write_json(out / "signature.json", manifest)
    return out


class ExportedPredictor:
    """Scores from an export (SavedModel or TFLite): ``predict(images) -> {task: P(compliant)}``."""

    def __init__(self, export_dir):
        export_dir = Path(export_dir)
        sig = export_dir / "signature.json"
        if not sig.is_file():
            raise ConfigError(f"{export_dir} holds no export (signature.json). Fix: run python -m icao_mtl.export "
                              "RUN_DIR --format tflite (or savedmodel) first.")
        self.manifest = aio.read_json(sig)
        self.format = self.manifest["format"]
        self.dir = export_dir
        self._runners = {}
        for name, info in self.manifest["models"].items():
            self._runners[name] = self._load(info)

    @property
    def tasks(self) -> list:
        return [t for info in self.manifest["models"].values() for t in info["tasks"]]

    @property
    def input_size(self) -> int:
        return next(iter(self.manifest["models"].values()))["input_size"]

    def _load(self, info):
        if self.format == "savedmodel":
            import tensorflow as tf

            fn = tf.saved_model.load(str(self.dir / info["file"])).signatures["serving_default"]
            return lambda x: {k: v.numpy() for k, v in fn(image=tf.constant(x)).items()}
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            import tensorflow as tf

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                Interpreter = tf.lite.Interpreter  # noqa: N806
        interpreter = Interpreter(model_path=str(self.dir / info["file"]))
        runner = interpreter.get_signature_runner("serving_default")

        def run(x):
            outs = [runner(image=x[i:i + 1]) for i in range(len(x))]  # the converted graph has batch 1
            return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}

        return run

    def predict(self, images: np.ndarray) -> dict:
        images = np.asarray(images, np.float32)
        scores = {}
        for run in self._runners.values():
            for task, probs in run(images).items():
                scores[task] = probs[:, 1].astype(np.float64)
        return scores


@command
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m icao_mtl.export", description=__doc__.split("\n\n")[1])
    p.add_argument("run_dir")
    p.add_argument("--format", default="savedmodel", choices=FORMATS)
    p.add_argument("--quantize", action="store_true", help="TFLite dynamic-range quantisation")
    p.add_argument("--out", default=None, help="export directory (default RUN_DIR/export/<format>)")
    args = p.parse_args(argv)
    out = export_run(args.run_dir, args.format, quantize=args.quantize, out=args.out)
    print(f"exported to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
