//! Minimal NumPy `.npy` (format 1.0) for 2-D little-endian f32 arrays: what `reidcam embed
//! --format npy` writes and what the parity fixtures store.

use std::io::{self, Read, Write};

const MAGIC: &[u8] = b"\x93NUMPY";

/// Writes a C-order `rows × cols` f32 array.
pub fn write_f32_2d(mut out: impl Write, rows: usize, cols: usize, data: &[f32]) -> io::Result<()> {
    assert_eq!(data.len(), rows * cols, "npy data does not match its shape");
    let mut header =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // Magic (6) + version (2) + header length (2) + header + '\n' is a multiple of 64.
    let unpadded = MAGIC.len() + 4 + header.len() + 1;
    header.extend(std::iter::repeat_n(
        ' ',
        unpadded.next_multiple_of(64) - unpadded,
    ));
    header.push('\n');
    out.write_all(MAGIC)?;
    out.write_all(&[1, 0])?;
    out.write_all(&(header.len() as u16).to_le_bytes())?;
    out.write_all(header.as_bytes())?;
    let mut bytes = Vec::with_capacity(data.len() * 4);
    for v in data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    out.write_all(&bytes)
}

/// Largest array [`read_f32_2d`] takes: 1 GiB of data.
pub const MAX_BYTES: usize = 1 << 30;

/// Reads a C-order 2-D `<f4` array written by NumPy or [`write_f32_2d`]: `(rows, cols, data)`.
pub fn read_f32_2d(mut input: impl Read) -> io::Result<(usize, usize, Vec<f32>)> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("npy: {what}"));
    let mut preamble = [0u8; 10];
    input.read_exact(&mut preamble)?;
    if &preamble[..6] != MAGIC || preamble[6] != 1 {
        return Err(bad("not a version 1 .npy file"));
    }
    let len = u16::from_le_bytes([preamble[8], preamble[9]]) as usize;
    let mut header = vec![0u8; len];
    input.read_exact(&mut header)?;
    let header = String::from_utf8(header).map_err(|_| bad("header is not text"))?;
    if !header.contains("'descr': '<f4'") || !header.contains("'fortran_order': False") {
        return Err(bad(&format!(
            "expected C-order <f4 data, header {}",
            header.trim()
        )));
    }
    let shape = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("no shape"))?;
    let dims: Vec<usize> = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| bad("bad shape")))
        .collect::<Result<_, _>>()?;
    let [rows, cols] = dims[..] else {
        return Err(bad(&format!("expected 2 dimensions, got {dims:?}")));
    };
    // The shape is the file's word: check it before trusting it with memory (found by the `npy`
    // fuzz target: a shape of 3 × 5555…5 asked for petabytes and aborted the process).
    let len = rows
        .checked_mul(cols)
        .and_then(|n| n.checked_mul(4))
        .filter(|&n| n <= MAX_BYTES)
        .ok_or_else(|| {
            bad(&format!(
                "shape ({rows}, {cols}) is over {MAX_BYTES} bytes of data"
            ))
        })?;
    // Read what is there (at most `len`), not a buffer of the declared size up front.
    let mut bytes = Vec::new();
    input.take(len as u64).read_to_end(&mut bytes)?;
    if bytes.len() != len {
        return Err(bad(&format!(
            "data cut short: {} of {len} bytes",
            bytes.len()
        )));
    }
    let data = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok((rows, cols, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `npy` fuzz target: a shape whose size overflows, or is huge, or data
    /// shorter than the shape says, is an error — without allocating what the header claims.
    #[test]
    fn a_lying_shape_is_refused_without_allocating_it() {
        for (shape, expected) in [
            ("(3, 5555555555555555555)", "over"),
            ("(100000, 100000)", "over"),
            ("(3, 4)", "cut short"),
        ] {
            let header =
                format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}\n");
            let mut bytes = MAGIC.to_vec();
            bytes.extend_from_slice(&[1, 0]);
            bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
            bytes.extend_from_slice(header.as_bytes());
            bytes.extend_from_slice(&[0; 8]);
            let err = read_f32_2d(&bytes[..]).unwrap_err().to_string();
            assert!(err.contains(expected), "{shape}: {err}");
        }
    }

    #[test]
    fn round_trip() {
        let data: Vec<f32> = (0..12).map(|i| i as f32 * 0.5 - 2.0).collect();
        let mut buf = Vec::new();
        write_f32_2d(&mut buf, 3, 4, &data).unwrap();
        assert_eq!((buf.len() - 48) % 64, 0);
        assert_eq!(read_f32_2d(&buf[..]).unwrap(), (3, 4, data));
        assert!(read_f32_2d(&buf[..buf.len() - 1]).is_err());
        assert!(read_f32_2d(&b"junk at the start of the file"[..]).is_err());
    }
}
