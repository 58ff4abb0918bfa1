"""Bag-of-tricks losses: ID (cross-entropy with label smoothing), batch-hard triplet, centre."""
import torch
from torch import nn
from torch.nn import functional as F


def batch_hard_triplet(features: torch.Tensor, labels: torch.Tensor,
                       margin: float = 0.3) -> torch.Tensor:
    """Hermans et al.: for each anchor, its farthest positive and nearest negative (Euclidean)."""
    dist = torch.cdist(features, features).clamp_min(1e-12)
    same = labels[:, None] == labels[None, :]
    hardest_pos = (dist * same).max(1).values
    hardest_neg = dist.masked_fill(same, float("inf")).min(1).values
    return F.relu(hardest_pos - hardest_neg + margin).mean()


class CenterLoss(nn.Module):
    """Wen et al.: pull each feature towards its class centre (centres learnt by their own SGD)."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.centers = nn.Parameter(torch.randn(num_classes, dim))

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return (features - self.centers[labels]).pow(2).sum(1).clamp(1e-12, 1e12).mean()


class ReidLoss(nn.Module):
    """Sum over feature levels of ID + triplet (+ weighted centre) losses. Without BNNeck the same
    feature carries all losses; with it, the triplet/centre losses see the pre-BN feature."""

    def __init__(self, num_classes: int, dims: list[int], label_smoothing: float = 0.1,
                 margin: float = 0.3, center_weight: float = 5e-4):
        super().__init__()
        self.smoothing, self.margin, self.center_weight = label_smoothing, margin, center_weight
        self.centers = nn.ModuleList(CenterLoss(num_classes, d) for d in dims) \
            if center_weight > 0 else nn.ModuleList()

    def forward(self, out, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        ident = sum(F.cross_entropy(l, labels, label_smoothing=self.smoothing) for l in out.logits)
        trip = sum(batch_hard_triplet(f, labels, self.margin) for f in out.features)
        total = ident + trip
        parts = {"id": ident.item(), "triplet": trip.item()}
        if self.centers:
            cent = sum(c(f, labels) for c, f in zip(self.centers, out.features))
            total = total + self.center_weight * cent
            parts["center"] = cent.item()
        parts["total"] = total.item()
        return total, parts
