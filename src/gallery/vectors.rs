//! How exemplar embeddings are stored: one arena of `slots × dim` values in the chosen
//! [`StorageFormat`], allocated once, plus a small header per slot.
//!
//! Every similarity is a cosine: `dot(q, e) · inv_norm(q) · inv_norm(e)`, where the inverse norms
//! are those of the *stored* vectors (after quantisation), so that int8 rounding does not bias
//! scores upwards or downwards.

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::kernels::Kernels;

/// The element type exemplars are stored in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageFormat {
    /// `i8` with one symmetric `f32` scale per vector (`x ≈ scale · q`, `q ∈ [-127, 127]`).
    Int8,
    /// IEEE half precision.
    F16,
    /// IEEE single precision.
    F32,
}

impl StorageFormat {
    pub const ALL: [StorageFormat; 3] =
        [StorageFormat::Int8, StorageFormat::F16, StorageFormat::F32];

    pub fn bytes_per_value(self) -> usize {
        match self {
            StorageFormat::Int8 => 1,
            StorageFormat::F16 => 2,
            StorageFormat::F32 => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            StorageFormat::Int8 => "int8",
            StorageFormat::F16 => "f16",
            StorageFormat::F32 => "f32",
        }
    }

    /// The code used in gallery files.
    pub(crate) fn code(self) -> u8 {
        match self {
            StorageFormat::Int8 => 1,
            StorageFormat::F16 => 2,
            StorageFormat::F32 => 3,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Self> {
        StorageFormat::ALL.into_iter().find(|f| f.code() == code)
    }
}

impl std::fmt::Display for StorageFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for StorageFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        StorageFormat::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| format!("unknown storage format {s:?}: expected int8, f16 or f32"))
    }
}

/// Per-slot header: the int8 scale (1 for float formats) and the inverse L2 norm of the stored
/// values (0 for a zero vector, which then scores 0 against everything).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct SlotHeader {
    pub scale: f32,
    pub inv_norm: f32,
}

pub(crate) const SLOT_HEADER_BYTES: usize = std::mem::size_of::<SlotHeader>();

/// Values converted per step in the f16 paths (a stack buffer, no allocation).
const F16_CHUNK: usize = 64;

enum Values {
    Int8(Vec<i8>),
    F16(Vec<f16>),
    F32(Vec<f32>),
}

/// `slots` vectors of `dim` values, allocated once.
pub(crate) struct Arena {
    dim: usize,
    values: Values,
    headers: Vec<SlotHeader>,
}

/// A query in the form the arena's format compares fastest against. Sized once per gallery.
pub(crate) struct PreparedQuery {
    unit: Vec<f32>,
    quantised: Vec<i8>,
    quantised_inv_norm: f32,
}

impl PreparedQuery {
    pub fn with_dim(dim: usize) -> Self {
        PreparedQuery {
            unit: vec![0.0; dim],
            quantised: vec![0; dim],
            quantised_inv_norm: 0.0,
        }
    }

    /// The normalised query.
    pub fn unit(&self) -> &[f32] {
        &self.unit
    }

    /// Heap bytes of a prepared query of `dim` values.
    pub fn bytes(dim: usize) -> usize {
        dim * (std::mem::size_of::<f32>() + std::mem::size_of::<i8>())
    }

    /// Normalises `query` (and quantises it when the arena is int8). False if `query` is zero or
    /// not finite.
    pub fn set(&mut self, query: &[f32], format: StorageFormat) -> bool {
        let norm = query.iter().map(|v| v * v).sum::<f32>().sqrt();
        if !(norm.is_finite() && norm > 0.0) {
            return false;
        }
        for (u, &v) in self.unit.iter_mut().zip(query) {
            *u = v / norm;
        }
        if format == StorageFormat::Int8 {
            let header = quantise(&self.unit, &mut self.quantised);
            self.quantised_inv_norm = header.inv_norm;
        }
        true
    }
}

