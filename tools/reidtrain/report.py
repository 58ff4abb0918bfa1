"""`python -m reidtrain table RUN_DIR...`: export each run's checkpoint and evaluate it with
`reidcam eval` (the firmware's own preprocessing, tract and protocol) → a Markdown table row per
run, plus the runs' training cost. Every number in tools/README.md's tables comes from here."""
import argparse
import json
import tempfile
from pathlib import Path

import reference

from . import models
from .export import export_model
from .train import load_checkpoint


def _init(recipe: dict) -> str:
    if recipe.get("init"):
        pruned = load_checkpoint(Path(recipe["init"]))
        if "ratio" in pruned:
            return f"{Path(pruned['pruned_from']).parent.name} pruned {pruned['ratio']:.0%}"
        return Path(recipe["init"]).parent.name
    if recipe.get("torchreid_init"):
        return Path(recipe["torchreid_init"]).name
    if recipe.get("onnx_init"):
        return Path(recipe["onnx_init"]).name
    return "scratch"


def describe(run_dir: Path, data: Path, workdir: Path) -> dict:
    ckpt = run_dir / "last.pt"
    ck = load_checkpoint(ckpt)
    recipe, history, net = ck["recipe"], ck["history"], ck["model"]
    params = models.count_params(net)
    macs = models.count_flops(net, recipe["height_px"], recipe["width_px"])
    onnx_path = workdir / f"{run_dir.name}.onnx"
    export_model(ck, onnx_path)  # folds the BNs of `net`: counted above
    metrics = reference.reidcam_eval(onnx_path, data)["metrics"]
    return {
        "run": run_dir.name, "arch": recipe["arch"], "width": recipe["width"],
        "bnneck": recipe["bnneck"], "size": f"{recipe['height_px']}x{recipe['width_px']}",
        "init": _init(recipe),
        "params": params, "macs": macs,
        "epochs": len(history), "minutes": sum(h["seconds"] for h in history) / 60,
        "rank1": metrics["rank1"], "mAP": metrics["map"],
    }


def markdown(rows: list[dict]) -> str:
    out = ["| run | architecture | neck | input | init | parameters | MACs | epochs | "
           "train time | rank-1 | mAP |", "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['run']} | {r['arch']} x{r['width']} | {'BNNeck' if r['bnneck'] else '—'} | "
                   f"{r['size']} | {r['init']} | {r['params']:,} | {r['macs'] / 1e6:.1f} M | "
                   f"{r['epochs']} | {r['minutes']:.0f} min | {r['rank1']:.2f} | {r['mAP']:.2f} |")
    return "\n".join(out)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", type=Path, nargs="+", help="training output directories (with last.pt)")
    p.add_argument("--data", type=Path, help="evaluation root (default: shared cuhk03-val)")
    p.add_argument("--json", type=Path, help="also write the rows here")


def run(args) -> None:
    data = args.data or reference.shared_dir() / "data/cuhk03-val"
    with tempfile.TemporaryDirectory() as tmp:
        rows = [describe(r, data, Path(tmp)) for r in args.runs]
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    print(markdown(rows))
