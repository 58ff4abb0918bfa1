"""tools/quantize.py's pair bound: after `bound_pairs`, every 1×1 QLinearConv's int8 weights keep
neighbouring input channels' same-sign sums within PAIR_LIMIT (what reidcam's AVX2 `vpmaddubsw`
product needs to be exact), the channels that already did are untouched, and the re-quantised
ones still dequantise to their float weights within half a step; and `fold_batchnorms` folds a Conv's
only reader, a BatchNormalization, into it with the same outputs."""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import quantize


def conv_models(w: np.ndarray, b: np.ndarray, x_scale: float):
    """A float model holding `w`, `b` and a QOperator model with one 1×1 QLinearConv of them,
    quantised per output channel the way onnxruntime does (symmetric, max |w| → 127)."""
    out, inp = w.shape[:2]
    w_scale = np.abs(w).reshape(out, -1).max(axis=1) / 127
    wq = np.clip(np.rint(w / w_scale[:, None, None, None]), -127, 127).astype(np.int8)
    bq = np.rint(b / (x_scale * w_scale)).astype(np.int32)
    inits = [
        numpy_helper.from_array(np.array(x_scale, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(0, np.uint8), "x_zero"),
        numpy_helper.from_array(wq, "w_quantized"),
        numpy_helper.from_array(w_scale.astype(np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(out, np.int8), "w_zero"),
        numpy_helper.from_array(np.array(0.05, np.float32), "y_scale"),
        numpy_helper.from_array(np.array(128, np.uint8), "y_zero"),
        numpy_helper.from_array(bq, "b_quantized"),
    ]
    node = helper.make_node("QLinearConv", ["x", "x_scale", "x_zero", "w_quantized", "w_scale", "w_zero",
                                            "y_scale", "y_zero", "b_quantized"], ["y"])
    graph = helper.make_graph([node], "q", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, inp, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, out, 4, 4])], inits)
    q = helper.make_model(graph)
    floats = helper.make_model(helper.make_graph(
        [], "f", [], [], [numpy_helper.from_array(w.astype(np.float32), "w"),
                          numpy_helper.from_array(b.astype(np.float32), "b")]))
    return q, floats


def arrays(q: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}


def test_pairs_are_bounded_and_weights_kept():
    rng = np.random.default_rng(0)
    out, inp = 12, 10
    w = rng.normal(size=(out, inp, 1, 1))
    # Channel 0: its two largest weights side by side, same sign (the 8-bit codes 127 and ~127).
    w[0, 0, 0, 0], w[0, 1, 0, 0] = 3.0, 2.9
    # Channel 1: large weights of opposite signs in one pair (allowed as they are).
    w[1] = 0.01 * w[1]
    w[1, 2, 0, 0], w[1, 3, 0, 0] = 3.0, -3.0
    # Channel 2: two large negative weights in one pair.
    w[2, 4, 0, 0], w[2, 5, 0, 0] = -3.0, -2.5
    b = rng.normal(size=out)
    x_scale = 0.02
    q, floats = conv_models(w, b, x_scale)
    before = arrays(q)
    pos, neg = quantize.pair_sums(before["w_quantized"])
    broke = (pos > quantize.PAIR_LIMIT) | (neg > quantize.PAIR_LIMIT)
    assert broke[0] and broke[2] and not broke[1], (pos, neg)

    changed = quantize.bound_pairs(q, floats)

    after = arrays(q)
    assert changed == broke.sum()
    wq, scale, bq = after["w_quantized"], after["w_scale"], after["b_quantized"]
    assert wq.dtype == np.int8 and scale.dtype == np.float32 and bq.dtype == np.int32
    pos, neg = quantize.pair_sums(wq)
    assert (pos <= quantize.PAIR_LIMIT).all() and (neg <= quantize.PAIR_LIMIT).all(), (pos, neg)
    kept = ~broke
    assert (wq[kept] == before["w_quantized"][kept]).all()
    assert (scale[kept] == before["w_scale"][kept]).all() and (bq[kept] == before["b_quantized"][kept]).all()
    # Re-quantised channels: a larger scale (at most twice), weights within half a step, the
    # bias in the new units.
    s = scale[broke].astype(np.float64)
    assert (s > before["w_scale"][broke]).all() and (s <= 2 * before["w_scale"][broke] * 1.001).all()
    err = np.abs(wq[broke].astype(np.float64) * s[:, None, None, None] - w[broke])
    assert (err <= s[:, None, None, None] / 2 + 1e-9).all()
    assert (np.abs(bq[broke] - b[broke] / (x_scale * s)) <= 0.5 + 1e-3).all()


