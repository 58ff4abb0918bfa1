//! int8 1×1 convolution with f32 edges: the `QLinearConv` of a quantised model, which reads the
//! f32 output of the op before it and quantises it itself.
//!
//! The input arrives as f32 planes and is quantised on the fly (`q = clamp(round(x / s_x) + z_x,
//! 0, 255)`, rounding half to even as ONNX's `QuantizeLinear`) into a scratch of 32-bit words,
//! each holding four input channels of one pixel; the product runs on those words with
//! dot-product instructions (AVX-512 VNNI `vpdpbusd`: u8 × i8, 64 per instruction; NEON `sdot`:
//! i8 × i8, 16 per instruction, the codes shifted by −128) into exact int32 sums; the store adds
//! the int32 bias and the zero-point correction and scales to f32 (`(Σ w·(q − z_x) + b) · s_x ·
//! s_w`), then adds the residual and applies the ReLU. The output is not requantised to the
//! model's u8 output grid: a quantised reader quantises it anyway (to that same grid), and a
//! float reader (the ReLU after OSNet's convolutions) gets the more precise value; skipping it
//! saves four instructions per value in a store that, at OSNet's 16–128 input channels, costs as
//! much as the product.
//!
//! Without dot products, AVX2 multiplies codes widened to 16 bits (`vpmaddwd`) and aarch64
//! NEON widening multiplies (`smull`/`smlal` i8 × i8 → i16, `sadalp` into i32). Every kind
//! gives bit for bit [`reference`]'s result, so an int8 model gives the same embeddings on every
//! CPU that runs one of them. On aarch64 cores without `sdot` (the Raspberry Pi 4's
//! Cortex-A72, the A53) [`Dot::detect`] picks NEON's widening product: on a cortex-a72 our
//! default int8 model costs 0.79× the float model's guest instructions through it and
//! OSNet x0.25's int8 0.82× (the float path from dequantised weights, which gives other
//! embeddings, 1.00×). A portable product in plain Rust (`portable.rs`) makes
//! the same integers on any CPU, for checking and on request (`REIDCAM_INT8_DOT=portable`;
//! 2.48× the float model's instructions on a Cortex-A72). CPUs with nothing better (x86 below
//! AVX2, armv7) run the model's convolutions in float from their dequantised weights
//! (`embed::int8`; `REIDCAM_INT8_DOT=none` anywhere).

use std::ops::Range;

use super::pointwise::Shape;

/// Words after an image's `[groups][pixels]` input words that a product may read and never
/// uses: the NEON products load a row's last partial tile of 8 pixels whole (the lanes past
/// the row end are the next row's words, or these, and their sums are not stored).
pub const WORDS_SLACK: usize = 8;

/// Where [`Layer::part`]s start: a multiple of every product's tile of outputs (VNNI's 8, AVX2's
/// and NEON's 4), so that each part's tiles are the whole layer's.
pub const PART_ALIGN: usize = 8;

/// A tensor's u8 quantisation: `real = (q - zero) · scale`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Grid {
    pub scale: f32,
    pub zero: i32,
}

/// The dot-product instructions a CPU has for int8 products.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dot {
    /// Plain Rust integer products (`portable.rs`), on every CPU: never chosen by itself (the
    /// dequantised float path is faster wherever there is nothing better), but the same
    /// integers as the others, for checking them and for `REIDCAM_INT8_DOT=portable`.
    Portable,
    /// AVX2 without dot products: codes widened to 16 bits, `vpmaddwd` (i16 pairs → i32, 16
    /// multiply-adds per instruction, exact like the others).
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX-512 VNNI (`vpdpbusd` on 512-bit registers).
    #[cfg(target_arch = "x86_64")]
    Vnni512,
    /// NEON without dot products (Armv8.0: the Raspberry Pi 4's Cortex-A72, the A53):
    /// widening multiplies (`smull`/`smlal`, i8 × i8 → i16, 8 per instruction) summed
    /// pairwise into i32 (`sadalp`). Exact like the others.
    #[cfg(target_arch = "aarch64")]
    NeonWiden,
    /// Armv8.2 dot product (`sdot`).
    #[cfg(target_arch = "aarch64")]
    NeonDot,
}

