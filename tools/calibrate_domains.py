#!/usr/bin/env python3
"""Match threshold of a ReID model calibrated on several domains at once, through reidcam.

    tools/.venv/bin/python tools/calibrate_domains.py --model M.onnx [--fmr 0.001] [--json F]

Domains (Market-1501 layout; "cross-camera" pairs): cuhk03-val (two campus cameras), and the
two labelled shared videos as `reidtrain mine` writes them (`<cache>/mined/<video>-market/`:
each person's earlier crops against their later ones — one indoor camera, minutes apart).
Every crop is embedded by `reidcam embed` (the firmware's decoding, resize and tract). Per
domain: rank-1/mAP, and the similarity that keeps the false-match rate of crop pairs at
`--fmr`, with the true-match rate there; then the same for *track means* (the unit mean of
`--window` consecutive crops of one person, what the daemon matches after `quality.min_crops`
good crops), the daemon's case. The threshold proposed for the manifest is the highest of the
track-mean thresholds — false matches at most `--fmr` in every domain measured — with each
domain's true-match rate at it: the trade-off, in figures.

The short-term threshold (`[matching] recent_threshold`, for identities seen within
`gallery.recent_seconds`): the people-detection video's track threshold — the people around
someone whose track broke are those walking beside them, that video's case.

The split threshold (`[matching] split_below`: a new crop whose cosine to its track's mean is
below it is someone else) comes from the videos: each crop against the mean of the `--window`
crops of the same person before it (a track going on) and against the means of other people's
windows (someone stepping into the track); proposed: the 1st percentile of the first, with the
share of the second it catches.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import reference
from eval_reference import cmc_map_torchreid

CACHE = Path(os.environ.get("REIDTRAIN_CACHE") or Path.home() / ".cache/reidcam/reidtrain")


CROWD = "people-detection video"  # the domain of people walking side by side


def domains(shared: Path) -> dict[str, Path]:
    return {
        "cuhk03-val": shared / "data/cuhk03-val",
        "one-by-one video": CACHE / "mined/one-by-one-market",
        CROWD: CACHE / "mined/people-detection-market",
    }


def embed(model: Path, files: list[Path], manifest: Path | None) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "e.npy"
        cmd = [str(reference.reidcam_binary()), "embed", "--model", str(model), "--format", "npy",
               "-o", str(out), *map(str, files)]
        if manifest:
            cmd[4:4] = ["--manifest", str(manifest)]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            raise SystemExit(f"reidcam embed {model}: {run.stderr.strip()}")
        e = np.load(out).astype(np.float64)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def parse(files: list[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pid = np.array([int(f.name.split("_")[0]) for f in files])
    cam = np.array([int(f.name.split("_")[1][1]) for f in files])
    frame = np.array([int(f.name.split("_")[2]) for f in files])
    return pid, cam, frame


def threshold_at(same: np.ndarray, diff: np.ndarray, fmr: float) -> tuple[float, float]:
    """Least threshold whose false-match rate is at most `fmr`, and the true-match rate there."""
    d = np.sort(diff)[::-1]
    k = int(np.floor(fmr * len(d)))  # at most k different-person pairs may pass
    t = float(d[k]) + 1e-6 if k < len(d) else float(d[-1])
    return t, float((same >= t).mean())


def track_means(e: np.ndarray, pid: np.ndarray, cam: np.ndarray, frame: np.ndarray,
                window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit means of `window` consecutive crops (in frame order) per person and camera."""
    out, p_out, c_out = [], [], []
    for p in np.unique(pid):
        for c in np.unique(cam[pid == p]):
            idx = np.flatnonzero((pid == p) & (cam == c))
            idx = idx[np.argsort(frame[idx], kind="stable")]
            for s in range(0, len(idx) - window + 1, window):
                m = e[idx[s:s + window]].mean(0)
                out.append(m / np.linalg.norm(m))
                p_out.append(p)
                c_out.append(c)
    return np.array(out), np.array(p_out), np.array(c_out)


