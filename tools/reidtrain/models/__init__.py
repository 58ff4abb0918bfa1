"""Backbones and the embedding head. `build(arch, ...)` is the one entry point."""
from .head import ARCHS, WIDTH_ARCHS, EmbeddingNet, build, count_flops, count_params, create

__all__ = ["ARCHS", "WIDTH_ARCHS", "EmbeddingNet", "build", "count_flops", "count_params",
           "create"]
