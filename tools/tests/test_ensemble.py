"""`reidtrain ensemble`: the exported graph is the mean of the members' unit embeddings, each
member seeing the input at its own size (average-pooled by a whole factor), and onnxruntime
agrees with PyTorch; members whose sizes do not divide the largest are refused."""
from argparse import Namespace
from dataclasses import asdict

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import reference
from reidtrain import ensemble
from reidtrain.train import Recipe, save_atomic
from test_export import _trained_looking


def _member(tmp_path, name, h, w, seed):
    net = _trained_looking("osnet", h, w, seed)
    path = tmp_path / name / "last.pt"
    path.parent.mkdir()
    recipe = Recipe(arch="osnet", width=0.25, height_px=h, width_px=w)
    save_atomic({"model": net, "recipe": asdict(recipe), "history": []}, path)
    return net, path


def _unit(v):
    return v / v.norm(dim=1, keepdim=True)


def test_the_ensemble_is_the_mean_of_unit_member_embeddings(tmp_path):
    big, big_path = _member(tmp_path, "big", 128, 64, 0)
    small, small_path = _member(tmp_path, "small", 64, 32, 1)
    x = torch.randn(3, 3, 128, 64)
    with torch.no_grad():
        want = (_unit(big(x)) + _unit(small(F.avg_pool2d(x, 2)))) / 2
    out = tmp_path / "ens.onnx"
    ensemble.run(Namespace(member=[big_path, small_path], out=out, name="ens", int8=None,
                           calib_count=0, int8_method="percentile"))
    got = reference.session(out).run(None, {"input": x.numpy()})[0]
    assert np.abs(got - want.numpy()).max() < 1e-4
    manifest = out.with_suffix(".toml").read_text()
    assert "height = 128" in manifest and "width = 64" in manifest
    assert "ensemble of 2 students" in manifest


def test_members_must_divide_the_largest_input(tmp_path):
    _, a = _member(tmp_path, "a", 128, 64, 0)
    _, b = _member(tmp_path, "b", 96, 48, 1)
    with pytest.raises(SystemExit, match="whole number"):
        ensemble.build([a, b])
