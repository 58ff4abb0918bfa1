// Our kernels in place of tract's ops (embed::ops) on whole real models: the same embeddings
// as tract's own operators, for every batch/threads layout the embedder has (one part, parts
// side by side), and every fused op kind actually used. The kernels' own property tests (next to
// each kernel) check them op by op against naive references; parity.rs checks the result against
// onnxruntime on real crops.

use std::path::Path;

use reidcam::detect::{Detections, Detector, YoloxConfig, YoloxDetector};
use reidcam::embed::{Dot, Kernels, Network, Rewritten, dot};
use reidcam::{EmbedConfig, Embedder, ManifestChoice, Preprocessor};

use crate::alloc_count::allocations_during;
use crate::common::{pattern, repo, shared};

/// A network's input filled with a pattern of values in [0, 1) that `seed` shifts.
fn fill_input(net: &mut Network, seed: usize) {
    for (i, v) in net.input_mut().iter_mut().enumerate() {
        *v = ((i * 7919 + seed) % 251) as f32 / 251.0;
    }
}

/// Once warm, a detector frame allocates nothing: every node of YOLOX is then one of our ops,
/// whose outputs are recycled. And the recycled tensors carry nothing over: a second frame gives
/// exactly what a fresh network gives. (One thread: the counter counts this thread's
/// allocations.)
#[test]
fn the_detector_allocates_nothing_once_warm() {
    let path = repo().join("models/detector.onnx");
    let load = || Network::load_with_kernels(&path, 416, 256, 1, Kernels::Reidcam).unwrap();
    let mut net = load();
    fill_input(&mut net, 0);
    let warm = net.run().unwrap().to_vec();
    for run in 0..3 {
        let (_, n) = allocations_during(|| net.run().map(<[f32]>::len).unwrap());
        assert_eq!(n, 0, "run {run}: {n} allocations");
    }
    fill_input(&mut net, 13);
    let again = net.run().unwrap().to_vec();
    let mut fresh = load();
    fill_input(&mut fresh, 13);
    assert_eq!(again, fresh.run().unwrap(), "a warm network's second frame");
    assert_ne!(again, warm);
}

/// The whole detector step — letterbox, network, decoding, NMS — allocates nothing per frame
/// once warm, on a Market frame with people in it (shared data) and on a synthetic one.
#[test]
fn a_detector_frame_allocates_nothing_once_warm() {
    let config = YoloxConfig {
        path: repo().join("models/detector.onnx"),
        input_width: 416,
        input_height: 256,
        min_height: 0,
        ..YoloxConfig::default()
    };
    let mut detector = YoloxDetector::load(config).unwrap();
    let mut frames = vec![("synthetic", pattern(1280, 720))];
    if let Some(shared) = shared() {
        let file = shared.join("data/market1501-frames/frames/c1s1_001051.jpg");
        frames.push(("market", reidcam::frame::load_image(&file).unwrap()));
    }
    let mut out = Detections::new();
    for (name, frame) in &frames {
        detector.detect(frame.view(), &mut out).unwrap();
        let (found, n) = allocations_during(|| {
            detector.detect(frame.view(), &mut out).unwrap();
            out.iter().count()
        });
        assert_eq!(n, 0, "{name}: {n} allocations in a warm frame");
        if *name == "market" {
            assert!(found > 0, "no person found on the Market frame");
        }
    }
}

/// With two threads per network (the detector's and the embedder's large layers shared with a
/// pool thread) nothing allocates on any thread once warm: counted for the whole process, in a
/// child process running only [`two_threads_allocate_nothing_alone`].
#[test]
fn with_two_threads_nothing_allocates_on_any_thread() {
    crate::alloc_count::run_alone("kernels::two_threads_allocate_nothing_alone");
}