impl std::fmt::Display for Dot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // By value: on targets without any kind the match is empty.
        f.write_str(match *self {
            Dot::Portable => "portable",
            #[cfg(target_arch = "x86_64")]
            Dot::Avx2 => "avx2-madd",
            #[cfg(target_arch = "x86_64")]
            Dot::Vnni512 => "avx512-vnni",
            #[cfg(target_arch = "aarch64")]
            Dot::NeonWiden => "neon-smlal",
            #[cfg(target_arch = "aarch64")]
            Dot::NeonDot => "neon-dotprod",
        })
    }
}

impl Dot {
    /// The dot-product instructions this CPU has, if any. `REIDCAM_INT8_DOT` chooses, to
    /// compare: `none` pretends there are none (so does `REIDCAM_KERNELS` naming a set
    /// without them), a kind's name (as displayed: `neon-smlal`) picks that kind if the CPU
    /// runs it (a warning and the usual choice if not).
    pub fn detect() -> Option<Dot> {
        if let Ok(wanted) = std::env::var("REIDCAM_INT8_DOT") {
            if wanted == "none" {
                return None;
            }
            match Dot::available()
                .into_iter()
                .find(|d| d.to_string() == wanted)
            {
                Some(dot) => return Some(dot),
                None => log::warn!(
                    "REIDCAM_INT8_DOT={wanted}: not an int8 product this CPU runs (it runs: \
                     none{}); using the usual choice",
                    Dot::available()
                        .iter()
                        .map(|d| format!(", {d}"))
                        .collect::<String>()
                ),
            }
        }
        // On x86 the kernel set decides (`REIDCAM_KERNELS=avx2+fma` runs what an AVX2-only
        // machine runs): VNNI with AVX-512, 16-bit multiply-adds with AVX2, none below.
        #[cfg(target_arch = "x86_64")]
        return match super::Isa::detect() {
            super::Isa::Avx512 => Dot::available().last().copied(),
            super::Isa::Avx2Fma => Some(Dot::Avx2).filter(|d| d.is_available()),
            super::Isa::Baseline => None,
        };
        // On aarch64 `sdot` where the core has it, else (Cortex-A72, A53) the widening
        // product: the same embeddings as every other int8 product, and on cortex-a72 no more
        // guest instructions than the float model (our default model 0.79×, OSNet x0.25 0.82×;
        // the float path from dequantised weights, with other embeddings: 1.00×).
        #[cfg(target_arch = "aarch64")]
        return Some(Dot::NeonDot)
            .filter(|d| d.is_available())
            .or(Some(Dot::NeonWiden));
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        None
    }

    /// Every kind this CPU runs (none on many).
    pub fn available() -> Vec<Dot> {
        Dot::ALL
            .iter()
            .copied()
            .filter(|dot| dot.is_available())
            .collect()
    }

    /// Whether this CPU runs `self` (a `Dot` may come from a test, not `detect`). Checked by
    /// every layer call (the stem's once per output row): no allocation, and the standard
    /// library caches the CPU's features.
    pub fn is_available(self) -> bool {
        // By value: on targets without any kind the match is empty.
        match self {
            Dot::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Dot::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Dot::Vnni512 => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            // NEON is part of every aarch64 CPU.
            #[cfg(target_arch = "aarch64")]
            Dot::NeonWiden => true,
            #[cfg(target_arch = "aarch64")]
            Dot::NeonDot => std::arch::is_aarch64_feature_detected!("dotprod"),
        }
    }

