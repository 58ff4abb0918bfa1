#!/usr/bin/env python3
"""Static int8 quantisation of a float ReID ONNX model, in a form tract 0.23.9 runs.

    tools/.venv/bin/python tools/quantize.py --model M.onnx [--manifest M.toml] --out M_int8.onnx \
        [--calib-dir ../shared/data/cuhk03-train/bounding_box_train] [--calib-count 256] \
        [--method minmax|percentile]

What tract can run (see ARCHITECTURE.md, "int8"): onnxruntime's QOperator format restricted to
Conv and MatMul (QLinearConv / QLinearMatMul with QuantizeLinear/DequantizeLinear around them),
at opset 13 so per-channel weight scales are legal. onnxruntime's default QDQ export and its
com.microsoft QLinear* contrib ops (QLinearAdd, QLinearGlobalAveragePool, ...) are not usable by
tract 0.23.9. A BatchNormalization that is a Conv's only reader is folded into it first
(`fold_batchnorms`), so that the int8 layer ends in its ReLU, not in a float affine op. Activations uint8 (asymmetric), weights int8 per output channel, MinMax calibration
(or `--method percentile`: ranges cover 99.999% of the calibration values; the default model's
integer path lost 1.33 rank-1 points with MinMax, 0.66 with it) on real crops through the
reference preprocessing. The convolutions' int8 weights are then bounded in pairs
(`bound_pairs`: neighbouring weights' same-sign sums at most 128), so that AVX2 CPUs without
VNNI multiply by them exactly with `vpmaddubsw`. A manifest sidecar is written
next to the output (`M_int8.toml`).
"""
import argparse
import random
import sys
import tomllib
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnx import version_converter
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                      QuantType, quantize_static)

import reference


def unshare_initializers(model: onnx.ModelProto) -> int:
    """Give every node its own copy of each initializer it shares with another node.

    OSNet's aggregation gate is one module applied to all T streams, so its fc weights and biases
    feed several Conv nodes. onnxruntime's QOperator quantiser turns a bias into int32 with scale
    input_scale × weight_scale once, under the bias's name, and every sharing node then reuses it
    although each has its own input scale: the embedding collapses (cosine ≈ 0.5 to float).
    Returns the number of copies made.
    """
    inits = {i.name: i for i in model.graph.initializer}
    seen: set[str] = set()
    copies = 0
    for node in model.graph.node:
        for k, name in enumerate(node.input):
            if name not in inits:
                continue
            if name in seen:
                copy = onnx.TensorProto()
                copy.CopyFrom(inits[name])
                copy.name = f"{name}__{node.name or copies}"
                model.graph.initializer.append(copy)
                node.input[k] = copy.name
                copies += 1
            else:
                seen.add(name)
    return copies


def fold_batchnorms(model: onnx.ModelProto) -> int:
    """Fold each BatchNormalization that is a Conv's only reader into that Conv's weights and bias.

    person-reidentification-retail-0267 comes with 78 Conv → BatchNormalization pairs unfolded.
    reidcam folds them itself in float, but quantised they became QLinearConv → DequantizeLinear →
    BatchNormalization: the per-channel affine then ran as a separate float op after every int8
    layer (22% of that int8 model's time on AVX2), between the int8 product and its ReLU. Folded
    first, the int8 weights are the folded ones (per output channel, so quantised as finely) and
    the ReLU fuses into the int8 layer. Returns the number folded.
    """
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    folded = []
    for conv in graph.node:
        if conv.op_type != "Conv" or conv.output[0] in outputs:
            continue
        after = readers.get(conv.output[0], [])
        if len(after) != 1 or after[0].op_type != "BatchNormalization":
            continue
        bn = after[0]
        params = [inits.get(name) for name in bn.input[1:5]]
        weights = inits.get(conv.input[1])
        bias_input = conv.input[2] if len(conv.input) > 2 else ""
        bias = inits.get(bias_input) if bias_input else None
        if weights is None or any(p is None for p in params) or (bias_input and bias is None):
            continue
        gamma, beta, mean, var = (numpy_helper.to_array(p).astype(np.float64) for p in params)
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        scale = gamma / np.sqrt(var + eps)
        w = numpy_helper.to_array(weights).astype(np.float64)
        b = numpy_helper.to_array(bias).astype(np.float64) if bias is not None else np.zeros(w.shape[0])
        w = w * scale.reshape(-1, *([1] * (w.ndim - 1)))
        b = (b - mean) * scale + beta
        # Each Conv has its own initializers (`unshare_initializers` ran first).
        weights.CopyFrom(numpy_helper.from_array(w.astype(np.float32), weights.name))
        bias_name = f"{conv.output[0]}__folded_bias"
        graph.initializer.append(numpy_helper.from_array(b.astype(np.float32), bias_name))
        if len(conv.input) > 2:
            conv.input[2] = bias_name
        else:
            conv.input.append(bias_name)
        conv.output[0] = bn.output[0]
        folded.append(bn)
    for bn in folded:
        graph.node.remove(bn)
    # The folded norms' parameters, now read by nothing.
    used = {name for node in graph.node for name in node.input}
    gone = {name for bn in folded for name in bn.input[1:5]} - used
    for init in [i for i in graph.initializer if i.name in gone]:
        graph.initializer.remove(init)
    return len(folded)