#[test]
#[ignore = "run alone in a child process by with_two_threads_nothing_allocates_on_any_thread"]
fn two_threads_allocate_nothing_alone() {
    use crate::alloc_count::{alone_in_process, process_allocations_during};
    assert!(
        alone_in_process(),
        "counts the whole process: run it through its parent test"
    );
    let mut detector = Network::load(&repo().join("models/detector.onnx"), 416, 256, 2).unwrap();
    fill_input(&mut detector, 0);
    let config = EmbedConfig {
        batch: 1,
        threads: 2,
        kernels: Kernels::Reidcam,
    };
    let model = repo().join("models/default.onnx");
    let mut embedder = Embedder::load(&model, ManifestChoice::Sidecar, &config).unwrap();
    let mut pre = Preprocessor::with_max_source(&embedder.manifest().input, 120, 260);
    let crop = pattern(90, 230);
    let mut turn = || {
        detector.run().unwrap();
        embed_all(&mut embedder, &mut pre, &crop);
    };
    // Warm-up: each thread's scratch grows to the largest part it has claimed. (Fewer turns
    // under emulation, where one takes ~2 s.)
    let turns = if crate::common::emulated() { 8 } else { 20 };
    for _ in 0..turns {
        turn();
    }
    let ((), n) = process_allocations_during(|| {
        for _ in 0..turns {
            turn();
        }
    });
    eprintln!(
        "two threads: {n} allocations in the process in {turns} detector frames and embeddings"
    );
    assert_eq!(n, 0, "allocations on some thread with two threads");
}

/// One crop embedded by our ops on `threads` threads is the one on one thread, bit for bit:
/// however a layer or a block's streams are shared, each value is computed the same way.
fn same_on_threads(model: &Path, threads: usize) {
    let load = |threads| {
        let config = EmbedConfig {
            batch: 1,
            threads,
            kernels: Kernels::Reidcam,
        };
        Embedder::load(model, ManifestChoice::Sidecar, &config).unwrap()
    };
    let (mut one, mut more) = (load(1), load(threads));
    let mut pre = Preprocessor::with_max_source(&one.manifest().input, 120, 260);
    let crop = pattern(97, 241);
    pre.run(crop.view(), crop.bounds(), one.input_slot(0))
        .unwrap();
    pre.run(crop.view(), crop.bounds(), more.input_slot(0))
        .unwrap();
    let want = one.run(1).unwrap().as_flat().to_vec();
    // Twice: the second run reuses what the first left (recycled outputs, the streams' terms).
    for turn in 0..2 {
        let got = more.run(1).unwrap().as_flat().to_vec();
        let differ = got
            .iter()
            .zip(&want)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(
            differ,
            0,
            "{} turn {turn}: {differ} of {} values differ on {threads} threads",
            model.display(),
            want.len()
        );
    }
}

/// Embeds `batch` different crops with each engine and compares them.
fn same_embeddings(model: &Path, batch: usize, threads: usize) -> Rewritten {
    close_embeddings(model, batch, threads, 0.99999, 1e-4)
}

/// Embeds `batch` different crops with each engine: every slot's cosine above `min_cosine`, no
/// component further apart than `max_delta`.
fn close_embeddings(
    model: &Path,
    batch: usize,
    threads: usize,
    min_cosine: f32,
    max_delta: f32,
) -> Rewritten {
    let load = |kernels| {
        let config = EmbedConfig {
            batch,
            threads,
            kernels,
        };
        Embedder::load(model, ManifestChoice::Sidecar, &config).unwrap()
    };
    let (mut ours, mut stock) = (load(Kernels::Reidcam), load(Kernels::Tract));
    let mut pre = Preprocessor::with_max_source(&ours.manifest().input, 120, 260);
    for slot in 0..batch {
        let crop = pattern(90 + 7 * slot as u32, 230 + 5 * slot as u32);
        pre.run(crop.view(), crop.bounds(), ours.input_slot(slot))
            .unwrap();
        pre.run(crop.view(), crop.bounds(), stock.input_slot(slot))
            .unwrap();
    }
    let want = stock.run(batch).unwrap().as_flat().to_vec();
    let got = ours.run(batch).unwrap().as_flat().to_vec();
    let dim = ours.dim();
    for slot in 0..batch {
        let (g, w) = (&got[slot * dim..][..dim], &want[slot * dim..][..dim]);
        let cosine = dot(g, w);
        let worst = g
            .iter()
            .zip(w)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(
            cosine > min_cosine && worst < max_delta,
            "{} batch {batch} threads {threads} slot {slot}: cosine {cosine}, max |Δ| {worst}",
            model.display()
        );
    }
    // Different crops give different embeddings: a part that ran on stale input would show.
    if batch > 1 {
        let cosine = dot(&got[..dim], &got[dim..2 * dim]);
        assert!(cosine < 0.9999, "slots 0 and 1 embed alike ({cosine})");
    }
    ours.rewritten()
}

