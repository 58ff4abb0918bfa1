"""`python -m reidtrain distill`: a small student learns a strong teacher's embedding.

Per step: a P×K batch of the labelled set and U mined (unlabelled) crops, each as one of the V
views the teacher embedded (`reidtrain teach`), rendered again and resized to the student's
input. The student — a backbone with its BNNeck and a linear projection into the teacher's
embedding space, which is its inference output — learns from

- the teacher, on every crop: `kd` · (1 − cos(student, teacher)) + `rel` · a relational loss on
  the batch's cosine-similarity matrices (what the gallery compares): their mean squared
  difference, or with `rel_temp` > 0 the KL divergence of each crop's softmax(similarity / T)
  over the other crops, student from teacher — which weighs each crop's nearest neighbours, the
  look-alikes a gallery must tell apart;
- the labels, on the labelled crops: cross-entropy with label smoothing on the BNNeck feature
  and a batch-hard triplet loss on the L2-normalised projected embedding.

Checkpoints, logs, `--resume` and `--stop-after` work as in `train`; a resumed run may be given a
different `--epochs` (the cosine schedule is resized from there). Every `--eval-every`
epochs: cuhk03-val rank-1/mAP (in domain) and, on two held-out domains, the agreement with the
teacher (mean cosine to the teacher's embedding of the same crop; Pearson correlation of the
pairwise similarities) and the one-by-one video's identities (rank-1/mAP, each person's first
half of crops against their second half).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from . import models
from . import views as views_mod
from .data import Images, load_dir, train_dir
from .distill_data import EVAL_SETS, unlabelled_set
from .evaluate import Evaluator, market_metrics
from .losses import batch_hard_triplet
from .sampler import PKSampler
from .train import Recipe, load_checkpoint, lr_at, save_atomic

VIEW_HEIGHT, VIEW_WIDTH = 256, 128


@dataclass
class DistillRecipe(Recipe):
    teacher: str = ""          # `reidtrain teach` output
    kd: float = 10.0
    rel: float = 10.0
    rel_temp: float = 0.0      # 0: MSE of the similarity matrices; > 0: KL of their softmax
    unlabelled: int = 32       # mined crops per step
    id_weight: float = 1.0
    triplet_weight: float = 1.0
    center_weight: float = 0.0


def unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=1)


def kd_losses(student: torch.Tensor, teacher: torch.Tensor,
              temp: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean 1 − cosine, relational loss) between unit rows: the relational loss is the MSE of
    the cosine-similarity matrices, or (temp > 0) the mean over rows of KL(softmax(S_t / temp)
    ‖ softmax(S_s / temp)) with each row's own similarity left out."""
    s, t = unit(student), unit(teacher)
    cos = (1 - (s * t).sum(1)).mean()
    ss, st = s @ s.T, t @ t.T
    if temp <= 0:
        return cos, F.mse_loss(ss, st)
    eye = torch.eye(len(s), dtype=torch.bool)
    log_ps = F.log_softmax((ss / temp).masked_fill(eye, float("-inf")), 1).masked_fill(eye, 0)
    log_pt = F.log_softmax((st / temp).masked_fill(eye, float("-inf")), 1).masked_fill(eye, 0)
    return cos, (log_pt.exp() * (log_pt - log_ps)).sum(1).mean()


@torch.no_grad()
def embed_views(net, pixels: np.ndarray, height: int, width: int, batch: int = 128) -> np.ndarray:
    """Clean crops (256×128 uint8) → the student's unit embeddings, at its input size."""
    was = net.training
    net.eval()
    out = []
    for s in range(0, len(pixels), batch):
        chunk = torch.from_numpy(pixels[s:s + batch])
        x = views_mod.render(chunk, [views_mod.ViewParams()] * len(chunk))
        out.append(unit(net(views_mod.resize(x, height, width))).numpy())
    net.train(was)
    return np.concatenate(out)


