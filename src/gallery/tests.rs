use super::*;

const DIM: usize = 16;

/// A unit vector pointing mostly along axis `axis`, tilted towards axis `axis + 1` by `tilt`.
fn direction(axis: usize, tilt: f32) -> Vec<f32> {
    let mut v = vec![0.0; DIM];
    v[axis % DIM] = 1.0;
    v[(axis + 1) % DIM] = tilt;
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    v
}

fn config(format: StorageFormat, exemplars: usize, identities: usize) -> GalleryConfig {
    let mut c = GalleryConfig {
        dim: DIM,
        exemplars,
        format,
        budget_bytes: 0,
    };
    c.budget_bytes = c.heap_bytes(identities);
    c
}

fn gallery(identities: usize) -> Gallery {
    Gallery::with_budget(
        config(StorageFormat::F32, 3, identities),
        MatchPolicy::default(),
    )
    .unwrap()
}

fn at(ms: u64) -> NewIdentity<'static> {
    NewIdentity {
        label: None,
        pinned: false,
        now: Timestamp(ms),
    }
}

#[test]
fn capacity_is_the_largest_count_whose_bytes_fit_the_budget() {
    for format in StorageFormat::ALL {
        let c = config(format, 4, 10);
        assert_eq!(c.capacity().unwrap(), 10, "{format}: exact budget");
        let one_short = GalleryConfig {
            budget_bytes: c.budget_bytes - 1,
            ..c
        };
        assert_eq!(one_short.capacity().unwrap(), 9, "{format}: one byte short");
        let g = Gallery::with_budget(c, MatchPolicy::default()).unwrap();
        assert!(g.heap_bytes() <= c.budget_bytes);
        assert_eq!(
            c.bytes_per_identity(),
            IDENTITY_SLOT_BYTES + 4 * (DIM * format.bytes_per_value() + 8)
        );
    }
    let tiny = GalleryConfig {
        budget_bytes: 100,
        ..config(StorageFormat::Int8, 4, 1)
    };
    assert!(matches!(
        tiny.capacity(),
        Err(GalleryError::BudgetTooSmall { .. })
    ));
}

#[test]
fn bad_configs_and_embeddings_are_refused() {
    let zero_dim = GalleryConfig {
        dim: 0,
        ..config(StorageFormat::F32, 2, 2)
    };
    assert!(matches!(zero_dim.capacity(), Err(GalleryError::Config(_))));
    let mut g = gallery(2);
    assert!(matches!(
        g.insert(&[1.0; 5], at(0)),
        Err(GalleryError::Dimension {
            expected: DIM,
            got: 5
        })
    ));
    assert!(matches!(
        g.insert(&[0.0; DIM], at(0)),
        Err(GalleryError::BadEmbedding)
    ));
    let long = "x".repeat(LABEL_CAPACITY + 1);
    let new = NewIdentity {
        label: Some(&long),
        ..at(0)
    };
    assert!(matches!(
        g.insert(&direction(0, 0.0), new),
        Err(GalleryError::LabelTooLong { .. })
    ));
    assert!(g.is_empty(), "failed inserts leave nothing behind");
    assert_eq!(g.next_id(), PersonId(1), "failed inserts use no id");
}

/// Short-term re-identification: below the threshold, an identity seen at most `recent_ms` ago
/// still matches from `recent_threshold` on; one seen longer ago does not, nor a weaker match,
/// and `decide` (no time) never applies the rule.
#[test]
fn recently_seen_identities_match_from_the_recent_threshold() {
    let mut g = gallery(4);
    g.set_policy(MatchPolicy {
        threshold: 0.9,
        margin: 0.05,
        aggregation: Aggregation::Max,
        recent_ms: 2_000,
        recent_threshold: 0.5,
    });
    let (a, _) = g.insert(&direction(0, 0.0), at(10_000)).unwrap();
    let (_, _) = g.insert(&direction(8, 0.0), at(0)).unwrap();
    // cosine 1/√1.64 ≈ 0.78: under 0.9, over 0.5.
    let query = direction(0, 0.8);
    match g.decide_at(&query, Timestamp(11_500)).unwrap() {
        Decision::Match { best, .. } => assert_eq!(best.id, a),
        other => panic!("seen 1.5 s ago: expected a match, got {other:?}"),
    }
    assert!(matches!(
        g.decide_at(&query, Timestamp(12_001)).unwrap(),
        Decision::Unknown { .. }
    ));
    assert!(matches!(
        g.decide(&query).unwrap(),
        Decision::Unknown { .. }
    ));
    // cosine 1/√7.25 ≈ 0.37: under the recent threshold too.
    assert!(matches!(
        g.decide_at(&direction(0, 2.5), Timestamp(10_500)).unwrap(),
        Decision::Unknown { .. }
    ));
    // Off (recent_ms 0): only the threshold counts.
    g.set_policy(MatchPolicy {
        recent_ms: 0,
        ..*g.policy()
    });
    assert!(matches!(
        g.decide_at(&query, Timestamp(10_500)).unwrap(),
        Decision::Unknown { .. }
    ));
}

