"""P×K identity sampling: each batch holds P identities with K images each (batch-hard triplet)."""
import numpy as np


class PKSampler:
    """Yields index arrays of length P·K. An epoch visits every identity's images once (sampled
    with replacement when an identity has fewer than K), in P-identity batches."""

    def __init__(self, labels: np.ndarray, p: int, k: int, seed: int = 0):
        self.labels, self.p, self.k = labels, p, k
        self.by_label = {int(l): np.flatnonzero(labels == l) for l in np.unique(labels)}
        if len(self.by_label) < p:
            raise ValueError(f"P = {p} identities per batch, but the data has only "
                             f"{len(self.by_label)}")
        self.rng = np.random.default_rng(seed)

    def epoch(self) -> list[np.ndarray]:
        chunks: dict[int, list[np.ndarray]] = {}
        for label, idx in self.by_label.items():
            idx = self.rng.permutation(idx)
            if len(idx) < self.k:
                idx = self.rng.choice(idx, self.k, replace=True)
            chunks[label] = [idx[s:s + self.k] for s in range(0, len(idx) - self.k + 1, self.k)]
        batches = []
        available = sorted(chunks)
        while len(available) >= self.p:
            picked = self.rng.choice(available, self.p, replace=False)
            batches.append(np.concatenate([chunks[int(l)].pop() for l in picked]))
            available = [l for l in available if chunks[l]]
        return batches

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def restore(self, state: dict) -> None:
        self.rng.bit_generator.state = state