fn check_model(model: &Path) -> Rewritten {
    let fused = same_embeddings(model, 1, 1);
    // One crop on two threads: large layers' output channels split, at panel boundaries, and
    // OSNet's streams run side by side.
    same_embeddings(model, 1, 2);
    same_on_threads(model, 2);
    // Four threads: each of a block's four streams on its own (more threads than cores here).
    same_on_threads(model, 4);
    same_embeddings(model, 3, 2);
    same_embeddings(model, 2, 3);
    fused
}

#[test]
fn our_default_model_embeds_as_with_tracts_own_ops() {
    let fused = check_model(&repo().join("models/default.onnx"));
    // retail-0267's network in its plain form (an OSNet x0.5): stem conv, max pool + 2 average
    // pools, 78 1×1, 60 depthwise, 6 aggregations of 4 gated streams (SE and per-channel affine
    // gates), the head (the learnt global pooling, fc): every node ours, every output recycled;
    // each block's 4 streams (10 LightConv layers: 20 ops) and their sum one op.
    assert_eq!(
        (
            fused.conv,
            fused.pool,
            fused.pointwise,
            fused.depthwise,
            fused.gate,
            fused.gated_sum,
            fused.head,
            fused.recycled,
            fused.streams,
            fused.stream_layers,
        ),
        (1, 3, 78, 60, 24, 6, 1, 29, 6, 120),
        "{fused:?}"
    );
}

#[test]
fn reference_models_embed_as_with_tracts_own_ops() {
    if let Some(shared) = shared() {
        let osnet_path = shared.join("models/osnet_x0_25_msmt17.onnx");
        // Under emulation one crop on two threads (its large layers cut by output channels)
        // and three crops on two (a batch cut by crops); the host suite runs every layout.
        let osnet = if crate::common::emulated() {
            let fused = same_embeddings(&osnet_path, 1, 2);
            same_embeddings(&osnet_path, 3, 2);
            fused
        } else {
            check_model(&osnet_path)
        };
        assert!(
            osnet.pointwise == 78
                && osnet.gate == 24
                && osnet.gated_sum == 6
                && osnet.head == 1
                && osnet.streams == 6,
            "{osnet:?}"
        );
        // retail-0267 fixes its batch at 1: one layout only.
        let retail = same_embeddings(
            &shared.join("models/person-reidentification-retail-0267.onnx"),
            1,
            2,
        );
        assert!(retail.pointwise > 50 && retail.depthwise > 40, "{retail:?}");
    }
}

#[test]
fn the_tiny_fixture_model_embeds_as_with_tracts_own_ops() {
    // Whatever of it our kernels take (possibly nothing): the result must not change.
    check_model(&repo().join("tests/fixtures/models/tiny_reid.onnx"));
}

