//! What benchmarks and engine comparisons use beside embedding: the time per operator kind of a
//! run ([`Embedder::profile`]), and a model's copy with its subnormal weights flushed to zero for
//! engines that do not do it themselves ([`flush_subnormal_weights`]).

use std::sync::Arc;
use std::time::Instant;

use tract_onnx::prelude::*;

use super::{EmbedError, Embedder, ops, reason_line};

/// Rewrites an ONNX model with its subnormal f32 initializer values (|w| < 2⁻¹²⁶) set to zero,
/// which is what our kernels do at load time (see `embed::ops`): engines without that step pay a
/// microcode assist per product on x86 (onnxruntime's NCHWc kernels run OSNet x0.25 4× slower
/// with torchreid's weights). Returns the new model and how many values changed.
pub fn flush_subnormal_weights(bytes: &[u8], label: &str) -> Result<(Vec<u8>, usize), EmbedError> {
    use prost::Message;
    use tract_onnx::pb::{ModelProto, tensor_proto::DataType};
    let mut model = ModelProto::decode(bytes).map_err(|e| EmbedError::NotOnnx {
        model: label.to_owned(),
        reason: e.to_string(),
    })?;
    let mut flushed = 0;
    if let Some(graph) = model.graph.as_mut() {
        for tensor in &mut graph.initializer {
            if tensor.data_type != DataType::Float as i32 {
                continue;
            }
            flushed += ops::flush_subnormals(&mut tensor.float_data);
            for chunk in tensor.raw_data.chunks_exact_mut(4) {
                let v = f32::from_le_bytes(chunk.try_into().expect("4 bytes"));
                if v.is_subnormal() {
                    chunk.copy_from_slice(&0f32.to_le_bytes());
                    flushed += 1;
                }
            }
        }
    }
    Ok((model.encode_to_vec(), flushed))
}

/// Time spent in one kind of operator over a profiled run (see [`Embedder::profile`]).
#[derive(Clone, Debug, serde::Serialize)]
pub struct OpTime {
    /// tract's name for the operator, ours start with `Reidcam`.
    pub op: String,
    /// Nodes of this kind in the plan.
    pub nodes: usize,
    /// Mean time per run, ms.
    pub ms: f64,
}

impl Embedder {
    /// Runs the model's first part `runs` times (after one untimed run) as a single crop runs
    /// (on this thread, sharing its largest layers with the pool's threads when there are
    /// any), timing every node, and returns the time per operator kind, most expensive first
    /// (per node, with the op's parameters, its input shapes and the node's name, when
    /// `REIDCAM_PROFILE_NODES` is set). The timing itself adds a little per node.
    pub fn profile(&mut self, runs: usize) -> Result<Vec<OpTime>, EmbedError> {
        let part = &mut self.parts[0];
        let (label, pool) = (&self.label, self.pool.0.as_ref());
        ops::with_kernel_pool(pool, self.crop_work, || {
            profile_plan(&mut part.state, &part.input, label, runs)
        })
    }
}

/// `profile` lines for a report: the total, then each operator kind's time, share and nodes.
pub fn profile_table(ops: &[OpTime]) -> String {
    let total: f64 = ops.iter().map(|o| o.ms).sum();
    let mut table = format!("profile        {total:.3} ms/run in operators (timed per node):");
    for o in ops {
        table += &format!(
            "\n  {:>8.3} ms {:>5.1}%  {:>4} x {}",
            o.ms,
            100.0 * o.ms / total,
            o.nodes,
            o.op
        );
    }
    table
}

/// Runs `state`'s plan on `input` `runs` times (after one untimed run), timing every node.
pub(super) fn profile_plan(
    state: &mut TypedSimpleState,
    input: &Arc<Tensor>,
    label: &str,
    runs: usize,
) -> Result<Vec<OpTime>, EmbedError> {
    let runs = runs.max(1);
    let per_node = std::env::var_os("REIDCAM_PROFILE_NODES").is_some();
    let mut times: std::collections::HashMap<String, (usize, f64)> = Default::default();
    for run in 0..=runs {
        let input = TValue::from_const(Arc::clone(input));
        let mut seen = std::collections::HashSet::new();
        state
            .run_plan_with_eval(tvec![input], |ctx, state, node, inputs| {
                let shapes = if per_node {
                    let shapes: Vec<String> =
                        inputs.iter().map(|i| format!("{:?}", i.shape())).collect();
                    shapes.join(" ")
                } else {
                    String::new()
                };
                let started = Instant::now();
                let outputs = tract_onnx::tract_core::plan::eval(ctx, state, node, inputs);
                if run > 0 {
                    let key = if per_node {
                        format!(
                            "{} {} <- {} [{}]",
                            node.op().name(),
                            node.op().info().unwrap_or_default().join(" "),
                            shapes,
                            node.name
                        )
                    } else {
                        node.op().name().to_string()
                    };
                    let entry = times.entry(key).or_default();
                    entry.1 += started.elapsed().as_secs_f64() * 1e3;
                    if run == 1 && seen.insert(node.id) {
                        entry.0 += 1;
                    }
                }
                outputs
            })
            .map_err(|e| EmbedError::Run {
                model: label.to_owned(),
                reason: reason_line(&e),
            })?;
    }
    let mut ops: Vec<OpTime> = times
        .into_iter()
        .map(|(op, (nodes, ms))| OpTime {
            op,
            nodes,
            ms: ms / runs as f64,
        })
        .collect();
    ops.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    Ok(ops)
}