    /// Every kind this build has code for.
    const ALL: &[Dot] = &[
        Dot::Portable,
        #[cfg(target_arch = "x86_64")]
        Dot::Avx2,
        #[cfg(target_arch = "x86_64")]
        Dot::Vnni512,
        #[cfg(target_arch = "aarch64")]
        Dot::NeonWiden,
        #[cfg(target_arch = "aarch64")]
        Dot::NeonDot,
    ];
}

/// One prepared layer (made once at load).
#[derive(Debug)]
pub struct Layer {
    pub shape: Shape,
    /// Input channels in groups of four (the last one padded with zero weights).
    groups: usize,
    /// `[outputs][groups]`: four i8 weights per word, channel `4g + j` in byte `j` (VNNI
    /// broadcasts one word per output; the portable product reads them too).
    words: Vec<u32>,
    /// `[outputs][groups][2]`: the weights as 16-bit pairs for `vpmaddwd`, channels `4g` and
    /// `4g + 2` in the first word, `4g + 1` and `4g + 3` in the second (the input word's even
    /// and odd bytes, masked out in place). Empty where unused: on other CPUs, and for weights
    /// bounded in pairs (`paired`: AVX2 multiplies the words as they are).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pairs: Vec<u32>,
    /// `[outputs / 4 (rounded up)][groups][4]`: the same words, four outputs side by side (NEON
    /// multiplies by one of four lanes). Empty but on aarch64.
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    words_by4: Vec<u32>,
    /// `words_by4` for the widening NEON product on narrow weights: in each block, each pair
    /// of groups `2k`, `2k + 1` as `[o0 g, o0 g+1, o1 g, o1 g+1, o2 g, …]` (one `ld4r` then
    /// gives two outputs' weights for both groups), a last odd group as in `words_by4`. Empty
    /// but on aarch64 for narrow weights.
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    words_pairs: Vec<u32>,
    /// Per output: bias − z_x·Σw (u8 input: VNNI) and bias − (z_x − 128)·Σw (i8 input: sdot).
    corr_u8: Vec<i32>,
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    corr_i8: Vec<i32>,
    /// Per output: s_x · s_w.
    multiplier: Vec<f32>,
    /// Distance between output channels in the output (and residual): `pixels`, unless the
    /// output rows are parts of larger planes (`qconv` runs one output row at a time).
    y_stride: usize,
    x_inv: f32,
    x_zero: i32,
    /// Every weight is in [−127, 127]: two i8 × i8 products (the codes in [−128, 127]) then fit
    /// one i16 lane (|sum| ≤ 32,512), so the widening NEON product adds two before widening.
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    narrow: bool,
    /// Every pair of neighbouring input channels' weights (`4g`, `4g + 1` and `4g + 2`,
    /// `4g + 3`) adds up to at most 128 in magnitude within each sign: two u8 code × i8 weight
    /// products then fit one i16 lane (≤ 255 · 128 = 32,640), so AVX2 multiplies the codes as
    /// they are by the weight words with `vpmaddubsw` (32 multiply-adds per instruction, no
    /// saturation possible), not widened to 16 bits. `tools/quantize.py` makes such weights.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    paired: bool,
}

