// Our kernels in place of tract's ops (embed::ops) on whole real models: the same embeddings
// as tract's own operators, for every batch/threads layout the embedder has (one part, parts
// side by side), and every fused op kind actually used. The kernels' own property tests (next to
// each kernel) check them op by op against naive references; parity.rs checks the result against
// onnxruntime on real crops.

use std::path::Path;

use reidcam::embed::{Kernels, Network, Rewritten, dot};
use reidcam::{EmbedConfig, Embedder, ManifestChoice, Preprocessor};

use crate::common::{pattern, repo, shared};

/// Embeds `batch` different crops with each engine and compares them.
fn same_embeddings(model: &Path, batch: usize, threads: usize) -> Rewritten {
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
            cosine > 0.99999 && worst < 1e-4,
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
    same_embeddings(model, 3, 2);
    same_embeddings(model, 2, 3);
    fused
}

#[test]
fn our_default_model_embeds_as_with_tracts_own_ops() {
    let fused = check_model(&repo().join("models/default.onnx"));
    // OSNet x0.25: stem conv, max pool + 2 average pools, 78 1×1, 60 depthwise, 24 gates.
    assert_eq!(
        (
            fused.conv,
            fused.pool,
            fused.pointwise,
            fused.depthwise,
            fused.gate
        ),
        (1, 3, 78, 60, 24),
        "{fused:?}"
    );
}

#[test]
fn reference_models_embed_as_with_tracts_own_ops() {
    if let Some(shared) = shared() {
        let osnet = check_model(&shared.join("models/osnet_x0_25_msmt17.onnx"));
        assert!(osnet.pointwise == 78 && osnet.gate == 24, "{osnet:?}");
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
    // YOLOX-Nano: full 3×3 convolutions (ours), stride-2 depthwise and SiLU (tract's), on a
    // synthetic frame; raw head outputs compared, with 2 threads (its large layers shared).
    let Some(shared) = shared() else { return };
    for name in ["yolox_nano.onnx", "bytetrack_nano_dynhw.onnx"] {
        let path = shared.join("models").join(name);
        let load = |kernels| Network::load_with_kernels(&path, 416, 416, 2, kernels).unwrap();
        let (mut ours, mut stock) = (load(Kernels::Reidcam), load(Kernels::Tract));
        for (i, (a, b)) in ours
            .input_mut()
            .iter_mut()
            .zip(stock.input_mut())
            .enumerate()
        {
            let v = ((i * 7919) % 251) as f32 / 251.0;
            (*a, *b) = (v, v);
        }
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
    }
}
