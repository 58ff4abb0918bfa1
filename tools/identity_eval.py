#!/usr/bin/env python3
"""End-to-end identity evaluation: `reidcam run` on the labelled shared videos, its identities
checked against who is really there (`tests/fixtures/identities/*.toml`).

    tools/.venv/bin/python tools/identity_eval.py [--model M.onnx] [--detector D.onnx]
        [--video one-by-one-person-detection] [--out DIR] [--check] [--json FILE]
        [-- extra `reidcam run` options]

The videos run one after the other through one gallery file, as one camera would see them, so
a person of the second video matched to someone of the first is a merge too. Each track is
given the labelled person its boxes overlap (IoU ≥ 0.3 at its `enter`/`update` events), then:

- merge: an identity given to more than one person (counted once per extra person);
- split: a person under more than one identity (once per extra identity);
- phantom: an identity whose tracks are nobody (a table, a patch of floor);
- missed: a labelled person who got no identity;
- known decisions right / wrong: `known` events whose identity's first person is / is not the
  track's person.

A contact sheet per video (every track's entering crop, in rows by identity, each captioned with
the person it shows) is written under `--out` (default: the build directory, never the
repository: the crops are of real people from ../shared). `--check` exits 1 on any merge or
phantom, or more than `--max-splits` splits in a video.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import reference
from identity_labels import LABELS, Labels

ROOT = Path(__file__).resolve().parent.parent
MIN_IOU = 0.3


def box_iou(a, b) -> float:
    """IoU of [x, y, w, h] and [x0, y0, x1, y1]."""
    ax0, ay0, ax1, ay1 = a[0], a[1], a[0] + a[2], a[1] + a[3]
    x0, y0, x1, y1 = max(ax0, b[0]), max(ay0, b[1]), min(ax1, b[2]), min(ay1, b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = a[2] * a[3] + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def person_at(labels: Labels, frame: int, box) -> int | None:
    best, best_iou = None, MIN_IOU
    for pid, b in labels.boxes_at(frame).items():
        o = box_iou(box, b)
        if o >= best_iou:
            best, best_iou = pid, o
    return best


@dataclass
class Track:
    video: str
    id: int
    identity: int | None = None       # the identity it holds at the end (None: undecided)
    votes: Counter = field(default_factory=Counter)  # person → events that overlap them
    crop: str | None = None
    known: list[tuple[int, int | None]] = field(default_factory=list)  # (identity, person) per known event

    @property
    def person(self) -> str | None:
        """`video:person`, or None for a track that is nobody."""
        if not self.votes:
            return None
        pid, _ = self.votes.most_common(1)[0]
        return None if pid is None else f"{self.video}:{pid}"


def read_tracks(video: str, events: Path, labels: Labels) -> list[Track]:
    tracks: dict[int, Track] = {}
    for line in events.read_text().splitlines():
        e = json.loads(line)
        t = tracks.setdefault(e["track"], Track(video, e["track"]))
        if e["event"] not in ("enter", "update"):
            continue
        who = person_at(labels, e["frame"], e["box"])
        t.votes[who] += 1
        ident = e["identity"]
        t.identity = ident.get("id") if ident["decision"] in ("known", "new") else None
        if ident["decision"] == "known":
            t.known.append((ident["id"], who))
        if e.get("crop") and t.crop is None:
            t.crop = e["crop"]
    return list(tracks.values())


def score(tracks: list[Track], people: set[str]) -> dict:
    by_identity: dict[int, list[Track]] = defaultdict(list)
    for t in tracks:
        if t.identity is not None:
            by_identity[t.identity].append(t)
    persons_of = {i: {t.person for t in ts if t.person} for i, ts in by_identity.items()}
    identities_of: dict[str, set[int]] = defaultdict(set)
    for i, ts in by_identity.items():
        for t in ts:
            if t.person:
                identities_of[t.person].add(i)
    first_person = {i: next((t.person for t in ts if t.person), None)
                    for i, ts in by_identity.items()}
    right = wrong = 0
    for t in tracks:
        for ident, _ in t.known:
            if first_person.get(ident) is not None and first_person.get(ident) == t.person:
                right += 1
            else:
                wrong += 1
    return {
        "tracks": len(tracks),
        "identities": len(by_identity),
        "people": len(people),
        "merges": sum(max(0, len(p) - 1) for p in persons_of.values()),
        "splits": sum(len(ids) - 1 for ids in identities_of.values()),
        "phantoms": sum(1 for p in persons_of.values() if not p),
        "missed": len(people - set(identities_of)),
        "known_right": right,
        "known_wrong": wrong,
        "splits_by_person": {p: len(ids) - 1 for p, ids in identities_of.items() if len(ids) > 1},
        "merged": {i: sorted(p) for i, p in persons_of.items() if len(p) > 1},
    }


def contact_sheet(tracks: list[Track], out: Path, title: str) -> None:
    from PIL import Image, ImageDraw

    rows: dict[int | None, list[Track]] = defaultdict(list)
    for t in tracks:
        if t.crop:
            rows[t.identity].append(t)
    if not rows:
        return
    tw, th, cap = 96, 192, 30
    width = max(len(r) for r in rows.values())
    sheet = Image.new("RGB", (120 + tw * width, (th + cap) * len(rows) + 24), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 4), title, fill="black")
    for r, (ident, ts) in enumerate(sorted(rows.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))):
        y = 24 + r * (th + cap)
        draw.text((4, y + th // 2), f"identity {ident}" if ident is not None else "undecided",
                  fill="black")
        for c, t in enumerate(ts):
            with Image.open(t.crop) as im:
                sheet.paste(im.convert("RGB").resize((tw, th)), (120 + c * tw, y))
            who = t.person.split(":")[1] if t.person else "nobody"
            draw.text((120 + c * tw + 2, y + th + 2), f"t{t.id} p{who}", fill="black")
    sheet.save(out)


def config_text(video: str, crops: Path, settings: list[str]) -> str:
    """A `reidcam run` configuration: the camera name, the crops directory, and `SECTION.KEY=VALUE`
    settings (TOML values, e.g. `gallery.threshold=0.7`, `detector.kind="motion"`)."""
    sections: dict[str, list[str]] = defaultdict(list)
    sections["events"].append(f'crops_dir = "{crops}"')
    for s in settings:
        key, _, value = s.partition("=")
        section, _, name = key.rpartition(".")
        if not section or not name or not value:
            raise SystemExit(f"--set {s!r}: expected SECTION.KEY=VALUE, e.g. gallery.threshold=0.7")
        sections[section].append(f"{name} = {value}")
    body = "".join(f"[{sec}]\n" + "".join(f"{line}\n" for line in lines)
                   for sec, lines in sections.items())
    return f'camera = "{video}"\n' + body


def run_video(binary: Path, video: str, labels: Labels, gallery: Path, work: Path,
              extra: list[str], settings: list[str]) -> tuple[list[Track], dict]:
    crops = work / f"crops-{video}"
    if crops.is_dir():
        for old in crops.glob("*.jpg"):
            old.unlink()
    crops.mkdir(parents=True, exist_ok=True)
    config = work / f"{video}.toml"
    config.write_text(config_text(video, crops, settings))
    events, summary = work / f"{video}.jsonl", work / f"{video}-summary.json"
    events.unlink(missing_ok=True)
    cmd = [str(binary), "run", "--config", str(config),
           "--source", str(reference.shared_dir() / labels.video), "--gallery", str(gallery),
           "--events", str(events), "--summary-json", str(summary), *extra]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"reidcam run {video}: {run.stderr.strip()}")
    return read_tracks(video, events, labels), json.loads(summary.read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--video", action="append", help="labels file stem (default: every one, in "
                    "name order)")
    ap.add_argument("--model", type=Path, help="ReID model (default: reidcam's default)")
    ap.add_argument("--detector", help="detector (default: reidcam's default)")
    ap.add_argument("--reidcam", type=Path, default=reference.reidcam_binary())
    ap.add_argument("--out", type=Path, help="contact sheets and run files (default: "
                    "$CARGO_TARGET_DIR/identity-eval)")
    ap.add_argument("--check", action="store_true", help="exit 1 on a merge or phantom, or too "
                    "many splits")
    ap.add_argument("--max-splits", type=int, default=1, help="per video, with --check")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="a configuration setting for the runs (TOML value), repeatable")
    ap.add_argument("extra", nargs="*", help="more `reidcam run` options (after --)")
    args = ap.parse_args()
    if reference.require_shared("identity_eval") is None:
        return 0
    out = args.out or Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "identity-eval"
    out.mkdir(parents=True, exist_ok=True)
    extra = list(args.extra)
    if args.model:
        extra += ["--model", str(args.model)]
    if args.detector:
        extra += ["--detector", args.detector]
    videos = args.video or sorted(p.stem for p in LABELS.glob("*.toml"))
    results, all_tracks, people = {}, [], set()
    with tempfile.TemporaryDirectory() as tmp:
        gallery = Path(tmp) / "gallery.bin"
        for video in videos:
            labels = Labels(LABELS / f"{video}.toml")
            tracks, summary = run_video(args.reidcam, video, labels, gallery, out, extra,
                                        args.set)
            mine = {f"{video}:{p}" for p in labels.people}
            people |= mine
            all_tracks += tracks
            r = score(tracks, mine)
            r["frames"] = summary["frames"]
            r["per_frame_ms"] = summary["per_frame_ms"]
            r["crops_rejected"] = summary["counts"]["crops_rejected"]
            results[video] = r
            contact_sheet(tracks, out / f"{video}.png", f"{video}: {summary['model']}")
    results["all (one gallery)"] = score(all_tracks, people)
    print("| video | people | tracks | identities | merges | splits | phantoms | missed | known right / wrong |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['people']} | {r['tracks']} | {r['identities']} | {r['merges']} | "
              f"{r['splits']} | {r['phantoms']} | {r['missed']} | {r['known_right']} / "
              f"{r['known_wrong']} |")
    for name, r in results.items():
        if r["merged"] or r["splits_by_person"]:
            print(f"{name}: merged {r['merged']} split {r['splits_by_person']}")
    print(f"contact sheets: {out}/<video>.png")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    if args.check:
        bad = [f"{v}: {r['merges']} merges, {r['phantoms']} phantoms, {r['splits']} splits"
               for v, r in results.items()
               if r["merges"] or r["phantoms"] or (v in videos and r["splits"] > args.max_splits)]
        if bad:
            print("identity check FAILED: " + "; ".join(bad), file=sys.stderr)
            return 1
        print("identity check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