impl Layer {
    /// `weights` `[outputs][inputs]` (zero point already removed), `bias` int32 in units of
    /// `x.scale · w_scales[o]`, `w_scales` one per output. `None` if the input grid is not a
    /// u8 one or the int32 sums could overflow.
    pub fn new(
        shape: Shape,
        weights: &[i8],
        bias: &[i32],
        x: Grid,
        w_scales: &[f32],
    ) -> Option<Layer> {
        let Shape {
            inputs, outputs, ..
        } = shape;
        assert_eq!(weights.len(), inputs * outputs, "int8 pointwise weights");
        assert_eq!(bias.len(), outputs, "int8 pointwise bias");
        assert_eq!(w_scales.len(), outputs, "int8 pointwise weight scales");
        let valid = |g: Grid| g.scale > 0.0 && g.scale.is_finite() && (0..=255).contains(&g.zero);
        // The int32 sums must not overflow (a dead channel's bias, saturated at 2³¹ by the
        // quantiser, would).
        let largest = bias
            .iter()
            .map(|b| i64::from(b.unsigned_abs()))
            .max()
            .unwrap_or(0);
        let products = (inputs as i64) * 128 * 255;
        if !valid(x) || largest + products >= 1 << 31 {
            return None;
        }
        let groups = inputs.div_ceil(4);
        let mut words = vec![0u32; outputs * groups];
        let mut corr_u8 = Vec::with_capacity(outputs);
        let mut corr_i8 = Vec::with_capacity(outputs);
        for o in 0..outputs {
            let row = &weights[o * inputs..][..inputs];
            for (k, &w) in row.iter().enumerate() {
                words[o * groups + k / 4] |= u32::from(w as u8) << (8 * (k % 4));
            }
            let sum: i32 = row.iter().map(|&w| i32::from(w)).sum();
            corr_u8.push(bias[o] - x.zero * sum);
            corr_i8.push(bias[o] - (x.zero - 128) * sum);
        }
        let paired = weights
            .chunks(inputs)
            .all(|row| row.chunks(2).all(pair_fits_i16));
        // Each product's own weight layout, made only where it runs: the widened pairs for
        // AVX2 on weights that are not bounded in pairs, the words by four outputs for NEON.
        let pair = |w: u32, a: u32, b: u32| {
            let half = |j: u32| u32::from(((w >> (8 * j)) as u8 as i8) as i16 as u16);
            half(a) | half(b) << 16
        };
        let pairs = if cfg!(target_arch = "x86_64") && !paired {
            words
                .iter()
                .flat_map(|&w| [pair(w, 0, 2), pair(w, 1, 3)])
                .collect()
        } else {
            Vec::new()
        };
        let mut words_by4 = Vec::new();
        if cfg!(target_arch = "aarch64") {
            words_by4.resize(outputs.div_ceil(4) * groups * 4, 0u32);
            for o in 0..outputs {
                for g in 0..groups {
                    words_by4[((o / 4) * groups + g) * 4 + o % 4] = words[o * groups + g];
                }
            }
        }
        let narrow = weights.iter().all(|&w| w != i8::MIN);
        let words_pairs = if cfg!(target_arch = "aarch64") && narrow {
            let mut by_pairs = words_by4.clone();
            for block in by_pairs.chunks_exact_mut(groups * 4) {
                for pair in block.chunks_exact_mut(8) {
                    let plain: [u32; 8] = (&*pair).try_into().expect("eight words");
                    for (j, word) in pair.iter_mut().enumerate() {
                        // Output j / 2, group j % 2 of the pair.
                        *word = plain[(j % 2) * 4 + j / 2];
                    }
                }
            }
            by_pairs
        } else {
            Vec::new()
        };
        Some(Layer {
            shape,
            groups,
            words,
            pairs,
            words_by4,
            words_pairs,
            corr_u8,
            corr_i8,
            multiplier: w_scales.iter().map(|&w| x.scale * w).collect(),
            y_stride: shape.pixels,
            x_inv: 1.0 / x.scale,
            x_zero: x.zero,
            narrow,
            paired,
        })
    }

    /// The same layer writing output channel `o` from `o · stride` (≥ `pixels`).
    pub fn with_y_stride(mut self, stride: usize) -> Layer {
        assert!(
            stride >= self.shape.pixels,
            "output stride below the row length"
        );
        self.y_stride = stride;
        self
    }

