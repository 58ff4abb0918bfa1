#!/usr/bin/env python3
"""Independent reference for `reidcam eval`'s metrics, and the fixtures that compare them.

    tools/.venv/bin/python tools/eval_reference.py fixtures   # → tests/fixtures/eval/<case>/case.json

- cmc_map_torchreid: torchreid's `eval_market1501` (torchreid/metrics/rank.py) as published:
  per query, drop gallery entries with the same pid and camera, CMC from the first hit, AP = mean
  of precision at each hit; plus mINP as in fast-reid/AGW (hits / rank of the last hit). One
  change, stated by `reidcam eval` too: argsort is stable (gallery order breaks ties), where
  torchreid's default quicksort leaves tie order unspecified.
- ap_official: the official Market-1501 evaluation (compute_AP.m): junk = pid -1 plus same pid and
  camera; trapezoid rule over recall, starting from precision 1 at recall 0.
Junk (pid -1) gallery images are dropped before torchreid's algorithm, as its dataset loader does.
"""
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def cmc_map_torchreid(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=10):
    num_q, num_g = distmat.shape
    indices = np.argsort(distmat, axis=1, kind="stable")
    matches = (g_pids[indices] == q_pids[:, np.newaxis]).astype(np.int32)
    all_cmc, all_ap, all_inp = [], [], []
    num_valid_q = 0
    for q_idx in range(num_q):
        order = indices[q_idx]
        remove = (g_pids[order] == q_pids[q_idx]) & (g_camids[order] == q_camids[q_idx])
        keep = np.invert(remove)
        raw_cmc = matches[q_idx][keep]
        if not np.any(raw_cmc):
            continue
        cmc = raw_cmc.cumsum()
        pos_max_idx = np.where(raw_cmc == 1)[0].max()
        all_inp.append(cmc[pos_max_idx] / (pos_max_idx + 1.0))
        cmc[cmc > 1] = 1
        all_cmc.append(cmc[:max_rank] if len(cmc) >= max_rank else np.pad(cmc, (0, max_rank - len(cmc)), "edge"))
        num_valid_q += 1
        num_rel = raw_cmc.sum()
        tmp_cmc = raw_cmc.cumsum()
        tmp_cmc = np.asarray([x / (i + 1.0) for i, x in enumerate(tmp_cmc)]) * raw_cmc
        all_ap.append(tmp_cmc.sum() / num_rel)
    all_cmc = np.asarray(all_cmc).astype(np.float64).sum(0) / num_valid_q
    return all_cmc, float(np.mean(all_ap)), float(np.mean(all_inp)), num_valid_q


def ap_official(order, q_pid, q_cam, g_pids, g_cams):
    good = set(np.where((g_pids == q_pid) & (g_cams != q_cam))[0])
    junk = set(np.where(g_pids == -1)[0]) | set(np.where((g_pids == q_pid) & (g_cams == q_cam))[0])
    ngood = len(good)
    if ngood == 0:
        return None
    old_recall, old_precision, ap, intersect, j, good_now = 0.0, 1.0, 0.0, 0, 0, 0
    for idx in order:
        flag = idx in good
        if flag:
            good_now += 1
        if idx in junk:
            continue
        if flag:
            intersect += 1
        recall = intersect / ngood
        precision = intersect / (j + 1)
        ap += (recall - old_recall) * ((old_precision + precision) / 2)
        old_recall, old_precision = recall, precision
        j += 1
        if good_now == ngood:
            break
    return ap


def reference_metrics(distmat, q_pids, g_pids, q_camids, g_camids):
    keep = g_pids != -1
    cmc, mAP, mINP, valid = cmc_map_torchreid(distmat[:, keep], q_pids, g_pids[keep], q_camids, g_camids[keep])
    order = np.argsort(distmat, axis=1, kind="stable")
    aps = [ap_official(order[q], q_pids[q], q_camids[q], g_pids, g_camids) for q in range(len(q_pids))]
    aps = [a for a in aps if a is not None]
    return {"rank1": cmc[0], "rank5": cmc[4], "rank10": cmc[9], "map": mAP,
            "map_official": float(np.mean(aps)), "minp": mINP, "queries": valid,
            "queries_without_match": len(q_pids) - valid}


def make_case(name, rng, nq, ng, ids, cams, ties, distractors=0.1, junk=0.1, absent=0):
    q_pids = rng.integers(1, ids + 1 + absent, nq)
    g_pids = rng.integers(1, ids + 1, ng)
    g_pids[rng.random(ng) < distractors] = 0
    g_pids[rng.random(ng) < junk] = -1
    q_cams = rng.integers(1, cams + 1, nq)
    g_cams = rng.integers(1, cams + 1, ng)
    if ties:
        dist = rng.integers(0, 16, (nq, ng)).astype(np.float32) / 16  # many exact ties
    else:
        dist = rng.random((nq, ng)).astype(np.float32) * 2
        # Make genuine pairs a little closer so the metrics are not all near zero.
        dist -= 0.5 * (q_pids[:, None] == g_pids[None, :]) * rng.random((nq, ng)).astype(np.float32)
    expected = reference_metrics(dist.astype(np.float64), q_pids, g_pids, q_cams, g_cams)
    d = ROOT / "tests" / "fixtures" / "eval" / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "case.json").write_text(json.dumps({
        "reference": "tools/eval_reference.py (torchreid eval_market1501 with stable argsort; official compute_AP)",
        "query_pids": q_pids.tolist(), "query_cameras": q_cams.tolist(),
        "gallery_pids": g_pids.tolist(), "gallery_cameras": g_cams.tolist(),
        "distances": [[float(v) for v in row] for row in dist],
        "expected": expected,
        "tolerance": 1e-6,
    }) + "\n")
    print(f"eval/{name}: {expected}")


def main() -> int:
    if sys.argv[1:] != ["fixtures"]:
        print(__doc__)
        return 2
    rng = np.random.default_rng(1501)
    make_case("ties_distractors_junk", rng, nq=40, ng=150, ids=20, cams=3, ties=True)
    make_case("continuous_same_camera_positives", rng, nq=60, ng=200, ids=25, cams=2, ties=False)
    make_case("queries_without_match", rng, nq=30, ng=90, ids=12, cams=4, ties=True, absent=6)
    make_case("many_cameras_heavy_junk", rng, nq=50, ng=120, ids=30, cams=6, ties=False, junk=0.3, distractors=0.25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