#[test]
fn detector_networks_compute_as_with_tracts_own_ops() {
    // YOLOX-Nano: the Focus stem folded into one stride-2 convolution, depthwise layers of
    // stride 1 and 2, SiLU fused into every convolution, the SPP's "same"-padded max pools, 1×1
    // convolutions of a Concat (tract splits them; the bias comes after the sum) — all ours; on a
    // synthetic frame, raw head outputs compared, with 2 threads (its large layers shared).
    let Some(shared) = shared() else { return };
    let ours_now = [
        (shared.join("models/yolox_nano.onnx"), 416, 416),
        (shared.join("models/bytetrack_nano_dynhw.onnx"), 416, 416),
        (repo().join("models/detector.onnx"), 736, 416),
    ];
    // Under emulation (tract's own ops take ~25 s a network there) our detector only: it is
    // YOLOX-Nano's network with the head cut to the person rows, and ByteTrack's is the same
    // layers with other weights; those two are left to the host suite.
    let emulated = crate::common::emulated();
    for (path, w, h) in ours_now {
        if emulated && !path.ends_with("models/detector.onnx") {
            eprintln!(
                "SKIPPED under emulation: {} (the host suite runs it)",
                path.display()
            );
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let load = |kernels| Network::load_with_kernels(&path, w, h, 2, kernels).unwrap();
        let (mut ours, mut stock) = (load(Kernels::Reidcam), load(Kernels::Tract));
        fill_input(&mut ours, 0);
        fill_input(&mut stock, 0);
        let want = stock.run().unwrap().to_vec();
        let got = ours.run().unwrap();
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            worst <= 1e-4 * scale.max(1.0),
            "{name}: max |Δ| {worst} (outputs up to {scale})"
        );
        // Nothing is left to tract: the residual adds after a SiLU, the upsamplings and the
        // head's concatenations, reshapes and sigmoids are ours too.
        let left: Vec<String> = ours
            .profile(1)
            .unwrap()
            .into_iter()
            .map(|op| op.op)
            .filter(|op| !op.starts_with("Reidcam") && op != "Source")
            .collect();
        assert!(left.is_empty(), "{name}: tract still runs {left:?}");
        // Each CSP block's 1×1 convolution of a concatenation reads both parts itself (the
        // SPP's four parts: two of them, 2 × 128 rows being what a block of AVX-512 tiles keeps
        // in L1).
        let parts = ours.rewritten().concat_parts;
        assert!(
            parts >= 8,
            "{name}: {parts} concatenation parts read by one op"
        );
        // The stem (16 channels over a quarter of the frame: 2.8–4.9 MB) and the stride-2
        // depthwise layer reading it, band by band.
        let banded = ours.rewritten().conv_depthwise;
        assert_eq!(banded, 1, "{name}: {banded} convolutions computed by bands");
    }
}

/// Our int8 path on `X_int8.onnx` against our float path on `X.onnx`, `batch` crops: the
/// cosine of each pair, the int8 embeddings, and what the loader rewrote.
fn int8_against_float(batch: usize, threads: usize) -> (Vec<f32>, Vec<f32>, Rewritten) {
    let load = |file: &str| {
        let config = EmbedConfig {
            batch,
            threads,
            kernels: Kernels::Reidcam,
        };
        Embedder::load(&repo().join(file), ManifestChoice::Sidecar, &config).unwrap()
    };
    let (mut int8, mut float) = (
        load("models/default_int8.onnx"),
        load("models/default.onnx"),
    );
    let mut pre = Preprocessor::with_max_source(&int8.manifest().input, 120, 260);
    for slot in 0..batch {
        let crop = pattern(90 + 7 * slot as u32, 230 + 5 * slot as u32);
        pre.run(crop.view(), crop.bounds(), int8.input_slot(slot))
            .unwrap();
        pre.run(crop.view(), crop.bounds(), float.input_slot(slot))
            .unwrap();
    }
    let q = int8.run(batch).unwrap().as_flat().to_vec();
    let f = float.run(batch).unwrap().as_flat().to_vec();
    let dim = int8.dim();
    let cosines = (0..batch)
        .map(|s| dot(&q[s * dim..][..dim], &f[s * dim..][..dim]))
        .collect();
    (cosines, q, int8.rewritten())
}