    /// Outputs `outputs` of this layer as a layer of their own: the same input words, and for
    /// those outputs the same weights, corrections and multipliers, so the same sums bit for bit
    /// (the kernel is chosen by the whole layer's weights: `narrow`, `paired`). Threads share a
    /// single image's layer this way, each with its part of the outputs. `outputs.start` must
    /// be a multiple of [`PART_ALIGN`].
    pub fn part(&self, outputs: Range<usize>) -> Layer {
        let Range { start, end } = outputs;
        assert!(
            start % PART_ALIGN == 0 && start < end && end <= self.shape.outputs,
            "outputs {start}..{end} of {:?}",
            self.shape
        );
        let g = self.groups;
        let rows = |v: &[u32], per_output: usize| {
            if v.is_empty() {
                Vec::new()
            } else {
                v[start * per_output..end * per_output].to_vec()
            }
        };
        // NEON's layouts come in blocks of four outputs (`groups · 4` words each).
        let blocks = |v: &[u32]| {
            if v.is_empty() {
                Vec::new()
            } else {
                v[start / 4 * g * 4..end.div_ceil(4) * g * 4].to_vec()
            }
        };
        let each = |v: &[i32]| {
            if v.is_empty() {
                Vec::new()
            } else {
                v[start..end].to_vec()
            }
        };
        Layer {
            shape: Shape {
                outputs: end - start,
                ..self.shape
            },
            groups: g,
            words: rows(&self.words, g),
            pairs: rows(&self.pairs, 2 * g),
            words_by4: blocks(&self.words_by4),
            words_pairs: blocks(&self.words_pairs),
            corr_u8: each(&self.corr_u8),
            corr_i8: each(&self.corr_i8),
            multiplier: self.multiplier[start..end].to_vec(),
            ..*self
        }
    }

    /// Scratch words one image needs: `groups · pixels`, then [`WORDS_SLACK`] words that a
    /// product may read past the last row (and never uses).
    pub fn scratch_words(&self) -> usize {
        self.groups * self.shape.pixels + WORDS_SLACK
    }

    /// Runs the layer on one image: `input` `[inputs][pixels]`, `residual` and `out`
    /// `[outputs][pixels]`. `words` is scratch, grown here when too small.
    pub fn run(
        &self,
        dot: Dot,
        input: &[f32],
        residual: Option<&[f32]>,
        relu: bool,
        out: &mut [f32],
        words: &mut Vec<u32>,
    ) {
        let Shape {
            inputs,
            outputs,
            pixels,
        } = self.shape;
        assert_eq!(input.len(), inputs * pixels, "int8 pointwise input length");
        assert_eq!(out.len(), outputs * pixels, "int8 pointwise output length");
        let words = self.words_for(words);
        self.quantise_into(dot, input, words);
        self.product(dot, words, residual, relu, out);
    }

    /// The input words of one image for `dot` (`input` `[inputs][pixels]` →
    /// `words` `[groups][pixels]`, XORed with [`flip`](Self::flip)): what [`run`](Self::run)
    /// makes before its product, for layers that share them (`ops::QuantiseWords`).
    pub fn quantise_into(&self, dot: Dot, input: &[f32], words: &mut [u32]) {
        assert_eq!(words.len(), self.scratch_words(), "int8 pointwise words");
        let all = self.groups * self.shape.pixels;
        self.quantise_groups(dot, input, &mut words[..all], 0..self.groups);
    }

    /// Groups of input words of [`input_groups`](Self::input_groups) (each four channels'
    /// codes of every pixel), `rows` holding those groups' `[pixels]` rows: one thread's part of
    /// [`quantise_into`](Self::quantise_into)'s words, the same words however the groups are
    /// cut.
    pub fn quantise_groups(&self, dot: Dot, input: &[f32], rows: &mut [u32], groups: Range<usize>) {
        let Shape { inputs, pixels, .. } = self.shape;
        assert_eq!(input.len(), inputs * pixels, "int8 pointwise input length");
        assert!(
            groups.end <= self.groups,
            "input groups {groups:?} of {}",
            self.groups
        );
        assert_eq!(
            rows.len(),
            groups.len() * pixels,
            "int8 pointwise words of {groups:?}"
        );
        assert!(dot.is_available(), "{dot} not on this CPU");
        let (first, flip) = (groups.start, self.flip(dot));
        match dot {
            Dot::Portable => quantise_words(self, input, rows, first, flip),
            // SAFETY: the CPU has AVX2 (checked above).
            #[cfg(target_arch = "x86_64")]
            Dot::Avx2 => unsafe { quantise_avx2(self, input, rows, first, flip) },
            // SAFETY: the CPU has AVX-512F and VNNI (checked above).
            #[cfg(target_arch = "x86_64")]
            Dot::Vnni512 => unsafe { quantise_avx512(self, input, rows, first, flip) },
            // SAFETY: NEON is on every aarch64 CPU.
            #[cfg(target_arch = "aarch64")]
            Dot::NeonWiden | Dot::NeonDot => unsafe {
                quantise_neon(self, input, rows, first, flip)
            },
        }
    }

