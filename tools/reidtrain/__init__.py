"""reidcam's model tools: ReID backbones, BNNeck training, pruning, ONNX export, int8.

Run as `python -m reidtrain <command>` from `tools/` (see tools/README.md).
"""
