"""Loading torchreid OSNet weights (`osnet_x*_*.pth` state dicts) into our OSNet.

Our OSNet registers its layers in torchreid's order (stem, blocks: reduction, streams a–d, gate,
expansion, shortcut; transitions; conv5; the 512-d fc), so the weights map one to one by
position; every shape is checked. The ID classifier (trained on other identities) and our
BNNeck are not taken. Used to fine-tune in-domain from a published model, and to check in a test
that our OSNet computes exactly what torchreid's does.
"""
from pathlib import Path

import torch

from .models import EmbeddingNet


def load_torchreid(net: EmbeddingNet, path: Path) -> int:
    """Copies the weights in place; returns how many tensors were loaded."""
    theirs = torch.load(path, map_location="cpu", weights_only=True)
    if "state_dict" in theirs:
        theirs = theirs["state_dict"]
    theirs = {k.removeprefix("module."): v for k, v in theirs.items()
              if not k.removeprefix("module.").startswith("classifier")}
    ours = net.state_dict()
    targets = [k for k in ours if k.startswith(("backbone.", "fcs."))]
    if len(targets) != len(theirs):
        raise ValueError(f"{path}: {len(theirs)} tensors, our network expects {len(targets)} "
                         "(not a torchreid OSNet of this width?)")
    for (name, value), target in zip(theirs.items(), targets):
        if value.shape != ours[target].shape:
            raise ValueError(f"{path}: {name} has shape {tuple(value.shape)}, our {target} "
                             f"expects {tuple(ours[target].shape)} (another OSNet width?)")
        ours[target] = value
    net.load_state_dict(ours)
    return len(targets)