def pairs(e: np.ndarray, pid: np.ndarray, cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cross-camera pair similarities: same person, different people."""
    s = e @ e.T
    iu = np.triu_indices(len(e), 1)
    cross = cam[:, None] != cam[None, :]
    same = pid[:, None] == pid[None, :]
    return s[iu][(cross & same)[iu]], s[iu][(cross & ~same)[iu]]


def crop_to_track(e: np.ndarray, pid: np.ndarray, frame: np.ndarray,
                  window: int) -> tuple[np.ndarray, np.ndarray]:
    """Cosines of each crop to the unit mean of the `window` crops of its person just before it
    (same), and to every other person's window means (different)."""
    same, diff, means = [], [], []
    order = np.lexsort((frame, pid))
    for p in np.unique(pid):
        idx = order[pid[order] == p]
        for k in range(window, len(idx)):
            m = e[idx[k - window:k]].mean(0)
            same.append(float(e[idx[k]] @ (m / np.linalg.norm(m))))
        for s in range(0, len(idx) - window + 1, window):
            m = e[idx[s:s + window]].mean(0)
            means.append((p, m / np.linalg.norm(m)))
    for i in range(len(e)):
        diff += [float(e[i] @ m) for p, m in means if p != pid[i]]
    return np.array(same), np.array(diff)


def measure(model: Path, root: Path, manifest: Path | None, fmr: float, window: int) -> dict:
    q = sorted((root / "query").glob("*.jpg"))
    g = sorted((root / "bounding_box_test").glob("*.jpg"))
    e = embed(model, q + g, manifest)
    pid, cam, frame = parse(q + g)
    nq = len(q)
    cmc, m_ap, _, _ = cmc_map_torchreid(-(e[:nq] @ e[nq:].T), pid[:nq], pid[nq:], cam[:nq], cam[nq:])
    same, diff = pairs(e, pid, cam)
    t, tmr = threshold_at(same, diff, fmr)
    tm, tp, tc = track_means(e, pid, cam, frame, window)
    t_same, t_diff = pairs(tm, tp, tc)
    tt, ttmr = threshold_at(t_same, t_diff, fmr)
    c_same, c_diff = crop_to_track(e, pid, frame, window)
    return {"rank1": 100 * float(cmc[0]), "mAP": 100 * m_ap, "crops": len(e),
            "split_same": c_same, "split_diff": c_diff,
            "crop_threshold": t, "crop_tmr": tmr, "crop_pairs": [len(same), len(diff)],
            "track_threshold": tt, "track_tmr": ttmr, "track_pairs": [len(t_same), len(t_diff)],
            "track_same": t_same, "track_diff": t_diff}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--manifest", type=Path)
    ap.add_argument("--fmr", type=float, default=0.001)
    ap.add_argument("--window", type=int, default=4, help="crops per track mean")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    shared = reference.require_shared("calibrate_domains")
    if shared is None:
        return 0
    results = {}
    for name, root in domains(shared).items():
        if not (root / "query").is_dir():
            raise SystemExit(f"{root}: missing; run `python -m reidtrain mine` (tools/README.md)")
        results[name] = measure(args.model, root, args.manifest, args.fmr, args.window)
    chosen = max(r["track_threshold"] for r in results.values())
    print(f"{args.model.name}: false-match rate {100 * args.fmr:g}% per domain; track = unit "
          f"mean of {args.window} crops")
    print("| domain | crops | rank-1 | mAP | crop threshold | TMR | track threshold | TMR | "
          f"TMR at {chosen:.3f} | FMR at {chosen:.3f} |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        at_tmr = float((r["track_same"] >= chosen).mean())
        at_fmr = float((r["track_diff"] >= chosen).mean())
        r.update(chosen_tmr=at_tmr, chosen_fmr=at_fmr)
        print(f"| {name} | {r['crops']} | {r['rank1']:.2f} | {r['mAP']:.2f} | "
              f"{r['crop_threshold']:.3f} | {100 * r['crop_tmr']:.1f}% | {r['track_threshold']:.3f} | "
              f"{100 * r['track_tmr']:.1f}% | {100 * at_tmr:.1f}% | {100 * at_fmr:.3f}% |")
    print(f"proposed [matching] threshold: {chosen:.4f}")
    videos = [r for name, r in results.items() if "video" in name]
    same = np.concatenate([r["split_same"] for r in videos])
    diff = np.concatenate([r["split_diff"] for r in videos])
    split = float(np.percentile(same, 1))
    print(f"split: crop to its own track's mean (videos, {len(same)} crops): 1st percentile "
          f"{split:.3f}, median {np.median(same):.3f}; to another person's track: median "
          f"{np.median(diff):.3f}, {100 * (diff < split).mean():.1f}% below {split:.3f}")
    print(f"proposed [matching] split_below: {split:.4f}")
    # Short-term re-identification (`gallery.recent_seconds`) only weighs the people seen moments
    # ago: the people around someone whose track broke — the crowd of a multi-person video.
    crowd = results[CROWD]
    recent = min(crowd["track_threshold"], chosen)
    print(f"short-term: the {CROWD}'s track threshold, people side by side and crossing "
          f"({100 * float((crowd['track_same'] >= recent).mean()):.1f}% of its same-person "
          f"track pairs at or above it)")
    print(f"proposed [matching] recent_threshold: {recent:.4f}")
    if args.json:
        for r in results.values():
            for k in ("track_same", "track_diff", "split_same", "split_diff"):
                r.pop(k)
        args.json.write_text(json.dumps({"model": str(args.model), "fmr": args.fmr,
                                         "threshold": chosen, "split_below": split,
                                         "recent_threshold": recent,
                                         "domains": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