class Crops(CalibrationDataReader):
    def __init__(self, files: list[Path], spec: reference.InputSpec, input_name: str):
        self.files, self.spec, self.name = iter(files), spec, input_name

    def get_next(self):
        path = next(self.files, None)
        if path is None:
            return None
        return {self.name: reference.preprocess(path, self.spec)[None]}


# The most a pair of neighbouring weights of one output (same signs) may add up to, so that u8
# code × int8 weight products summed two at a time fit in int16: 255 · 128 = 32,640 ≤ 32,767.
# AVX2 without VNNI multiplies by pairs that way (`vpmaddubsw`, 32 multiply-adds per
# instruction); reidcam checks each layer's weights at load and takes that path only where they
# keep the bound, so it is exact either way.
PAIR_LIMIT = 128
# Named in the sidecar's header: an int8 model made before the bound is made again
# (`reference_int8`).
FORM = f"weights bounded in pairs to {PAIR_LIMIT}, taps by position, batch norms folded"


def pair_sums(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per output channel: the largest sum of a pair's positive weights and the largest sum of
    its negative ones (as a magnitude). A pair is two neighbours (2k, 2k + 1) of the output's
    weights in (ky, kx, input channel) order, the order reidcam's product reads them in, four to
    a word: a 1×1 convolution's input channels; for the stem, the colours of one tap side by
    side (neighbouring taps of one colour are alike in a smooth filter and would cost the
    bound a bit of precision in nearly every channel)."""
    o = w.shape[0]
    w = w.transpose(0, 2, 3, 1).reshape(o, -1).astype(np.float64)
    if w.shape[1] % 2:
        w = np.concatenate([w, np.zeros((o, 1))], axis=1)
    w = w.reshape(o, -1, 2)
    return np.clip(w, 0, None).sum(axis=2).max(axis=1), -np.clip(w, None, 0).sum(axis=2).min(axis=1)


def bound_pairs(q: onnx.ModelProto, float_model: onnx.ModelProto) -> int:
    """Re-quantises, from the float weights, each output channel of a one-group QLinearConv whose
    int8 weights break `PAIR_LIMIT`: its scale grows to the least that keeps every pair inside (at
    most 1 bit of that channel's precision), the int32 bias with it. Returns the number of
    channels changed. Measured on cuhk03-val (rank-1 of the int8 model, float in brackets): our
    default model 79.82 (79.38), retail-0267 74.06 (74.28), osnet_x0_25_msmt17 42.57 (41.46);
    with the stem's pairs taken as neighbouring taps of one colour instead, retail-0267 lost
    1.11 points."""
    floats = {i.name: numpy_helper.to_array(i) for i in float_model.graph.initializer}
    inits = {i.name: i for i in q.graph.initializer}
    changed = 0
    for node in q.graph.node:
        if node.op_type != "QLinearConv" or any(a.name == "group" and a.i != 1 for a in node.attribute):
            continue
        w_name, s_name = node.input[3], node.input[4]
        if not w_name.endswith("_quantized"):
            continue
        wq = numpy_helper.to_array(inits[w_name]).astype(np.int64)
        pos, neg = pair_sums(wq)
        bad = np.nonzero((pos > PAIR_LIMIT) | (neg > PAIR_LIMIT))[0]
        if bad.size == 0:
            continue
        wf = floats[w_name.removesuffix("_quantized")].astype(np.float64)
        scale = numpy_helper.to_array(inits[s_name]).astype(np.float64).copy()
        x_scale = float(numpy_helper.to_array(inits[node.input[1]]))
        has_bias = len(node.input) > 8 and node.input[8]
        bias = numpy_helper.to_array(inits[node.input[8]]).astype(np.int64) if has_bias else None
        for o in bad:
            p, n = (v[0] for v in pair_sums(wf[o:o + 1]))
            s = max(p, n, np.abs(wf[o]).max() * PAIR_LIMIT / 127) / PAIR_LIMIT
            while True:
                row = np.clip(np.rint(wf[o] / s), -127, 127)
                rp, rn = pair_sums(row[None])
                if rp[0] <= PAIR_LIMIT and rn[0] <= PAIR_LIMIT:
                    break
                s *= 1.0 + 1e-4
            wq[o], scale[o] = row, s
            if has_bias:
                b = floats[node.input[8].removesuffix("_quantized")][o]
                bias[o] = np.rint(b / (x_scale * np.float32(s)))
            changed += 1
        inits[w_name].CopyFrom(numpy_helper.from_array(wq.astype(np.int8), w_name))
        inits[s_name].CopyFrom(numpy_helper.from_array(scale.astype(np.float32), s_name))
        if has_bias:
            inits[node.input[8]].CopyFrom(numpy_helper.from_array(bias.astype(np.int32), node.input[8]))
    return changed


METHODS = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}
PERCENTILE = 99.999

def quantize(model_path: Path, out: Path, manifest: Path | None, calib_dir: Path,
             calib_count: int = 256, seed: int = 0, method: str = "minmax") -> str:
    """Writes the int8 model to `out` (and `out.toml` from `manifest`); returns a summary line.
    Raises ValueError when there is nothing to calibrate on."""
    spec = reference.InputSpec.from_manifest(manifest)
    model = onnx.load(model_path)
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < 13:
        model = version_converter.convert_version(model, 13)
    copies = unshare_initializers(model)
    batchnorms = fold_batchnorms(model)
    input_name = spec.name or model.graph.input[0].name
    staged = out.with_suffix(".opset13.onnx")
    onnx.save(model, staged)

    files = sorted(calib_dir.glob("*.jpg")) + sorted(calib_dir.glob("*.png"))
    if not files:
        raise ValueError(f"{calib_dir}: no calibration crops (.jpg/.png)")
    random.Random(seed).shuffle(files)
    calib = files[:calib_count]

    quantize_static(
        str(staged), str(out), Crops(calib, spec, input_name),
        quant_format=QuantFormat.QOperator,
        op_types_to_quantize=["Conv", "MatMul"],
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=METHODS[method],
        # Percentile: the activation range covers this share of the calibration values (clips
        # the rare outliers MinMax spreads the 256 levels over).
        extra_options={"CalibPercentile": PERCENTILE} if method == "percentile" else {},
    )
    staged.unlink()
    q = onnx.load(out)
    bounded = bound_pairs(q, model)
    onnx.save(q, out)

    if manifest:
        text = manifest.read_text()
        name = tomllib.loads(text)["model"]["name"]
        text = text.replace(f'name = "{name}"', f'name = "{name}_int8"', 1)
        header = (f"# int8 (QOperator Conv/MatMul, per-channel, {FORM}) of {model_path.name} by tools/quantize.py,\n"
                  f"# calibrated on {len(calib)} crops of {calib_dir.name} (seed {seed}), "
                  f"{method} activation ranges.\n")
        out.with_suffix(".toml").write_text(header + text)
    ops = sorted({n.op_type for n in q.graph.node})
    return (f"unshared {copies} initializer uses; folded {batchnorms} batch norms into their convolutions; {bounded} output channels' weights bounded in pairs; wrote {out} ({out.stat().st_size / 1024:.0f} KiB, "
            f"float {model_path.stat().st_size / 1024:.0f} KiB); ops: {', '.join(ops)}")


def reference_int8(name: str, shared: Path, out_dir: Path, fresh: bool = False) -> Path:
    """The int8 version of the shared reference model `name` in `out_dir` (made there unless it is
    already), with links to the float model and its manifest beside it: `X_int8.onnx`,
    `X_int8.toml`, `X.onnx` → ../shared, `X.toml` → models/reference/ — the layout the speed
    benchmark reads (float model next to each int8 one). `fresh` quantises again even if a model
    is there. `out_dir` must be outside the repository (the models derive from ../shared)."""
    root = Path(__file__).resolve().parent.parent
    float_model = shared / "models" / f"{name}.onnx"
    manifest = root / "models" / "reference" / f"{name}.toml"
    out_dir.mkdir(parents=True, exist_ok=True)
    int8 = out_dir / f"{name}_int8.onnx"
    sidecar = int8.with_suffix(".toml")
    if fresh or not (int8.exists() and sidecar.exists() and FORM in sidecar.read_text()):
        print(quantize(float_model, int8, manifest, shared / "data" / "cuhk03-train" / "bounding_box_train"))
    for link, target in ((out_dir / f"{name}.onnx", float_model), (out_dir / f"{name}.toml", manifest)):
        link.unlink(missing_ok=True)
        link.symlink_to(target.resolve())
    return int8


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--manifest", type=Path, help="default: models/reference/<stem>.toml, then <model>.toml")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--calib-dir", type=Path,
                    default=reference.shared_dir() / "data" / "cuhk03-train" / "bounding_box_train")
    ap.add_argument("--calib-count", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--method", choices=sorted(METHODS), default="minmax",
                    help="activation range calibration")
    args = ap.parse_args()

    root = Path(__file__).resolve().parent.parent
    manifest = args.manifest
    for candidate in (root / "models" / "reference" / f"{args.model.stem}.toml", args.model.with_suffix(".toml")):
        if manifest is None and candidate.exists():
            manifest = candidate
    try:
        print(quantize(args.model, args.out, manifest, args.calib_dir, args.calib_count, args.seed,
                       args.method))
    except ValueError as e:
        print(f"quantize: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