/// Symmetric per-vector int8 quantisation of `values` into `out`.
fn quantise(values: &[f32], out: &mut [i8]) -> SlotHeader {
    let max = values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    if max == 0.0 {
        out.fill(0);
        return SlotHeader::default();
    }
    let scale = max / 127.0;
    let mut squares = 0i64;
    for (q, &v) in out.iter_mut().zip(values) {
        let r = (v / scale).round().clamp(-127.0, 127.0) as i8;
        squares += i64::from(r) * i64::from(r);
        *q = r;
    }
    SlotHeader {
        scale,
        inv_norm: inverse_sqrt(squares as f64),
    }
}

fn inverse_sqrt(square_norm: f64) -> f32 {
    if square_norm > 0.0 {
        (1.0 / square_norm.sqrt()) as f32
    } else {
        0.0
    }
}

impl Arena {
    /// Heap bytes an arena of `slots` vectors of `dim` values takes.
    pub fn bytes(format: StorageFormat, slots: usize, dim: usize) -> usize {
        slots * (dim * format.bytes_per_value() + SLOT_HEADER_BYTES)
    }

    pub fn new(format: StorageFormat, slots: usize, dim: usize) -> Self {
        let n = slots * dim;
        let values = match format {
            StorageFormat::Int8 => Values::Int8(vec![0; n]),
            StorageFormat::F16 => Values::F16(vec![f16::ZERO; n]),
            StorageFormat::F32 => Values::F32(vec![0.0; n]),
        };
        Arena {
            dim,
            values,
            headers: vec![SlotHeader::default(); slots],
        }
    }

    pub fn format(&self) -> StorageFormat {
        match self.values {
            Values::Int8(_) => StorageFormat::Int8,
            Values::F16(_) => StorageFormat::F16,
            Values::F32(_) => StorageFormat::F32,
        }
    }

    fn range(&self, slot: usize) -> std::ops::Range<usize> {
        slot * self.dim..(slot + 1) * self.dim
    }

    /// Stores unit-norm `values` in `slot`.
    pub fn encode(&mut self, slot: usize, values: &[f32]) {
        let range = self.range(slot);
        let header = match &mut self.values {
            Values::Int8(v) => quantise(values, &mut v[range]),
            Values::F16(v) => {
                let out = &mut v[range];
                out.convert_from_f32_slice(values);
                let squares: f64 = out.iter().map(|h| f64::from(h.to_f32()).powi(2)).sum();
                SlotHeader {
                    scale: 1.0,
                    inv_norm: inverse_sqrt(squares),
                }
            }
            Values::F32(v) => {
                v[range].copy_from_slice(values);
                let squares: f64 = values.iter().map(|&x| f64::from(x).powi(2)).sum();
                SlotHeader {
                    scale: 1.0,
                    inv_norm: inverse_sqrt(squares),
                }
            }
        };
        self.headers[slot] = header;
    }

    /// Writes the stored vector of `slot`, dequantised, into `out`.
    pub fn decode(&self, slot: usize, out: &mut [f32]) {
        let range = self.range(slot);
        match &self.values {
            Values::Int8(v) => {
                let scale = self.headers[slot].scale;
                for (o, &q) in out.iter_mut().zip(&v[range]) {
                    *o = f32::from(q) * scale;
                }
            }
            Values::F16(v) => v[range].convert_to_f32_slice(out),
            Values::F32(v) => out.copy_from_slice(&v[range]),
        }
    }

    pub fn copy_slot(&mut self, from: usize, to: usize) {
        let (src, dst) = (self.range(from), to * self.dim);
        match &mut self.values {
            Values::Int8(v) => v.copy_within(src, dst),
            Values::F16(v) => v.copy_within(src, dst),
            Values::F32(v) => v.copy_within(src, dst),
        }
        self.headers[to] = self.headers[from];
    }

