//! Output tensors our ops reuse from run to run when every reader is ours (no allocation per crop).

use std::cell::RefCell;
use std::sync::Arc;

use tract_onnx::tract_core::internal::*;

/// Output tensors our ops kept on this thread, for later runs (see [`with_output`]).
pub(super) struct Outputs {
    tensors: Vec<Recycled>,
    /// Counts takes, to find the least recently used tensor.
    clock: u64,
}

pub(super) struct Recycled {
    tensor: Arc<Tensor>,
    used: u64,
}

/// Tensors kept per thread before the least recently used free one makes room. A model keeps far
/// fewer: OSNet x0.25 at 256×128 23 (2.7 MB), the daemon's thread with YOLOX-Nano and our
/// default model 34 (4.7 MB).
pub(super) const KEPT_OUTPUTS: usize = 128;

thread_local! {
    static OUTPUTS: RefCell<Outputs> = const {
        RefCell::new(Outputs {
            tensors: Vec::new(),
            clock: 0,
        })
    };
}

impl Outputs {
    /// A tensor of `shape` no one else holds: a kept one of the same length that tract has
    /// dropped since (after its last reader, or at the end of the run), else a new one.
    fn take(&mut self, shape: &[usize]) -> TractResult<Recycled> {
        self.clock += 1;
        let len: usize = shape.iter().product();
        let free = |r: &Recycled| Arc::strong_count(&r.tensor) == 1;
        if let Some(ix) = self
            .tensors
            .iter()
            .position(|r| free(r) && r.tensor.len() == len)
        {
            let mut kept = self.tensors.swap_remove(ix);
            Arc::get_mut(&mut kept.tensor)
                .expect("no other holder")
                .set_shape(shape)?;
            kept.used = self.clock;
            return Ok(kept);
        }
        if self.tensors.len() >= KEPT_OUTPUTS
            && let Some(ix) = (0..self.tensors.len())
                .filter(|&i| free(&self.tensors[i]))
                .min_by_key(|&i| self.tensors[i].used)
        {
            self.tensors.swap_remove(ix);
        }
        // SAFETY: every kernel writes all of its output (each asserts the output length), and
        // the tensor is not read before `fill` returns.
        let tensor = unsafe { Tensor::uninitialized::<f32>(shape)? };
        Ok(Recycled {
            tensor: Arc::new(tensor),
            used: self.clock,
        })
    }
}

/// The output of one of our ops: its shape, and whether it is recycled (see [`with_output`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Output {
    pub(super) shape: TVec<usize>,
    pub(super) recycle: bool,
}

impl Output {
    pub(super) fn new(shape: TVec<usize>) -> Self {
        Output {
            shape,
            recycle: false,
        }
    }
}

/// An f32 output tensor of `output`'s shape, filled by `fill`.
///
/// A recycled output allocates nothing once warm: the tensor stays on a per-thread list after
/// the op hands it to tract, and once tract has dropped it (a value goes after its last reader,
/// the rest at the end of the run) it serves the next output of the same length — so a model
/// run reuses the tensors of the run before, and the memory held is about the model's live set.
/// [`recycle_outputs`] turns it on where every reader is one of our ops: some of tract's ops
/// compute in place in an input no one else holds, and would copy a recycled one.
pub(super) fn with_output(
    output: &Output,
    fill: impl FnOnce(&mut [f32]) -> TractResult<()>,
) -> TractResult<TVec<TValue>> {
    if !output.recycle {
        // SAFETY: every kernel writes all of its output (each asserts the output length), and
        // the tensor is not read before `fill` returns.
        let mut tensor = unsafe { Tensor::uninitialized::<f32>(&output.shape)? };
        fill(tensor.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?)?;
        return Ok(tvec!(tensor.into_tvalue()));
    }
    let mut out = OUTPUTS.with_borrow_mut(|o| o.take(&output.shape))?;
    let tensor = Arc::get_mut(&mut out.tensor).expect("taken tensors have no other holder");
    fill(tensor.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?)?;
    let value = TValue::from_const(Arc::clone(&out.tensor));
    OUTPUTS.with_borrow_mut(|o| o.tensors.push(out));
    Ok(tvec!(value))
}
