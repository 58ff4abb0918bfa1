"""`retail`: our PyTorch copy of person-reidentification-retail-0267's network computes what the
shared ONNX graph does with its weights, and cut-down versions load and export (needs ../shared)."""
import numpy as np
import pytest
import torch

from helpers import shared_or_skip
from reidtrain.export import check_onnx, export_onnx, fold_batchnorms
from reidtrain.models.retail import RetailNet, load_onnx, resize_pool

TEACHER = "models/person-reidentification-retail-0267.onnx"


def test_retail_with_the_graphs_weights_matches_the_graph():
    import onnxruntime as ort
    shared = shared_or_skip()
    net = RetailNet()
    assert load_onnx(net, shared / TEACHER) == 561
    net.eval()
    x = np.random.default_rng(0).standard_normal((1, 3, 256, 128)).astype(np.float32)
    with torch.no_grad():
        ours = net(torch.from_numpy(x)).numpy()
    sess = ort.InferenceSession(str(shared / TEACHER), providers=["CPUExecutionProvider"])
    theirs = sess.run(None, {"data": x})[0]
    assert ours.shape == theirs.shape == (1, 256)
    assert np.abs(ours - theirs).max() < 1e-4 * np.abs(theirs).max()


def test_a_cut_down_retail_loads_trains_and_exports(tmp_path):
    shared = shared_or_skip()
    net = RetailNet(128, 64, streams=2, num_classes=5)
    loaded = load_onnx(net, shared / TEACHER)
    assert 0 < loaded < 561  # streams 3 and 4 of every block left out
    assert tuple(net.global_avgpool.weight.shape) == (256, 1, 8, 4)
    out = net.train()(torch.randn(4, 3, 128, 64))
    assert out.embedding.shape == (4, 256) and out.logits[0].shape == (4, 5)
    assert fold_batchnorms(net) > 0
    path = tmp_path / "r.onnx"
    export_onnx(net, path, 128, 64)
    assert check_onnx(net, path, 128, 64) < 1e-4


def test_pool_resize_keeps_the_total_weight():
    k = torch.rand(3, 1, 16, 8)
    small = resize_pool(k, (8, 4))
    assert small.shape == (3, 1, 8, 4)
    assert torch.allclose(small.sum((2, 3)), k.sum((2, 3)), rtol=1e-5)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="multiples of 16"):
        RetailNet(100, 64)
    with pytest.raises(ValueError, match="streams"):
        RetailNet(streams=5)


def test_the_plain_form_moves_its_input_affine_into_the_manifest(tmp_path):
    """A plain network exported: no op for the input's affine in the graph, and the manifest's
    mean/std that replace it give the same embedding as the network with it."""
    import onnxruntime as ort
    from dataclasses import asdict

    from reference import IMAGENET_MEAN, IMAGENET_STD
    from reidtrain.export import export_model
    from reidtrain.train import Recipe
    shared = shared_or_skip()
    torch.manual_seed(0)
    sample = torch.randn(16, 3, 160, 80)
    net = RetailNet(160, 80, plain=True)
    load_onnx(net, shared / TEACHER, sample)
    net.eval()
    pixels = torch.rand(2, 3, 160, 80)  # an image, /255
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    with torch.no_grad():
        want = net((pixels - mean) / std).numpy()
    recipe = asdict(Recipe(arch="retail", height_px=160, width_px=80, plain=True))
    path = tmp_path / "p.onnx"
    export_model({"model": net, "recipe": recipe}, path)
    import tomllib
    spec = tomllib.loads(path.with_suffix(".toml").read_text())["input"]
    m2, s2 = (torch.tensor(spec[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"input": ((pixels - m2) / s2).numpy()})[0]
    assert np.abs(got - want).max() < 1e-4 * np.abs(want).max()
    with pytest.raises(ValueError, match="sample crops"):
        load_onnx(RetailNet(160, 80, plain=True), shared / TEACHER)