    /// Groups of four input channels: rows of input words.
    pub fn input_groups(&self) -> usize {
        self.groups
    }

    /// Whether `other` makes the same input words as `self` from the same input (same input
    /// channels, pixels and grid): the words can then be made once for both.
    pub fn same_words(&self, other: &Layer) -> bool {
        (
            self.shape.inputs,
            self.shape.pixels,
            self.x_inv,
            self.x_zero,
        ) == (
            other.shape.inputs,
            other.shape.pixels,
            other.x_inv,
            other.x_zero,
        )
    }

    /// What the input words are XORed with for `dot`: 0 for VNNI and AVX2 (u8 codes), 0x80 per
    /// byte on NEON (i8 codes, `code − 128`).
    pub fn flip(&self, dot: Dot) -> u32 {
        match dot {
            #[cfg(target_arch = "x86_64")]
            Dot::Avx2 | Dot::Vnni512 => 0,
            Dot::Portable => 0,
            #[cfg(target_arch = "aarch64")]
            Dot::NeonWiden | Dot::NeonDot => 0x8080_8080,
        }
    }

    /// The layer on input `words` made already (`[groups][pixels]`, four channels' codes per
    /// word, XORed with [`flip`](Self::flip)): `out` `[outputs][pixels]`, plus `residual`,
    /// through the ReLU.
    pub fn product(
        &self,
        dot: Dot,
        words: &[u32],
        residual: Option<&[f32]>,
        relu: bool,
        out: &mut [f32],
    ) {
        let Shape {
            outputs, pixels, ..
        } = self.shape;
        assert!(dot.is_available(), "{dot} not on this CPU");
        assert!(words.len() >= self.scratch_words(), "int8 product words");
        let needed = (outputs - 1) * self.y_stride + pixels;
        assert!(out.len() >= needed, "int8 product output length");
        if let Some(r) = residual {
            assert!(r.len() >= needed, "int8 product residual length");
        }
        match dot {
            Dot::Portable => portable::product(self, words, residual, relu, out),
            // SAFETY: the CPU has AVX2 (checked above); lengths checked above.
            #[cfg(target_arch = "x86_64")]
            Dot::Avx2 => unsafe { x86::product_avx2(self, words, residual, relu, out) },
            // SAFETY: the CPU has AVX-512F and VNNI (checked above); lengths checked above.
            #[cfg(target_arch = "x86_64")]
            Dot::Vnni512 => unsafe { x86::product(self, words, residual, relu, out) },
            // SAFETY: lengths checked above (NEON is on every aarch64 CPU).
            #[cfg(target_arch = "aarch64")]
            Dot::NeonWiden => unsafe { arm::product_widen(self, words, residual, relu, out) },
            // SAFETY: the CPU has the dot-product extension (checked above); lengths checked.
            #[cfg(target_arch = "aarch64")]
            Dot::NeonDot => unsafe { arm::product(self, words, residual, relu, out) },
        }
    }

