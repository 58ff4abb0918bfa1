"""The tools' own evaluator: Market-1501 protocol (same id + same camera removed from the
gallery, junk dropped), cosine distance on L2-normalised embeddings, CMC rank-1 and torchreid's
mAP. The firmware's `reidcam eval` implements the same protocol; the tables use that one."""
from pathlib import Path

import numpy as np
import torch

from eval_reference import cmc_map_torchreid

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
    """Rank-1 and mAP (%) of unit-length embeddings, by the project's reference implementation of
    torchreid's protocol (`tools/eval_reference.py`), on negated cosine similarity."""
    cmc, m_ap, _, queries = cmc_map_torchreid(-(q @ g.T), q_pids, g_pids, q_cams, g_cams)
    return {"rank1": 100 * float(cmc[0]), "mAP": 100 * m_ap, "queries": queries}


class Evaluator:
    """Loads a Market-layout dataset root (query/ + bounding_box_test/) once."""

    def __init__(self, root: Path, height: int, width: int):
        self.query = load_dir(root / "query", height, width)
        self.gallery = load_dir(root / "bounding_box_test", height, width)

    def __call__(self, net: torch.nn.Module) -> dict:
        q, g = embed(net, self.query), embed(net, self.gallery)
        return market_metrics(q, self.query.pids, self.query.cams,
                              g, self.gallery.pids, self.gallery.cams)
