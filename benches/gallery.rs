//! Gallery matching speed: one query against 1k, 10k and 100k exemplars (512-d, K = 8), int8 and
//! f32, through the gallery with the detected SIMD kernels and with the scalar kernels, and a
//! naive baseline (a plain loop over a flat array of vectors) in the same run.
//!
//! `cargo bench --bench gallery`, then `python3 tools/bench_table.py` for ns per exemplar and the
//! ratios. Memory per identity is printed first.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

use reidcam::bench::XorShift;
use reidcam::gallery::{
    Candidate, Gallery, GalleryConfig, IdentityInfo, Kernels, MatchPolicy, PersonId, StorageFormat,
    Timestamp,
};

const DIM: usize = 512;
const K: usize = 8;
const SIZES: [usize; 3] = [1_000, 10_000, 100_000];

/// Deterministic vectors in [-1, 1).
fn vectors(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = XorShift::new(seed);
    (0..n * DIM).map(|_| rng.signed_unit()).collect()
}

fn gallery(format: StorageFormat, exemplars: usize, data: &[f32], kernels: Kernels) -> Gallery {
    let config = GalleryConfig {
        dim: DIM,
        exemplars: K,
        format,
        budget_bytes: 0,
    };
    let config = GalleryConfig {
        budget_bytes: config.heap_bytes(exemplars / K),
        ..config
    };
    let mut g = Gallery::with_kernels(config, MatchPolicy::default(), kernels).unwrap();
    for (i, person) in data.chunks(DIM * K).enumerate() {
        let info = IdentityInfo {
            id: PersonId(i as u32 + 1),
            label: None,
            first_seen: Timestamp(0),
            last_seen: Timestamp(0),
            times_seen: 1,
            pinned: false,
            exemplars: K,
        };
        g.restore(&info, person.chunks(DIM)).unwrap();
    }
    assert_eq!(
        g.identities().map(|i| i.exemplars).sum::<usize>(),
        exemplars
    );
    g
}

/// The naive baseline: best cosine over a flat array of unit vectors, a plain loop.
fn naive_f32(query: &[f32], flat: &[f32]) -> f32 {
    let mut best = f32::MIN;
    for e in flat.chunks_exact(DIM) {
        let mut s = 0.0;
        for i in 0..DIM {
            s += query[i] * e[i];
        }
        best = best.max(s);
    }
    best
}

fn naive_i8(query: &[i8], flat: &[i8]) -> i32 {
    let mut best = i32::MIN;
    for e in flat.chunks_exact(DIM) {
        let mut s = 0i32;
        for i in 0..DIM {
            s += i32::from(query[i]) * i32::from(e[i]);
        }
        best = best.max(s);
    }
    best
}

fn unit_rows(mut data: Vec<f32>) -> Vec<f32> {
    for row in data.chunks_mut(DIM) {
        let n = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        row.iter_mut().for_each(|x| *x /= n);
    }
    data
}

fn quantise(data: &[f32]) -> Vec<i8> {
    data.chunks(DIM)
        .flat_map(|row| {
            let scale = row.iter().fold(0.0f32, |m, x| m.max(x.abs())) / 127.0;
            row.iter().map(move |x| (x / scale).round() as i8)
        })
        .collect()
}

fn memory_per_identity() {
    for format in StorageFormat::ALL {
        let config = GalleryConfig {
            dim: DIM,
            exemplars: K,
            format,
            budget_bytes: 0,
        };
        println!(
            "memory per identity, {DIM}-d, K = {K}, {format}: {} bytes; 16 MiB holds {} identities",
            config.bytes_per_identity(),
            GalleryConfig {
                budget_bytes: 16 << 20,
                ..config
            }
            .capacity()
            .unwrap()
        );
    }
}

fn match_one_query(c: &mut Criterion) {
    memory_per_identity();
    println!("kernels: {}", Kernels::detect().name());
    let query = unit_rows(vectors(1, 99));
    let query_i8 = quantise(&query);
    let mut top = [Candidate::default(); 1];
    for &n in &SIZES {
        let data = unit_rows(vectors(n, n as u64));
        let mut group = c.benchmark_group(format!("match_{n}"));
        group.throughput(Throughput::Elements(n as u64));
        if n >= 100_000 {
            group.sample_size(20);
        }
        for format in [StorageFormat::Int8, StorageFormat::F32] {
            for (name, kernels) in [("simd", Kernels::detect()), ("scalar", Kernels::scalar())] {
                let mut g = gallery(format, n, &data, kernels);
                group.bench_function(BenchmarkId::new(format!("{format}_{name}"), n), |b| {
                    b.iter(|| g.best_matches(black_box(&query), &mut top).unwrap())
                });
            }
        }
        group.bench_function(BenchmarkId::new("f32_naive", n), |b| {
            b.iter(|| naive_f32(black_box(&query), black_box(&data)))
        });
        let flat_i8 = quantise(&data);
        group.bench_function(BenchmarkId::new("int8_naive", n), |b| {
            b.iter(|| naive_i8(black_box(&query_i8), black_box(&flat_i8)))
        });
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = match_one_query
}
criterion_main!(benches);
