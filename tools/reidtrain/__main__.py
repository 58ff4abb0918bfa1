"""`python -m reidtrain COMMAND`: train, prune, export, table, count, mine, teach, distill, ensemble."""
import argparse
import sys
from pathlib import Path

from . import models


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reidtrain", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)

    from . import train as train_mod
    t = sub.add_parser("train", help="train on a Market-1501-layout directory")
    t.add_argument("--data", type=Path, required=True,
                   help="dataset root (with bounding_box_train/) or an image directory")
    t.add_argument("--out", type=Path, required=True, help="checkpoint/log directory")
    t.add_argument("--val", type=Path, help="Market-layout root with query/ + bounding_box_test/")
    t.add_argument("--eval-every", type=int, default=5)
    t.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    t.add_argument("--init", type=Path, help="start from this checkpoint's model (fine-tuning)")
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--stop-after", type=int, help="stop after this many epochs (resume later)")
    train_mod.recipe_args(t)

    c = sub.add_parser("count", help="parameters and multiply-accumulates of every architecture")
    c.add_argument("--classes", type=int, default=743)

    from . import prune as prune_mod, export as export_mod, report as report_mod
    prune_mod.add_args(sub.add_parser("prune", help="structured filter pruning of a checkpoint"))
    export_mod.add_args(sub.add_parser("export", help="checkpoint → ONNX + manifest (+ int8)"))

    report_mod.add_args(sub.add_parser("table", help="evaluate runs with reidcam eval → Markdown"))

    from . import mine as mine_mod, teacher as teacher_mod, distill as distill_mod
    mine_mod.add_args(sub.add_parser("mine", help="person crops from the shared videos and frames"))
    teacher_mod.add_args(sub.add_parser("teach", help="a teacher's embeddings of every view"))
    distill_mod.add_args(sub.add_parser("distill", help="train a student on a teacher's embeddings"))
    from . import ensemble as ensemble_mod
    ensemble_mod.add_args(sub.add_parser("ensemble", help="several students → one ONNX model"))

    args = ap.parse_args(argv)
    if args.command == "train":
        recipe = train_mod.recipe_from(args)
        train_mod.train(recipe, args.data, args.out, args.val, args.eval_every, args.resume,
                        args.init, args.threads, stop_after=args.stop_after, log=lambda m: print(m, flush=True))
    elif args.command == "count":
        print("| architecture | parameters (no classifier) | MACs @256×128 | MACs @128×64 | embedding |")
        print("|---|---:|---:|---:|---:|")
        for arch in models.WIDTH_ARCHS:
            widths = (1.0, 0.75, 0.5, 0.25)
            for w in widths:
                net = models.build(arch, w, args.classes)
                print(f"| {arch} x{w} | {models.count_params(net):,} | "
                      f"{models.count_flops(net) / 1e6:.1f} M | "
                      f"{models.count_flops(net, 128, 64) / 1e6:.1f} M | {net.embed_dim} |")
    elif args.command == "prune":
        prune_mod.run(args)
    elif args.command == "export":
        export_mod.run(args)
    elif args.command == "table":
        report_mod.run(args)
    elif args.command == "mine":
        mine_mod.run(args)
    elif args.command == "teach":
        teacher_mod.run(args)
    elif args.command == "distill":
        distill_mod.run(args)
    elif args.command == "ensemble":
        ensemble_mod.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
