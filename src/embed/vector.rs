//! Embedding vectors: a run's borrowed rows ([`Embeddings`]), an owned one ([`Embedding`]), dot
//! product, cosine similarity and L2 normalisation.

/// Embeddings of one run, borrowed from the embedder: `len()` rows of `dim()` values.
#[derive(Clone, Copy, Debug)]
pub struct Embeddings<'a> {
    pub(super) data: &'a [f32],
    pub(super) dim: usize,
}

impl<'a> Embeddings<'a> {
    pub fn len(&self) -> usize {
        self.data.len() / self.dim
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Embedding `i` as a slice.
    pub fn row(&self, i: usize) -> &'a [f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    pub fn rows(&self) -> impl Iterator<Item = &'a [f32]> + 'a {
        self.data.chunks_exact(self.dim)
    }

    /// The rows as an `len() × dim()` matrix view.
    pub fn as_array(&self) -> ndarray::ArrayView2<'a, f32> {
        ndarray::ArrayView2::from_shape((self.len(), self.dim), self.data)
            .expect("rows are dim long")
    }

    /// All rows, flat (`len() × dim()`).
    pub fn as_flat(&self) -> &'a [f32] {
        self.data
    }

    /// An owned copy of embedding `i`.
    pub fn to_embedding(&self, i: usize) -> Embedding {
        Embedding(self.row(i).to_vec())
    }
}

/// An owned, L2-normalised embedding (all zeros if the model produced a zero vector).
#[derive(Clone, Debug, PartialEq)]
pub struct Embedding(Vec<f32>);

impl Embedding {
    /// Normalises `values` and wraps them.
    pub fn from_raw(mut values: Vec<f32>) -> Self {
        l2_normalise(&mut values);
        Self(values)
    }

    pub fn as_slice(&self) -> &[f32] {
        &self.0
    }

    pub fn dim(&self) -> usize {
        self.0.len()
    }

    /// Cosine similarity; both sides are unit vectors, so this is their dot product.
    pub fn cosine(&self, other: &Embedding) -> f32 {
        dot(&self.0, &other.0)
    }
}

/// Dot product of two equally long slices.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot of different lengths");
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Cosine similarity of two vectors of any norm (0 if either is zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (na, nb) = (dot(a, a).sqrt(), dot(b, b).sqrt());
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot(a, b) / (na * nb)
    }
}

pub(super) fn l2_normalise(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 && norm.is_finite() {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalise_and_cosine() {
        let a = Embedding::from_raw(vec![3.0, 4.0]);
        assert_eq!(a.as_slice(), [0.6, 0.8]);
        let zero = Embedding::from_raw(vec![0.0, 0.0]);
        assert_eq!(zero.as_slice(), [0.0, 0.0]);
        assert!((a.cosine(&a) - 1.0).abs() < 1e-6);
        assert_eq!(cosine(&[1.0, 0.0], &[0.0, 2.0]), 0.0);
        assert!((cosine(&[1.0, 1.0], &[2.0, 2.0]) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn embeddings_view_as_matrix() {
        let data = [1.0, 0.0, 0.0, 0.6, 0.8, 0.0];
        let e = Embeddings {
            data: &data,
            dim: 3,
        };
        assert_eq!((e.len(), e.dim()), (2, 3));
        let m = e.as_array();
        assert_eq!(m.shape(), [2, 3]);
        assert_eq!(m[[1, 1]], 0.8);
        assert_eq!(m.row(1).to_vec(), e.row(1));
        // Gram matrix = pairwise cosines of unit rows.
        let gram = m.dot(&m.t());
        assert!((gram[[0, 1]] - 0.6).abs() < 1e-6 && (gram[[1, 1]] - 1.0).abs() < 1e-6);
    }
}
