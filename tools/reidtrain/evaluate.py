"""The tools' own evaluator: Market-1501 protocol (same id + same camera removed from the
gallery, junk dropped), cosine distance on L2-normalised embeddings, CMC rank-1 and torchreid's
mAP. The firmware's `reidcam eval` implements the same protocol; the tables use that one."""
from pathlib import Path

import numpy as np
import torch

from .augment import normalise
from .data import Images, load_dir


@torch.no_grad()
def embed(net: torch.nn.Module, images: Images, batch: int = 128) -> np.ndarray:
    was = net.training
    net.eval()
    out = []
    for s in range(0, len(images), batch):
        x = normalise(torch.from_numpy(images.pixels[s:s + batch]))
        out.append(net(x).numpy())
    net.train(was)
    feats = np.concatenate(out)
    return feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)


def market_metrics(q: np.ndarray, q_pids, q_cams, g: np.ndarray, g_pids, g_cams) -> dict:
    sim = q @ g.T
    rank1, aps = [], []
    for i in range(len(q)):
        valid = ~((g_pids == q_pids[i]) & (g_cams == q_cams[i]))
        order = np.argsort(-sim[i][valid], kind="stable")
        hits = (g_pids[valid] == q_pids[i])[order]
        if not hits.any():
            continue
        rank1.append(float(hits[0]))
        positions = np.flatnonzero(hits)
        aps.append(float(np.mean((np.arange(len(positions)) + 1) / (positions + 1))))
    return {"rank1": 100 * float(np.mean(rank1)), "mAP": 100 * float(np.mean(aps)),
            "queries": len(rank1)}


class Evaluator:
    """Loads a Market-layout dataset root (query/ + bounding_box_test/) once."""

    def __init__(self, root: Path, height: int, width: int):
        self.query = load_dir(root / "query", height, width)
        self.gallery = load_dir(root / "bounding_box_test", height, width)

    def __call__(self, net: torch.nn.Module) -> dict:
        q, g = embed(net, self.query), embed(net, self.gallery)
        return market_metrics(q, self.query.pids, self.query.cams,
                              g, self.gallery.pids, self.gallery.cams)
