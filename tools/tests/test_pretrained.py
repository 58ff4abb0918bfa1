"""Our OSNet is torchreid's OSNet: with its published weights it computes the same embedding as
the shared ONNX export of those weights (needs ../shared)."""
import numpy as np
import pytest
import torch

from helpers import shared_or_skip
from reidtrain import models
from reidtrain.pretrained import load_torchreid


def test_osnet_with_torchreid_weights_matches_the_reference_export():
    import onnxruntime as ort
    shared = shared_or_skip()
    net = models.build("osnet", 0.25, num_classes=1041, bnneck=False)
    assert load_torchreid(net, shared / "models/osnet_x0_25_msmt17.pth") == 565
    net.eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 256, 128)).astype(np.float32)
    with torch.no_grad():
        ours = net(torch.from_numpy(x)).numpy()
    sess = ort.InferenceSession(str(shared / "models/osnet_x0_25_msmt17.onnx"),
                                providers=["CPUExecutionProvider"])
    theirs = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    assert ours.shape == theirs.shape == (2, 512)
    assert np.abs(ours - theirs).max() < 1e-4 * np.abs(theirs).max()


def test_wrong_width_is_refused_by_name():
    shared = shared_or_skip()
    net = models.build("osnet", 0.5, num_classes=10)
    with pytest.raises(ValueError, match="osnet_x0_25_msmt17.pth: .* shape"):
        load_torchreid(net, shared / "models/osnet_x0_25_msmt17.pth")