    /// Cosine similarity of the prepared query and the vector in `slot`.
    #[inline]
    pub fn similarity(&self, kernels: &Kernels, slot: usize, query: &PreparedQuery) -> f32 {
        let range = self.range(slot);
        let header = self.headers[slot];
        match &self.values {
            Values::Int8(v) => {
                kernels.dot_i8(&query.quantised, &v[range]) as f32
                    * query.quantised_inv_norm
                    * header.inv_norm
            }
            Values::F16(v) => dot_f32_f16(kernels, &query.unit, &v[range]) * header.inv_norm,
            Values::F32(v) => kernels.dot_f32(&query.unit, &v[range]) * header.inv_norm,
        }
    }

    /// Cosine similarity of two stored vectors.
    pub fn pair_similarity(&self, kernels: &Kernels, a: usize, b: usize) -> f32 {
        let (ra, rb) = (self.range(a), self.range(b));
        let scale = self.headers[a].inv_norm * self.headers[b].inv_norm;
        let dot = match &self.values {
            Values::Int8(v) => kernels.dot_i8(&v[ra], &v[rb]) as f32,
            Values::F16(v) => {
                let (mut x, mut y) = ([0.0f32; F16_CHUNK], [0.0f32; F16_CHUNK]);
                let mut sum = 0.0;
                for (ca, cb) in v[ra].chunks(F16_CHUNK).zip(v[rb].chunks(F16_CHUNK)) {
                    ca.convert_to_f32_slice(&mut x[..ca.len()]);
                    cb.convert_to_f32_slice(&mut y[..cb.len()]);
                    sum += kernels.dot_f32(&x[..ca.len()], &y[..cb.len()]);
                }
                sum
            }
            Values::F32(v) => kernels.dot_f32(&v[ra], &v[rb]),
        };
        dot * scale
    }

    pub fn header(&self, slot: usize) -> SlotHeader {
        self.headers[slot]
    }

    /// The stored values of `slot` as little-endian bytes, for gallery files.
    pub fn write_raw(&self, slot: usize, out: &mut impl std::io::Write) -> std::io::Result<()> {
        let range = self.range(slot);
        match &self.values {
            Values::Int8(v) => {
                let bytes: &[i8] = &v[range];
                // i8 → u8 bit patterns, 64 at a time through a stack buffer.
                let mut buf = [0u8; 64];
                for chunk in bytes.chunks(buf.len()) {
                    for (b, &q) in buf.iter_mut().zip(chunk) {
                        *b = q as u8;
                    }
                    out.write_all(&buf[..chunk.len()])?;
                }
                Ok(())
            }
            Values::F16(v) => v[range]
                .iter()
                .try_for_each(|h| out.write_all(&h.to_bits().to_le_bytes())),
            Values::F32(v) => v[range]
                .iter()
                .try_for_each(|x| out.write_all(&x.to_le_bytes())),
        }
    }