def test_odd_input_counts_pair_the_last_weight_alone():
    # Five inputs: pairs (0, 1), (2, 3) and (4,) alone — as reidcam's words are filled.
    w = np.array([[1, 2, 3, 4, 5]], np.int64).reshape(1, 5, 1, 1)
    pos, neg = quantize.pair_sums(w)
    assert pos[0] == 7 and neg[0] == 0
    pos, neg = quantize.pair_sums(-w)
    assert pos[0] == 0 and neg[0] == 7


def test_a_stems_pairs_are_the_colours_of_one_tap():
    # (ky, kx, channel) order, as reidcam's int8 stem reads its taps: 3 colours × 2 taps give the
    # pairs (R0, G0), (B0, R1), (G1, B1).
    w = np.zeros((1, 3, 1, 2), np.int64)
    w[0, :, 0, 0] = [100, 100, 0]  # R0 + G0 = 200: breaks the bound
    w[0, :, 0, 1] = [0, 60, 60]  # G1 + B1 = 120
    pos, _ = quantize.pair_sums(w)
    assert pos[0] == 200
    w[0, :, 0, 0] = [100, 0, 100]  # R0 alone, B0 + R1 = 100
    pos, _ = quantize.pair_sums(w)
    assert pos[0] == 120


def conv_bn_model(rng: np.random.Generator, with_bias: bool, second_reader: bool):
    """x → Conv 3×3 (8 → 6 channels) → BatchNormalization → Relu; with `second_reader` the Conv's
    output is also a graph output (so its norm must not be folded)."""
    w = rng.normal(size=(6, 8, 3, 3)).astype(np.float32)
    b = rng.normal(size=6).astype(np.float32)
    gamma, beta = rng.uniform(0.5, 2, 6), rng.normal(size=6)
    mean, var = rng.normal(size=6), rng.uniform(0.1, 3, 6)
    inits = [numpy_helper.from_array(w, "w")]
    conv_inputs = ["x", "w"]
    if with_bias:
        inits.append(numpy_helper.from_array(b, "b"))
        conv_inputs.append("b")
    for name, v in (("gamma", gamma), ("beta", beta), ("mean", mean), ("var", var)):
        inits.append(numpy_helper.from_array(v.astype(np.float32), name))
    nodes = [
        helper.make_node("Conv", conv_inputs, ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["n"], epsilon=1e-3),
        helper.make_node("Relu", ["n"], ["y"]),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 5, 7])]
    if second_reader:
        outputs.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 6, 5, 7]))
    graph = helper.make_graph(nodes, "conv_bn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 5, 7])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["y"], {"x": x})[0]


def test_batch_norms_fold_into_their_convolutions_with_the_same_outputs():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(1, 8, 5, 7)).astype(np.float32)
    for with_bias in (True, False):
        model = conv_bn_model(rng, with_bias, second_reader=False)
        want = run(model, x)
        assert quantize.fold_batchnorms(model) == 1
        assert [n.op_type for n in model.graph.node] == ["Conv", "Relu"]
        # The norm's parameters went with it.
        assert {i.name for i in model.graph.initializer} & {"gamma", "beta", "mean", "var"} == set()
        onnx.checker.check_model(model)
        got = run(model, x)
        assert np.abs(got - want).max() < 1e-4 * max(1.0, np.abs(want).max()), np.abs(got - want).max()


def test_a_convolution_read_elsewhere_keeps_its_norm():
    model = conv_bn_model(np.random.default_rng(8), True, second_reader=True)
    assert quantize.fold_batchnorms(model) == 0
    assert [n.op_type for n in model.graph.node] == ["Conv", "BatchNormalization", "Relu"]