#[test]
fn the_int8_model_runs_through_our_int8_path_close_to_float() {
    // Against the float model it was quantised from (tract's own int8 graph is no oracle: on
    // this crop its embedding has cosine 0.94 to the float one, ours 0.9994; onnxruntime's int8
    // run is compared in benches/versus_onnxruntime.rs). Bit-exactness of the int8 products is
    // the kernel's property test; accuracy is the cuhk03-val evaluation.
    let mut single = None;
    for (batch, threads) in [(1, 1), (1, 2), (3, 2)] {
        let (cosines, embedding, done) = int8_against_float(batch, threads);
        // One crop on two threads (its int8 1×1 layers cut by outputs between them): the same
        // embedding bit for bit as on one.
        if batch == 1 {
            let first = single.get_or_insert_with(|| embedding.clone());
            let same = first
                .iter()
                .zip(&embedding)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same,
                "one crop on {threads} threads: another embedding than on one"
            );
        }
        for (slot, c) in cosines.iter().enumerate() {
            // Close to float, but not float: the products really ran on 8-bit codes.
            assert!(
                *c > 0.995 && *c < 0.999_999,
                "batch {batch} threads {threads} slot {slot}: cosine to float {c}"
            );
        }
        // 164 QLinearConv: all 78 1×1 and the stem in int8; from dequantised weights 60
        // depthwise, the 24 uses of the 6 SE gates' fcs (the other 6 gates are per-channel
        // affine) and the learnt global pooling. Without dot-product instructions, all 164
        // from dequantised weights.
        let (int8, stem) = if Dot::detect().is_some() {
            (78, 1)
        } else {
            (0, 0)
        };
        assert_eq!(
            (
                done.quantised,
                done.int8_pointwise,
                done.int8_conv,
                done.dequantised,
                done.dot
            ),
            (true, int8, stem, 164 - int8 - stem, Dot::detect()),
            "{done:?}"
        );
        // Then fused: residual adds and ReLUs into 16 of the int8 ones (each block's conv1 +
        // ReLU and conv3 + shortcut + ReLU, the two 1×1 after the stages, the stem's ReLU).
        // Without dot products they are float ones, fused as in the float model.
        let (pointwise, conv, quant_fused) = if int8 > 0 { (0, 0, 16) } else { (78, 1, 0) };
        assert_eq!(
            (
                done.depthwise,
                done.conv,
                done.gate,
                done.gated_sum,
                done.head,
                done.pointwise,
                done.quant_fused
            ),
            (60, conv, 24, 6, 1, pointwise, quant_fused),
            "{done:?}"
        );
        // Inputs quantised once: each block's first output for its four streams (6 blocks), and
        // the input of the three blocks with a downsampling convolution for it and the block's
        // first: 9 tensors for 30 readers.
        let shared = if int8 > 0 { (9, 30) } else { (0, 0) };
        assert_eq!(
            (done.quantised_once, done.shared_readers),
            shared,
            "{done:?}"
        );
    }
}

/// Puts `crop` in every slot of the embedder's input.
fn fill_slots(embedder: &mut Embedder, pre: &mut Preprocessor, crop: &reidcam::RgbImage) {
    for slot in 0..embedder.batch_size() {
        pre.run(crop.view(), crop.bounds(), embedder.input_slot(slot))
            .unwrap();
    }
}

/// Embeds `crop` in every slot; returns how many embeddings came out.
fn embed_all(embedder: &mut Embedder, pre: &mut Preprocessor, crop: &reidcam::RgbImage) -> usize {
    fill_slots(embedder, pre, crop);
    let n = embedder.batch_size();
    embedder.run(n).unwrap().len()
}