    /// `words` grown to [`scratch_words`](Self::scratch_words) if shorter, and that many of them.
    pub fn words_for<'a>(&self, words: &'a mut Vec<u32>) -> &'a mut [u32] {
        let n = self.scratch_words();
        if words.len() < n {
            words.resize(n, 0);
        }
        &mut words[..n]
    }

    /// The u8 code of `x` on the input grid; NaN (which a sound model never makes) counts as
    /// 0.0, i.e. gives the zero point, as NEON's conversion (`fcvtns`) gives it without an
    /// instruction to catch NaN first. Clamped in f32 and converted without Rust's
    /// saturating-cast checks, so that loops over it vectorise (not `clamp`, which keeps NaN).
    #[inline(always)]
    #[allow(clippy::manual_clamp)]
    pub fn quantise(&self, x: f32) -> i32 {
        let scaled = (x * self.x_inv).round_ties_even();
        let scaled = if scaled.is_nan() { 0.0 } else { scaled };
        let v = (scaled + self.x_zero as f32).max(0.0).min(255.0);
        // SAFETY: `scaled` is not NaN, so `v` is an integer in [0, 255].
        unsafe { v.to_int_unchecked::<i32>() }
    }

    /// The f32 output of sum `acc` (bias and correction included) for output `o`, plus the
    /// residual, through the ReLU.
    #[inline(always)]
    pub fn store(&self, acc: f32, o: usize, residual: Option<f32>, relu: bool) -> f32 {
        let mut v = acc * self.multiplier[o];
        if let Some(r) = residual {
            v += r;
        }
        if relu { v.max(0.0) } else { v }
    }
}

/// Whether two neighbouring input channels' weights keep any two u8 codes' products summed
/// inside an i16: their positive weights add up to at most 128, their negative ones to at least
/// −128 (255 · 128 = 32,640). See `Layer::paired`.
pub fn pair_fits_i16(pair: &[i8]) -> bool {
    let (mut pos, mut neg) = (0i32, 0i32);
    for &w in pair {
        if w > 0 {
            pos += i32::from(w);
        } else {
            neg -= i32::from(w);
        }
    }
    pos <= 128 && neg <= 128
}

/// Calls `$outputs::<RES, RELU>(layer, words, residual, out)` with the residual and the ReLU as
/// constants, so that each product's store is straight-line code without branches.
macro_rules! with_store_variants {
    ($outputs:ident, $layer:expr, $words:expr, $residual:expr, $relu:expr, $out:expr) => {
        match ($residual, $relu) {
            (Some(r), true) => $outputs::<true, true>($layer, $words, r, $out),
            (Some(r), false) => $outputs::<true, false>($layer, $words, r, $out),
            (None, true) => $outputs::<false, true>($layer, $words, &[], $out),
            (None, false) => $outputs::<false, false>($layer, $words, &[], $out),
        }
    };
}

mod portable;

mod quantise;
pub(super) use quantise::quantise_bytes;
#[cfg(target_arch = "aarch64")]
pub(super) use quantise::quantise_bytes_neon;
use quantise::*;

#[cfg(target_arch = "x86_64")]
mod x86;

#[cfg(target_arch = "aarch64")]
mod arm;

/// The naive reference: quantise, exact integer products (i64), the same f32 store.
pub fn reference(
    layer: &Layer,
    weights: &[i8],
    bias: &[i32],
    input: &[f32],
    residual: Option<&[f32]>,
    relu: bool,
) -> Vec<f32> {
    let Shape {
        inputs,
        outputs,
        pixels,
    } = layer.shape;
    let mut out = vec![0.0; outputs * pixels];
    for o in 0..outputs {
        for p in 0..pixels {
            let mut acc = i64::from(bias[o]);
            for k in 0..inputs {
                let x = layer.quantise(input[k * pixels + p]) - layer.x_zero;
                acc += i64::from(weights[o * inputs + k]) * i64::from(x);
            }
            let at = o * pixels + p;
            out[at] = layer.store(acc as f32, o, residual.map(|r| r[at]), relu);
        }
    }
    out
}

#[cfg(test)]
mod tests;
