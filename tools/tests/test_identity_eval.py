"""The identity evaluation's metrics on a hand-made case, and its reading of events and labels."""
import json
from collections import Counter

import identity_eval
from identity_eval import Track, score
from identity_labels import Labels


def track(tid, identity, person, known=()):
    t = Track("v", tid, identity)
    t.votes = Counter({person: 2})
    t.known = list(known)
    return t


def test_merges_splits_phantoms_missed_and_known_decisions():
    people = {f"v:{p}" for p in (1, 2, 3, 4, 5)}
    tracks = [
        track(1, 10, 1),                       # person 1 → identity 10
        track(2, 10, 2, known=[(10, 2)]),      # person 2 wrongly matched to 10: a merge
        track(3, 11, 3),                       # person 3 → 11
        track(4, 12, 3),                       # person 3 again, new identity 12: a split
        track(5, 11, 3, known=[(11, 3)]),      # person 3 recognised as 11: right
        track(6, 13, None),                    # a table: a phantom
        track(7, None, 4),                     # person 4's track never decided
    ]                                          # person 5 never tracked
    r = score(tracks, people)
    assert r["identities"] == 4
    assert r["merges"] == 1 and r["merged"] == {10: ["v:1", "v:2"]}
    assert r["splits"] == 1 and r["splits_by_person"] == {"v:3": 1}
    assert r["phantoms"] == 1
    assert r["missed"] == 2  # persons 4 and 5
    assert (r["known_right"], r["known_wrong"]) == (1, 1)


def test_a_perfect_run_scores_clean():
    people = {"v:1", "v:2"}
    r = score([track(1, 1, 1), track(2, 2, 2), track(3, 1, 1, known=[(1, 1)])], people)
    assert (r["merges"], r["splits"], r["phantoms"], r["missed"]) == (0, 0, 0, 0)
    assert (r["known_right"], r["known_wrong"]) == (1, 0)


def test_events_are_assigned_to_the_labelled_person_they_overlap(tmp_path):
    labels_file = tmp_path / "v.toml"
    labels_file.write_text(
        'video = "data/video/v.mp4"\nframes = 100\n'
        "[[person]]\nid = 1\nboxes = [[0, 0, 0, 100, 200], [50, 100, 0, 200, 200]]\n"
        "[[person]]\nid = 2\nboxes = [[40, 300, 0, 400, 200], [60, 300, 0, 400, 200]]\n")
    labels = Labels(labels_file)
    # Frame 25: person 1 is halfway, at x 50..150 (interpolated); person 2 not there yet.
    assert identity_eval.person_at(labels, 25, [50, 0, 100, 200]) == 1
    assert identity_eval.person_at(labels, 25, [300, 0, 100, 200]) is None
    assert identity_eval.person_at(labels, 45, [300, 0, 100, 200]) == 2
    events = tmp_path / "e.jsonl"
    lines = [
        {"event": "enter", "track": 1, "frame": 25, "box": [50, 0, 100, 200],
         "identity": {"decision": "new", "id": 7}},
        {"event": "enter", "track": 2, "frame": 45, "box": [300, 0, 100, 200],
         "identity": {"decision": "known", "id": 7, "similarity": 0.9}},
        {"event": "leave", "track": 2, "frame": 60, "box": [0, 0, 10, 10],
         "identity": {"decision": "known", "id": 7, "similarity": 0.9}},
    ]
    events.write_text("\n".join(json.dumps(e) for e in lines) + "\n")
    tracks = identity_eval.read_tracks("v", events, labels)
    assert [(t.id, t.identity, t.person) for t in tracks] == [(1, 7, "v:1"), (2, 7, "v:2")]
    r = score(tracks, {"v:1", "v:2"})
    assert r["merges"] == 1 and r["known_wrong"] == 1