/// As [`embed_all`], returning the embeddings.
fn embeddings_of(
    embedder: &mut Embedder,
    pre: &mut Preprocessor,
    crop: &reidcam::RgbImage,
) -> Vec<f32> {
    fill_slots(embedder, pre, crop);
    let n = embedder.batch_size();
    embedder.run(n).unwrap().as_flat().to_vec()
}

/// Once warm, embedding a crop allocates nothing: the whole OSNet graph is our ops, whose
/// outputs are recycled from run to run (tract's own ops would allocate each output). And the
/// recycled tensors carry nothing over: after runs on one crop, another embeds exactly as in a
/// fresh embedder.
#[test]
fn embedding_allocates_nothing_once_warm() {
    let mut models = vec![
        repo().join("models/default.onnx"),
        repo().join("models/default_int8.onnx"),
    ];
    // OSNet x0.25's layers are our default model's kinds with other channel counts: under
    // emulation (~25 s a model there) it is left to the host suite.
    if !crate::common::emulated() {
        models.extend(shared().map(|s| s.join("models/osnet_x0_25_msmt17.onnx")));
    }
    let (first, second) = (pattern(90, 230), pattern(70, 200));
    for model in &models {
        // One crop; and four crops, each a part (one tract state each) run in turn.
        for batch in [1, 4] {
            let config = EmbedConfig {
                batch,
                threads: 1,
                kernels: Kernels::Reidcam,
            };
            let load = || Embedder::load(model, ManifestChoice::Sidecar, &config).unwrap();
            let mut embedder = load();
            let mut pre = Preprocessor::with_max_source(&embedder.manifest().input, 120, 260);
            let warm = embeddings_of(&mut embedder, &mut pre, &first);
            for run in 0..3 {
                let (got, n) = allocations_during(|| embed_all(&mut embedder, &mut pre, &first));
                assert_eq!(got, batch);
                assert_eq!(
                    n,
                    0,
                    "{} batch {batch} run {run}: {n} allocations",
                    model.display()
                );
            }
            let again = embeddings_of(&mut embedder, &mut pre, &second);
            let fresh = embeddings_of(&mut load(), &mut pre, &second);
            assert_eq!(again, fresh, "{} batch {batch}", model.display());
            assert_ne!(again, warm, "{} batch {batch}", model.display());
        }
    }
}

/// Our int8 model gives the same embeddings, bit for bit, whatever x86 kernel set runs it:
/// AVX-512 VNNI and AVX2's 16-bit multiply-adds make the same integer sums, and the float ops
/// between them sum in the same order on both. Runs `reidcam embed` with each set the CPU has
/// (`REIDCAM_KERNELS`); needs two of them (an AVX-512 machine), else says it is skipped. x86
/// only (the next test compares the int8 products of any CPU, NEON's two among them).
#[cfg(target_arch = "x86_64")]
#[test]
fn int8_embeddings_are_the_same_bits_on_every_x86_kernel_set() {
    let sets: Vec<&str> = ["avx2+fma", "avx512f"]
        .into_iter()
        .filter(|s| match *s {
            "avx512f" => std::arch::is_x86_feature_detected!("avx512f"),
            _ => std::arch::is_x86_feature_detected!("avx2"),
        })
        .collect();
    if sets.len() < 2 {
        eprintln!("SKIPPED: one int8 kernel set on this CPU ({sets:?}): nothing to compare");
        return;
    }
    let runs: Vec<(&str, &str)> = sets.iter().map(|&set| ("REIDCAM_KERNELS", set)).collect();
    same_int8_embeddings(&runs, &["avx2-madd", "avx512-vnni"]);
}

