"""Multiply-adds counted from a traced TensorFlow graph, for any layer or model of any method (the
figure every method's row in the comparison reports, and BMTAS's look-up table)."""

from __future__ import annotations

import inspect
import math

import keras


def takes_training(layer) -> bool:
    """Whether ``layer.call`` accepts a ``training`` argument (batch norm, dropout, blocks)."""
    if isinstance(layer, keras.Sequential):
        return True
    return "training" in inspect.signature(layer.call).parameters


def measure_madds(layer, input_shape) -> int:
    """Multiply-adds of one call of ``layer`` on one example of ``input_shape`` (no batch axis), counted
    from the traced graph: convolutions (output elements x kernel height x width x input channels per
    group), depthwise convolutions (output elements x kernel area) and matrix products. BN,
    activations, pooling and additions count 0, as in the paper's MAdds."""
    import tensorflow as tf

    spec = tf.TensorSpec((1, *input_shape), tf.float32)
    kwargs = {"training": False} if takes_training(layer) else {}
    graph = tf.function(lambda x: layer(x, **kwargs)).get_concrete_function(spec).graph
    return _graph_madds(graph)


def _graph_madds(graph) -> int:
    total = 0
    for op in graph.get_operations():
        if op.type == "Conv2D":
            out = op.outputs[0].shape
            kh, kw, cin, _ = op.inputs[1].shape
            total += math.prod(out[1:]) * kh * kw * cin
        elif op.type == "DepthwiseConv2dNative":
            out = op.outputs[0].shape
            kh, kw, _, _ = op.inputs[1].shape
            total += math.prod(out[1:]) * kh * kw
        elif op.type in ("MatMul", "BatchMatMulV2"):
            a = op.inputs[0].shape
            k = a[-2] if op.get_attr("transpose_a" if op.type == "MatMul" else "adj_x") else a[-1]
            total += math.prod(op.outputs[0].shape) * k
        elif op.type in ("StatefulPartitionedCall", "PartitionedCall"):
            fname = op.get_attr("f").name
            fn = graph._get_function(fname)
            if fn is not None:
                total += _graph_madds(fn.graph)
    return int(total)




def model_madds(model) -> int:
    """Multiply-adds of one image through ``model`` (a Keras model with one image input)."""
    return measure_madds(model, tuple(int(d) for d in model.inputs[0].shape[1:]))


def latency_ms(model, size: int, batch: int = 32, repeats: int = 10) -> float:
    """CPU milliseconds per image of ``model`` on a batch of ``batch`` random images of side ``size``
    (median of ``repeats`` calls of one traced function, after a warm-up call)."""
    import time

    import numpy as np
    import tensorflow as tf

    x = tf.constant(np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype(np.float32))
    fn = tf.function(lambda v: model(v, training=False))
    fn(x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        tf.nest.map_structure(lambda v: v.numpy(), fn(x))
        times.append(time.perf_counter() - t)
    return float(np.median(times)) / batch * 1000
