"""Export round-trip: the same crop through PyTorch, onnxruntime (the exported ONNX) and
`reidcam embed` (tract, reidcam's own preprocessing) gives the same embedding."""
import json
import subprocess
from dataclasses import asdict

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

import reference
from helpers import reidcam_or_skip
from reidtrain import models
from reidtrain.augment import normalise
from reidtrain.export import export_checkpoint, fold_batchnorms
from reidtrain.train import Recipe, save_atomic

H, W = 128, 64


def _trained_looking(arch: str, h: int = H, w: int = W, seed: int = 0) -> torch.nn.Module:
    """A random net whose BN statistics and scales are not the identity (so folding matters)."""
    torch.manual_seed(seed)
    net = models.build(arch, 0.25, num_classes=10)
    for m in net.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
            m.momentum = 0.5
    net.train()
    with torch.no_grad():
        for _ in range(4):
            net(torch.randn(8, 3, h, w))
    return net.eval()


def _checkpoint(tmp_path, arch):
    net = _trained_looking(arch)
    recipe = Recipe(arch=arch, width=0.25, height_px=H, width_px=W)
    path = tmp_path / "last.pt"
    save_atomic({"model": net, "recipe": asdict(recipe), "history": []}, path)
    return net, path


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


@pytest.mark.parametrize("arch", models.WIDTH_ARCHS)
def test_pytorch_onnxruntime_and_reidcam_agree(tmp_path, arch):
    import onnxruntime as ort
    binary = reidcam_or_skip()
    net, ckpt = _checkpoint(tmp_path, arch)
    # a crop already at the input size: every pipeline's resize is then the identity
    rng = np.random.default_rng(1)
    crop = tmp_path / "crop.png"
    Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(crop)
    x = normalise(torch.from_numpy(reference.load_rgb(crop, W, H)[None]))
    with torch.no_grad():
        want = net(x).numpy()

    out = tmp_path / "m.onnx"
    info = export_checkpoint(ckpt, out)
    assert info["dim"] == want.shape[1]
    graph = onnx.load(out)
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 13
    assert not [n for n in graph.graph.node if n.op_type == "BatchNormalization"]

    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got_ort = sess.run(None, {"input": x.numpy()})[0]
    batch = sess.run(None, {"input": np.repeat(x.numpy(), 3, 0)})[0]  # dynamic batch
    assert batch.shape == (3, want.shape[1])

    run = subprocess.run([str(binary), "embed", "--model", str(out), str(crop)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    got_reidcam = np.array(json.loads(run.stdout.splitlines()[0])["embedding"], np.float32)

    w = _unit(want[0])
    assert np.abs(_unit(got_ort[0]) - w).max() < 1e-4
    assert np.abs(got_reidcam - w).max() < 1e-4, float(got_reidcam @ w)
    assert np.abs(batch - got_ort).max() < 1e-4 * np.abs(got_ort).max()


def test_folding_removes_every_batchnorm_and_keeps_outputs():
    net = _trained_looking("sclnet")
    x = torch.randn(2, 3, H, W)
    with torch.no_grad():
        before = net(x)
        removed = fold_batchnorms(net)
        after = net(x)
    assert removed > 50
    assert not [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert torch.allclose(before, after, rtol=1e-4, atol=1e-4 * before.abs().max().item())


def test_fixed_batch_export_declares_batch_one(tmp_path):
    from reidtrain.export import export_onnx
    net = _trained_looking("osnet")
    fold_batchnorms(net)
    out = tmp_path / "fixed.onnx"
    export_onnx(net, out, H, W, dynamic_batch=False)
    dims = onnx.load(out).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 3, H, W]