/// The same with every int8 product this CPU runs, under one kernel set (`REIDCAM_INT8_DOT`):
/// the portable one everywhere; on aarch64 the widening multiplies that Cortex-A72 and A53
/// cores can use (`neon-smlal`) and, on cortex-a76, `sdot`; on an AVX-512 machine VNNI and
/// AVX2's multiply-adds beside the AVX-512 float kernels. Needs two kinds, else says it is
/// skipped.
#[test]
fn int8_embeddings_are_the_same_bits_with_every_int8_product() {
    let kinds: Vec<String> = reidcam::embed::Dot::available()
        .iter()
        .map(|d| d.to_string())
        .collect();
    if kinds.len() < 2 {
        eprintln!("SKIPPED: {kinds:?}: fewer than two int8 products on this CPU to compare");
        return;
    }
    let runs: Vec<(&str, &str)> = kinds
        .iter()
        .map(|k| ("REIDCAM_INT8_DOT", k.as_str()))
        .collect();
    let names: Vec<&str> = kinds.iter().map(String::as_str).collect();
    same_int8_embeddings(&runs, &names);
}

/// Runs `reidcam embed` on our int8 model and four crops once per `(variable, value)` of
/// `runs`, checks that run `i` multiplied with `products[i]` (its log says so), and that every
/// run printed the same embeddings.
fn same_int8_embeddings(runs: &[(&str, &str)], products: &[&str]) {
    let dir = crate::common::scratch("int8-bits");
    let crops: Vec<String> = (0..4)
        .map(|i| {
            let p = dir.join(format!("c{i}.png"));
            let image = pattern(40 + 9 * i, 100 + 7 * i);
            std::fs::write(&p, crate::common::encode(&image, image::ImageFormat::Png)).unwrap();
            p.to_str().unwrap().to_owned()
        })
        .collect();
    let model = repo().join("models/default_int8.onnx");
    let outputs: Vec<String> = runs
        .iter()
        .zip(products)
        .map(|(&(var, value), want)| {
            let out = crate::common::command(Path::new(env!("CARGO_BIN_EXE_reidcam")))
                .env(var, value)
                .env("RUST_LOG", "info")
                .args(["embed", "--model", model.to_str().unwrap()])
                .args(&crops)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{var}={value}: {err}");
            assert!(
                err.contains(want),
                "{var}={value} should multiply with {want}: {err}"
            );
            let out = String::from_utf8(out.stdout).unwrap();
            assert_eq!(out.lines().count(), crops.len(), "{out}");
            out
        })
        .collect();
    for (run, out) in runs.iter().zip(&outputs).skip(1) {
        assert_eq!(
            &outputs[0], out,
            "int8 embeddings differ: {:?} against {run:?}",
            runs[0]
        );
    }
}

/// `reidcam detect --profile` times the default detector per operator kind, and the table shows
/// our kernels carrying its 1×1 convolutions and every depthwise one, stride 2 included (what
/// is left to tract is listed beside them: docs/speed.md).
#[test]
fn detect_profile_shows_our_kernels_in_the_detector() {
    let dir = crate::common::scratch("detect-profile");
    let image = dir.join("frame.png");
    std::fs::write(
        &image,
        crate::common::encode(&pattern(320, 180), image::ImageFormat::Png),
    )
    .unwrap();
    // Under emulation 2 runs, not 20: which operators run is what is checked here.
    let runs = if crate::common::emulated() { "2" } else { "20" };
    let out = crate::common::command(Path::new(env!("CARGO_BIN_EXE_reidcam")))
        .args([
            "detect",
            "--profile",
            "--profile-runs",
            runs,
            "--size",
            "320x192",
        ])
        .arg(&image)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("ms/run in operators"), "{err}");
    let pointwise = err
        .lines()
        .find(|l| l.ends_with("x ReidcamPointwise"))
        .unwrap_or_else(|| panic!("no ReidcamPointwise line: {err}"));
    let nodes: usize = pointwise
        .split_whitespace()
        .rev()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{pointwise}"));
    assert!(nodes > 50, "{pointwise}");
    assert!(err.contains("x ReidcamDepthwise3x3"), "{err}");
    assert!(
        !err.contains("x DepthWiseConv"),
        "tract still runs a depthwise: {err}"
    );
}