#[test]
fn decisions_follow_threshold_and_margin() {
    let mut g = gallery(4);
    g.set_policy(MatchPolicy {
        threshold: 0.8,
        margin: 0.05,
        aggregation: Aggregation::Max,
        ..MatchPolicy::default()
    });
    assert_eq!(
        g.decide(&direction(0, 0.0)).unwrap(),
        Decision::Unknown { best: None }
    );
    let (a, _) = g.insert(&direction(0, 0.0), at(0)).unwrap();
    let (b, _) = g.insert(&direction(4, 0.0), at(0)).unwrap();
    match g.decide(&direction(0, 0.1)).unwrap() {
        Decision::Match { best, runner_up } => {
            assert_eq!(best.id, a);
            assert!((best.similarity.0 - 0.995).abs() < 1e-3);
            assert_eq!(runner_up.unwrap().id, b);
        }
        other => panic!("expected a match, got {other:?}"),
    }
    // Orthogonal to both: unknown, with the closest reported.
    assert!(matches!(
        g.decide(&direction(8, 0.0)).unwrap(),
        Decision::Unknown { best: Some(_) }
    ));
    // Halfway between two identities that are close to each other: ambiguous.
    let (c, _) = g.insert(&direction(10, 0.0), at(0)).unwrap();
    let (d, _) = g.insert(&direction(10, 0.3), at(0)).unwrap();
    match g.decide(&direction(10, 0.15)).unwrap() {
        Decision::Ambiguous { best, runner_up } => {
            assert_eq!(
                [best.id.min(runner_up.id), best.id.max(runner_up.id)],
                [c, d]
            );
            assert!(best.similarity.0 - runner_up.similarity.0 < 0.05);
        }
        other => panic!("expected ambiguous, got {other:?}"),
    }
}

#[test]
fn eviction_takes_the_least_recently_seen_unpinned_identity() {
    let mut g = gallery(3);
    let (a, _) = g.insert(&direction(0, 0.0), at(10)).unwrap();
    let pinned = NewIdentity {
        label: Some("operator"),
        pinned: true,
        now: Timestamp(5),
    };
    let (p, _) = g.insert(&direction(4, 0.0), pinned).unwrap();
    let (b, _) = g.insert(&direction(8, 0.0), at(20)).unwrap();
    // `a` is seen again, so `b` is now the least recently seen unpinned identity; the pinned one
    // is older still but never evicted.
    g.refresh(a, &direction(0, 0.05), Timestamp(30)).unwrap();
    let (c, evicted) = g.insert(&direction(12, 0.0), at(40)).unwrap();
    assert_eq!(evicted, Some(b));
    let (_, evicted) = g.insert(&direction(2, 0.0), at(50)).unwrap();
    assert_eq!(evicted, Some(a));
    let (_, evicted) = g.insert(&direction(6, 0.0), at(60)).unwrap();
    assert_eq!(evicted, Some(c));
    assert_eq!(g.len(), 3);
    let kept = g.get(p).expect("pinned identity survives every eviction");
    assert_eq!(kept.label, Some("operator"));
    assert!(kept.pinned);
    // Ids are never reused.
    assert_eq!(g.next_id(), PersonId(7));
}

#[test]
fn a_gallery_full_of_pinned_identities_stores_nobody_new() {
    let mut g = gallery(2);
    for axis in [0, 4] {
        let new = NewIdentity {
            pinned: true,
            ..at(0)
        };
        g.insert(&direction(axis, 0.0), new).unwrap();
    }
    assert!(matches!(
        g.insert(&direction(8, 0.0), at(1)),
        Err(GalleryError::FullOfPinned { capacity: 2 })
    ));
    assert!(matches!(
        g.observe(&direction(8, 0.0), Timestamp(1)).unwrap(),
        Observation::Unstored { .. }
    ));
    // Only an operator removes a pinned identity.
    g.remove(PersonId(1)).unwrap();
    assert!(matches!(
        g.observe(&direction(8, 0.0), Timestamp(2)).unwrap(),
        Observation::New {
            id: PersonId(3),
            evicted: None
        }
    ));
    assert!(matches!(
        g.remove(PersonId(1)),
        Err(GalleryError::UnknownId(PersonId(1)))
    ));
}

