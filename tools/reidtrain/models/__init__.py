"""Backbones and the embedding head. `build(arch, ...)` is the one entry point."""
from .head import ARCHS, EmbeddingNet, build, count_flops, count_params

__all__ = ["ARCHS", "EmbeddingNet", "build", "count_flops", "count_params"]
