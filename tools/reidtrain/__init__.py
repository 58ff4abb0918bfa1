"""reidcam's model tools: ReID backbones, BNNeck training, pruning, ONNX export, int8.

Run as `python -m reidtrain <command>` from `tools/` (see tools/README.md). The package uses its
sibling scripts in `tools/` (the reference pipeline, the metrics reference, int8 quantisation),
so `tools/` is put on the import path once, here.
"""
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parent.parent
if str(TOOLS) not in sys.path:
    sys.path.insert(0, str(TOOLS))