#[test]
fn observe_refreshes_matches_and_creates_new_identities() {
    let mut g = gallery(4);
    let first = g.observe(&direction(0, 0.0), Timestamp(1)).unwrap();
    assert_eq!(
        first,
        Observation::New {
            id: PersonId(1),
            evicted: None
        }
    );
    match g.observe(&direction(0, 0.2), Timestamp(2)).unwrap() {
        Observation::Known { best, exemplar } => {
            assert_eq!(best.id, PersonId(1));
            assert_eq!(exemplar, ExemplarUpdate::Added);
        }
        other => panic!("expected known, got {other:?}"),
    }
    let info = g.get(PersonId(1)).unwrap();
    assert_eq!(
        (info.times_seen, info.exemplars, info.last_seen),
        (2, 2, Timestamp(2))
    );
    assert_eq!(info.first_seen, Timestamp(1));
}

#[test]
fn refresh_replaces_the_most_redundant_exemplar() {
    let mut g = gallery(2);
    let (id, _) = g.insert(&direction(0, 0.0), at(0)).unwrap();
    assert_eq!(
        g.refresh(id, &direction(0, 0.5), Timestamp(1)).unwrap(),
        ExemplarUpdate::Added
    );
    assert_eq!(
        g.refresh(id, &direction(0, 0.52), Timestamp(2)).unwrap(),
        ExemplarUpdate::Added
    );
    // K = 3 is full: tilts 0, 0.5, 0.52. A new view at tilt 1.2 is far from all of them, so one
    // of the near-duplicate pair (0.5, 0.52) goes: index 1, the one closer to the rest overall.
    assert_eq!(
        g.refresh(id, &direction(0, 1.2), Timestamp(3)).unwrap(),
        ExemplarUpdate::Replaced(1)
    );
    // A duplicate of a stored view adds nothing.
    assert_eq!(
        g.refresh(id, &direction(0, 1.2), Timestamp(4)).unwrap(),
        ExemplarUpdate::Kept
    );
    let mut v = vec![0.0; DIM];
    g.exemplar(id, 1, &mut v).unwrap();
    let expected = direction(0, 1.2);
    assert!(v.iter().zip(&expected).all(|(a, b)| (a - b).abs() < 1e-6));
    assert_eq!(g.get(id).unwrap().times_seen, 5);
}

#[test]
fn max_and_mean_aggregations_rank_differently() {
    let mut g = gallery(2);
    // Identity 1: one exemplar right on the query, one far away. Identity 2: two fairly close.
    let (one, _) = g.insert(&direction(0, 0.0), at(0)).unwrap();
    g.refresh(one, &direction(6, 0.0), Timestamp(0)).unwrap();
    let (two, _) = g.insert(&direction(0, 0.6), at(0)).unwrap();
    g.refresh(two, &direction(0, 0.7), Timestamp(0)).unwrap();
    let query = direction(0, 0.0);
    let mut top = [Candidate::default(); 2];
    g.set_policy(MatchPolicy {
        aggregation: Aggregation::Max,
        ..*g.policy()
    });
    g.best_matches(&query, &mut top).unwrap();
    assert_eq!(top[0].id, one, "max: the exact exemplar wins");
    assert!((top[0].similarity.0 - 1.0).abs() < 1e-6);
    g.set_policy(MatchPolicy {
        aggregation: Aggregation::Mean,
        ..*g.policy()
    });
    g.best_matches(&query, &mut top).unwrap();
    assert_eq!(top[0].id, two, "mean: consistently close wins");
    assert!((top[1].similarity.0 - 0.5).abs() < 1e-6);
}