    /// Stores raw little-endian values read from a gallery file of the same format, with the int8
    /// `scale` from the file; the inverse norm is recomputed from the values. False if a float
    /// value is not finite.
    pub fn read_raw(&mut self, slot: usize, bytes: &[u8], scale: f32) -> bool {
        let range = self.range(slot);
        let squares: f64 = match &mut self.values {
            Values::Int8(v) => v[range]
                .iter_mut()
                .zip(bytes)
                .map(|(q, &b)| {
                    *q = b as i8;
                    f64::from(*q).powi(2)
                })
                .sum(),
            Values::F16(v) => {
                for (h, b) in v[range.clone()].iter_mut().zip(bytes.chunks_exact(2)) {
                    *h = f16::from_bits(u16::from_le_bytes([b[0], b[1]]));
                }
                v[range].iter().map(|h| f64::from(h.to_f32()).powi(2)).sum()
            }
            Values::F32(v) => {
                for (x, b) in v[range.clone()].iter_mut().zip(bytes.chunks_exact(4)) {
                    *x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
                v[range].iter().map(|&x| f64::from(x).powi(2)).sum()
            }
        };
        if !squares.is_finite() {
            return false;
        }
        self.headers[slot] = SlotHeader {
            scale: if self.format() == StorageFormat::Int8 {
                scale
            } else {
                1.0
            },
            inv_norm: inverse_sqrt(squares),
        };
        true
    }
}

/// `q · e` with `e` in half precision, converted through a stack buffer.
fn dot_f32_f16(kernels: &Kernels, q: &[f32], e: &[f16]) -> f32 {
    let mut buf = [0.0f32; F16_CHUNK];
    let mut sum = 0.0;
    for (cq, ce) in q.chunks(F16_CHUNK).zip(e.chunks(F16_CHUNK)) {
        let buf = &mut buf[..ce.len()];
        ce.convert_to_f32_slice(buf);
        sum += kernels.dot_f32(cq, buf);
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(dim: usize, seed: u32) -> Vec<f32> {
        let v: Vec<f32> = (0..dim)
            .map(|i| {
                ((i as u32)
                    .wrapping_mul(2_654_435_761)
                    .wrapping_add(seed * 40_503)
                    % 1000) as f32
                    - 500.0
            })
            .collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / n).collect()
    }

    #[test]
    fn every_format_scores_a_vector_against_itself_as_one() {
        let kernels = Kernels::detect();
        for format in StorageFormat::ALL {
            let mut arena = Arena::new(format, 2, 200);
            let v = unit(200, 7);
            arena.encode(0, &v);
            let mut query = PreparedQuery::with_dim(200);
            assert!(query.set(&v, format));
            let s = arena.similarity(&kernels, 0, &query);
            assert!((s - 1.0).abs() < 1e-5, "{format}: {s}");
            arena.copy_slot(0, 1);
            assert!(
                (arena.pair_similarity(&kernels, 0, 1) - 1.0).abs() < 1e-5,
                "{format}"
            );
        }
    }

    #[test]
    fn stored_forms_stay_close_to_the_float_cosine() {
        let kernels = Kernels::detect();
        let (a, b) = (unit(512, 1), unit(512, 2));
        let exact: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        for (format, tolerance) in [
            (StorageFormat::F32, 1e-5),
            (StorageFormat::F16, 1e-3),
            (StorageFormat::Int8, 1e-2),
        ] {
            let mut arena = Arena::new(format, 1, 512);
            arena.encode(0, &b);
            let mut query = PreparedQuery::with_dim(512);
            query.set(&a, format);
            let s = arena.similarity(&kernels, 0, &query);
            assert!((s - exact).abs() < tolerance, "{format}: {s} vs {exact}");
        }
    }

    #[test]
    fn raw_bytes_round_trip_exactly() {
        for format in StorageFormat::ALL {
            let mut arena = Arena::new(format, 2, 33);
            arena.encode(0, &unit(33, 3));
            let mut bytes = Vec::new();
            arena.write_raw(0, &mut bytes).unwrap();
            assert_eq!(bytes.len(), 33 * format.bytes_per_value());
            assert!(arena.read_raw(1, &bytes, arena.header(0).scale));
            assert_eq!(arena.header(1), arena.header(0), "{format}");
            let (mut x, mut y) = (vec![0.0; 33], vec![0.0; 33]);
            arena.decode(0, &mut x);
            arena.decode(1, &mut y);
            assert_eq!(x, y, "{format}");
        }
    }

    #[test]
    fn zero_and_non_finite_queries_are_refused() {
        let mut query = PreparedQuery::with_dim(4);
        assert!(!query.set(&[0.0; 4], StorageFormat::Int8));
        assert!(!query.set(&[1.0, f32::NAN, 0.0, 0.0], StorageFormat::F32));
        assert!(query.set(&[3.0, 4.0, 0.0, 0.0], StorageFormat::F32));
    }
}