def agreement(student: np.ndarray, teacher: np.ndarray) -> dict:
    """How closely the student's similarities follow the teacher's on the same crops."""
    teacher = teacher.astype(np.float32)
    teacher /= np.linalg.norm(teacher, axis=1, keepdims=True)
    iu = np.triu_indices(len(student), 1)
    out = {"pearson": float(np.corrcoef((student @ student.T)[iu], (teacher @ teacher.T)[iu])[0, 1])}
    if student.shape[1] == teacher.shape[1]:
        out["cos"] = float((student * teacher).sum(1).mean())
    return out


def video_split_metrics(emb: np.ndarray, persons: np.ndarray, files: list[str]) -> dict:
    """rank-1/mAP with each person's earlier half of crops as queries, later half as gallery."""
    frames = np.array([int(f.rsplit(":", 1)[1]) for f in files])
    cams = np.zeros(len(persons), np.int64)
    for p in np.unique(persons):
        idx = np.flatnonzero(persons == p)
        idx = idx[np.argsort(frames[idx], kind="stable")]
        cams[idx[len(idx) // 2:]] = 1
    q, g = cams == 0, cams == 1
    return market_metrics(emb[q], persons[q], cams[q], emb[g], persons[g], cams[g])


class HeldOut:
    """The held-out sets and the teacher's embeddings of them, loaded once."""

    def __init__(self, teacher: np.lib.npyio.NpzFile, mined: Path, val: Path | None,
                 height: int, width: int):
        self.sets = {k: v for k, v in EVAL_SETS(mined).items() if not k.startswith("cuhk03")}
        self.teacher = {k: teacher[f"eval:{k}"] for k in self.sets}
        self.evaluator = Evaluator(val, height, width) if val else None
        self.height, self.width = height, width

    def __call__(self, net) -> dict:
        out = {}
        if self.evaluator:
            m = self.evaluator(net)
            out.update(rank1=m["rank1"], mAP=m["mAP"])
        for name, images in self.sets.items():
            emb = embed_views(net, images.pixels, self.height, self.width)
            for k, v in agreement(emb, self.teacher[name]).items():
                out[f"{name}:{k}"] = v
            if (images.pids >= 0).all():
                m = video_split_metrics(emb, images.pids, images.files)
                out[f"{name}:rank1"], out[f"{name}:mAP"] = m["rank1"], m["mAP"]
        return out


def teacher_scores(teacher: np.lib.npyio.NpzFile, mined: Path) -> dict:
    """The teacher's own one-by-one video identities (its upper bound there)."""
    images = EVAL_SETS(mined)["one-by-one"]
    t = teacher["eval:one-by-one"].astype(np.float32)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    return video_split_metrics(t, images.pids, images.files)


def distill(recipe: DistillRecipe, data: Path, mined: Path, out: Path, val: Path | None = None,
            eval_every: int = 5, resume: bool = False, threads: int | None = None,
            max_batches: int | None = None, stop_after: int | None = None, log=print) -> dict:
    if threads:
        torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    teacher = np.load(recipe.teacher)
    labelled = load_dir(train_dir(data), VIEW_HEIGHT, VIEW_WIDTH, keep_distractors=False)
    if list(teacher["files"]) != labelled.files:
        raise SystemExit(f"{recipe.teacher}: made for other labelled crops than {data}")
    mixes = bool(teacher["mixes"]) if "mixes" in teacher else False
    unlabelled: Images = unlabelled_set(mined, labelled, mixes)
    t_labelled = torch.from_numpy(teacher["labelled"].astype(np.float32))
    t_mined = torch.from_numpy(teacher["mined"].astype(np.float32))
    if len(t_mined) != len(unlabelled):
        raise SystemExit(f"{recipe.teacher}: made for other mined crops than {mined}")
    n_views, view_seed = int(teacher["views"]), int(teacher["seed"])
    classes, labels = np.unique(labelled.pids, return_inverse=True)
    targets = torch.from_numpy(labels)
    torch.manual_seed(recipe.seed)
    sample = None
    if recipe.arch == "retail" and recipe.plain:
        # the crops a plain network's norms are measured on (view 0 of 256 labelled crops)
        pick = np.random.default_rng([recipe.seed, 3]).choice(len(labelled), 256, replace=False)
        sample = views_mod.resize(views_mod.render(
            torch.from_numpy(labelled.pixels[pick]),
            [views_mod.params(view_seed, int(i), 0) for i in pick]),
            recipe.height_px, recipe.width_px)
    net = models.create(recipe, len(classes), proj_dim=t_labelled.shape[2], log=log,
                        sample=sample)
    opt = torch.optim.Adam(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    sampler = PKSampler(labels, recipe.p, recipe.k, recipe.seed)
    rng = np.random.default_rng([recipe.seed, 7])
    history: list[dict] = []
    start_epoch = 0
    last = out / "last.pt"
    if resume and last.is_file():
        ck = load_checkpoint(last)
        saved = dict(ck["recipe"], epochs=recipe.epochs)
        if saved != asdict(recipe) or recipe.epochs <= ck["epoch"]:
            raise SystemExit(f"{last}: recipe differs from this command's (only --epochs may "
                             f"change, to more than the {ck['epoch']} done)\n  saved: {ck['recipe']}")
        if ck["recipe"]["epochs"] != recipe.epochs:
            log(f"schedule resized: {ck['recipe']['epochs']} → {recipe.epochs} epochs "
                f"(the learning rate follows the new schedule from epoch {ck['epoch']})")
        net = ck["model"]
        opt = torch.optim.Adam(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        opt.load_state_dict(ck["optimizer"])
        sampler.restore(ck["sampler"])
        rng.bit_generator.state = ck["rng"]
        torch.set_rng_state(ck["torch_rng"])
        history, start_epoch = ck["history"], ck["epoch"]
        log(f"resumed from {last} at epoch {start_epoch}")
    held_out = HeldOut(teacher, mined, val, recipe.height_px, recipe.width_px)
    shape = f"{recipe.streams} streams" if recipe.arch == "retail" else f"x{recipe.width}"
    log(f"{recipe.arch} {shape} → {net.embed_dim}-d ({models.count_params(net):,} "
        f"parameters) at {recipe.height_px}x{recipe.width_px}: {len(labelled)} labelled crops of "
        f"{len(classes)} identities + {len(unlabelled)} unlabelled, {n_views} views, "
        f"{recipe.epochs} epochs")
    if not history:
        log(f"teacher on one-by-one: {teacher_scores(teacher, mined)}")
    net.train()
    end = min(recipe.epochs, stop_after) if stop_after else recipe.epochs
    size = (recipe.height_px, recipe.width_px)
    for epoch in range(start_epoch, end):
        batches = sampler.epoch()
        if max_batches:
            batches = batches[:max_batches]
        t0, sums = time.time(), {}
        for b, idx in enumerate(batches):
            lr = lr_at(recipe, epoch + b / len(batches))
            for group in opt.param_groups:
                group["lr"] = lr
            u_idx = rng.choice(len(unlabelled), recipe.unlabelled, replace=False) \
                if recipe.unlabelled else np.zeros(0, np.int64)
            v_lab = rng.integers(0, n_views, len(idx))
            v_unl = rng.integers(0, n_views, len(u_idx))
            x = torch.cat([
                views_mod.render(torch.from_numpy(labelled.pixels[idx]),
                                 [views_mod.params(view_seed, int(i), int(v))
                                  for i, v in zip(idx, v_lab)]),
                views_mod.render(torch.from_numpy(unlabelled.pixels[u_idx]),
                                 [views_mod.params(view_seed + 1, int(i), int(v))
                                  for i, v in zip(u_idx, v_unl)]),
            ]) if len(u_idx) else views_mod.render(
                torch.from_numpy(labelled.pixels[idx]),
                [views_mod.params(view_seed, int(i), int(v)) for i, v in zip(idx, v_lab)])
            t = torch.cat([t_labelled[idx, v_lab], t_mined[u_idx, v_unl]])
            result = net(views_mod.resize(x, *size))
            n = len(idx)
            y = targets[idx]
            kd, rel = kd_losses(result.embedding, t, recipe.rel_temp)
            ident = sum(F.cross_entropy(lg[:n], y, label_smoothing=recipe.label_smoothing)
                        for lg in result.logits)
            trip = batch_hard_triplet(unit(result.embedding[:n]), y, recipe.margin)
            loss = (recipe.kd * kd + recipe.rel * rel + recipe.id_weight * ident
                    + recipe.triplet_weight * trip)
            opt.zero_grad()
            loss.backward()
            opt.step()
            parts = {"kd": kd.item(), "rel": rel.item(), "id": ident.item(),
                     "triplet": trip.item(), "total": loss.item()}
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            if (b + 1) % 20 == 0 or b + 1 == len(batches):
                rate = (b + 1) * len(x) / (time.time() - t0)
                left = (len(batches) - b - 1) * len(x) / rate
                losses = " ".join(f"{k} {v / (b + 1):.4f}" for k, v in sums.items())
                log(f"epoch {epoch + 1}/{recipe.epochs} batch {b + 1}/{len(batches)} {losses} "
                    f"lr {lr:.2e} {rate:.0f} img/s, epoch ends in {left:.0f} s")
        entry = {"epoch": epoch + 1, "seconds": round(time.time() - t0, 1),
                 **{k: round(v / len(batches), 5) for k, v in sums.items()}}
        if (epoch + 1) % eval_every == 0 or epoch + 1 == recipe.epochs:
            entry.update({k: round(v, 4) for k, v in held_out(net).items()})
            log(f"epoch {epoch + 1}: " + " ".join(f"{k} {v}" for k, v in entry.items()
                                                  if ":" in k or k in ("rank1", "mAP")))
        history.append(entry)
        with open(out / "log.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")
        save_atomic({"model": net, "optimizer": opt.state_dict(), "sampler": sampler.state(),
                     "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                     "history": history, "epoch": epoch + 1, "recipe": asdict(recipe),
                     "classes": classes.tolist()}, last)
    return {"model": net, "history": history, "recipe": recipe}


def add_args(p) -> None:
    from .train import recipe_args

    p.add_argument("--data", type=Path, help="labelled set (default: the shared cuhk03-train)")
    p.add_argument("--mined", type=Path, default=Path.home() / ".cache/reidcam/reidtrain/mined")
    p.add_argument("--teacher", type=Path, required=True, help="`reidtrain teach` output (.npz)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--val", type=Path, help="in-domain validation root (default: the shared "
                   "cuhk03-val; 'none' to skip)")
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--stop-after", type=int)
    p.add_argument("--kd", type=float, default=DistillRecipe.kd)
    p.add_argument("--rel", type=float, default=DistillRecipe.rel)
    p.add_argument("--rel-temp", type=float, default=DistillRecipe.rel_temp,
                   help="0: MSE of the similarity matrices; > 0: KL of their softmax at this "
                        "temperature")
    p.add_argument("--unlabelled", type=int, default=DistillRecipe.unlabelled)
    p.add_argument("--id-weight", type=float, default=DistillRecipe.id_weight)
    p.add_argument("--triplet-weight", type=float, default=DistillRecipe.triplet_weight)
    recipe_args(p)


def run(args) -> None:
    import reference
    from .train import recipe_from

    base = asdict(recipe_from(args))
    base["center_weight"] = 0.0
    recipe = DistillRecipe(**base, teacher=str(args.teacher.resolve()), kd=args.kd, rel=args.rel,
                           rel_temp=args.rel_temp,
                           unlabelled=args.unlabelled, id_weight=args.id_weight,
                           triplet_weight=args.triplet_weight)
    shared = reference.shared_dir()
    val = None if str(args.val) == "none" else (args.val or shared / "data/cuhk03-val")
    distill(recipe, args.data or shared / "data/cuhk03-train", args.mined, args.out, val,
            args.eval_every, args.resume, args.threads, stop_after=args.stop_after,
            log=lambda m: print(m, flush=True))