#[test]
fn best_matches_are_sorted_and_bounded_by_the_output() {
    let mut g = gallery(8);
    for axis in 0..8 {
        g.insert(&direction(axis * 2, 0.0), at(0)).unwrap();
    }
    let query: Vec<f32> = (0..DIM).map(|i| 1.0 + i as f32).collect();
    let mut top = [Candidate::default(); 3];
    assert_eq!(g.best_matches(&query, &mut top).unwrap(), 3);
    // The largest coordinates are the last axes: identities 8 (axis 14), 7 (axis 12), 6 (axis 10).
    assert_eq!(top.map(|c| c.id.0), [8, 7, 6]);
    let mut all = [Candidate::default(); 20];
    assert_eq!(g.best_matches(&query, &mut all).unwrap(), 8);
    assert!(
        all[..8]
            .windows(2)
            .all(|w| w[0].similarity.0 >= w[1].similarity.0)
    );
}

#[test]
fn int8_storage_agrees_with_f32_on_decisions() {
    let mut g8 =
        Gallery::with_budget(config(StorageFormat::Int8, 3, 8), MatchPolicy::default()).unwrap();
    let mut g32 = gallery(8);
    for axis in 0..8 {
        let v = direction(axis * 2, 0.3);
        g8.insert(&v, at(0)).unwrap();
        g32.insert(&v, at(0)).unwrap();
    }
    for axis in 0..8 {
        let q = direction(axis * 2, 0.35);
        let (mut a, mut b) = ([Candidate::default(); 1], [Candidate::default(); 1]);
        g8.best_matches(&q, &mut a).unwrap();
        g32.best_matches(&q, &mut b).unwrap();
        assert_eq!(a[0].id, b[0].id);
        assert!((a[0].similarity.0 - b[0].similarity.0).abs() < 5e-3);
    }
}

#[test]
fn timestamps_print_as_rfc3339_utc() {
    assert_eq!(Timestamp(0).to_string(), "1970-01-01T00:00:00.000Z");
    assert_eq!(
        Timestamp(951_782_400_123).to_string(),
        "2000-02-29T00:00:00.123Z"
    );
    assert_eq!(
        Timestamp(1_795_305_600_000).to_string(),
        "2026-11-22T00:00:00.000Z"
    );
}

/// Issue 22, "id wrap-around": an identity with the last id (from a file or an import) used to
/// make the next new identity reuse it, then 0, 1… — and the saved file then failed to load.
#[test]
fn ids_never_wrap_around() {
    let mut g = gallery(4);
    let (first, _) = g.insert(&direction(0, 0.0), at(0)).unwrap();
    let last = IdentityInfo {
        id: PersonId(u32::MAX),
        label: None,
        first_seen: Timestamp(1),
        last_seen: Timestamp(1),
        times_seen: 1,
        pinned: true,
        exemplars: 0,
    };
    g.restore_slot(&last).unwrap();
    assert_eq!(g.next_id(), PersonId(u32::MAX));
    assert!(matches!(
        g.insert(&direction(2, 0.0), at(2)),
        Err(GalleryError::IdsExhausted)
    ));
    let ids: Vec<u32> = g.identities().map(|i| i.id.0).collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(ids.contains(&first.0) && ids.contains(&u32::MAX), "{ids:?}");

    // The same from a header's next id alone.
    let mut g = gallery(4);
    g.reserve_ids_below(PersonId(u32::MAX));
    assert!(matches!(
        g.insert(&direction(0, 0.0), at(0)),
        Err(GalleryError::IdsExhausted)
    ));
    assert!(g.is_empty());
}

#[test]
fn forgetting_removes_only_unpinned_identities_last_seen_before() {
    let mut g = gallery(8);
    let (old, _) = g.insert(&direction(0, 0.0), at(1_000)).unwrap();
    let (recent, _) = g.insert(&direction(1, 0.0), at(9_000)).unwrap();
    let pinned = NewIdentity {
        label: Some("staff"),
        pinned: true,
        now: Timestamp(1_000),
    };
    let (kept, _) = g.insert(&direction(2, 0.0), pinned).unwrap();
    assert_eq!(g.forget_unseen(Timestamp(5_000)), 1);
    assert!(g.get(old).is_none());
    assert!(g.get(recent).is_some() && g.get(kept).is_some());
    assert_eq!(g.len(), 2);
    assert_eq!(g.forget_unseen(Timestamp(5_000)), 0);
}

/// docs/gallery.md's capacity table assumes 88 bytes per identity slot on 64-bit targets.
#[test]
#[cfg(target_pointer_width = "64")]
fn an_identity_slot_takes_the_documented_88_bytes() {
    assert_eq!(IDENTITY_SLOT_BYTES, 88);
}
