//! Camera pixel formats → packed RGB8, into a buffer made once.
//!
//! YUV formats are converted with the BT.601 matrix in fixed point (8 fractional bits), for
//! limited-range ("studio swing", Y 16–235, the V4L2 default for SDTV YUV) or full-range data
//! (JPEG style), as the driver reports. Chroma is not interpolated: each chroma sample serves the
//! 2 (YUYV) or 2×2 (NV12) pixels it was subsampled from, as the camera produced it.

use crate::frame::{RgbImage, decode_jpeg_into};

/// The camera formats reidcam reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum PixelFormat {
    /// Packed 4:2:2, `Y0 U Y1 V` per two pixels.
    Yuyv,
    /// Planar 4:2:0: a Y plane, then interleaved `U V` at half resolution both ways.
    Nv12,
    /// Packed `R G B`.
    Rgb24,
    /// Motion JPEG: one JPEG per frame.
    Mjpeg,
}

impl PixelFormat {
    pub const ALL: [PixelFormat; 4] = [
        PixelFormat::Yuyv,
        PixelFormat::Nv12,
        PixelFormat::Rgb24,
        PixelFormat::Mjpeg,
    ];

    /// The V4L2 four-character code.
    pub fn fourcc(self) -> [u8; 4] {
        match self {
            PixelFormat::Yuyv => *b"YUYV",
            PixelFormat::Nv12 => *b"NV12",
            PixelFormat::Rgb24 => *b"RGB3",
            PixelFormat::Mjpeg => *b"MJPG",
        }
    }

    pub fn from_fourcc(code: [u8; 4]) -> Option<Self> {
        PixelFormat::ALL.into_iter().find(|f| f.fourcc() == code)
    }
}

impl std::fmt::Display for PixelFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(std::str::from_utf8(&self.fourcc()).unwrap_or("????"))
    }
}

impl std::str::FromStr for PixelFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let upper = s.to_ascii_uppercase();
        PixelFormat::ALL
            .into_iter()
            .find(|f| f.to_string() == upper || format!("{f:?}").to_ascii_uppercase() == upper)
            .ok_or_else(|| {
                format!("unknown pixel format {s:?}: expected YUYV, NV12, RGB3 (RGB24) or MJPG")
            })
    }
}

/// How YUV values map to RGB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum YuvRange {
    /// Y 16–235, Cb/Cr 16–240 (V4L2's default for YUV).
    #[default]
    Limited,
    /// Y, Cb, Cr 0–255.
    Full,
}

/// Layout of one raw frame as the driver delivers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawLayout {
    pub format: PixelFormat,
    pub width: u32,
    pub height: u32,
    /// Bytes per row of the first plane (≥ the packed row; drivers may pad).
    pub bytes_per_line: usize,
    pub range: YuvRange,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConvertError {
    #[error("{format} frame of {got} bytes is too short: {width}x{height} needs {needed}")]
    Short {
        format: PixelFormat,
        width: u32,
        height: u32,
        got: usize,
        needed: usize,
    },
    #[error("planar YUV frame of {got} bytes is too short: {width}x{height} needs {needed}")]
    ShortPlanes {
        width: u32,
        height: u32,
        got: usize,
        needed: usize,
    },
    #[error("output is {got_w}x{got_h}, the frame is {width}x{height}")]
    Size {
        width: u32,
        height: u32,
        got_w: u32,
        got_h: u32,
    },
    #[error("corrupt MJPEG frame: {0}")]
    Jpeg(String),
}

/// Fixed-point BT.601 coefficients (×256) for one range.
struct Coefficients {
    y_offset: i32,
    y_gain: i32,
    v_to_r: i32,
    u_to_g: i32,
    v_to_g: i32,
    u_to_b: i32,
}

const LIMITED: Coefficients = Coefficients {
    y_offset: 16,
    y_gain: 298,
    v_to_r: 409,
    u_to_g: 100,
    v_to_g: 208,
    u_to_b: 516,
};

const FULL: Coefficients = Coefficients {
    y_offset: 0,
    y_gain: 256,
    v_to_r: 359,
    u_to_g: 88,
    v_to_g: 183,
    u_to_b: 454,
};

impl YuvRange {
    fn coefficients(self) -> &'static Coefficients {
        match self {
            YuvRange::Limited => &LIMITED,
            YuvRange::Full => &FULL,
        }
    }
}

#[inline]
fn clamp_u8(v: i32) -> u8 {
    v.clamp(0, 255) as u8
}

/// One pixel's RGB: `y` with its chroma terms already scaled.
#[inline(always)]
fn rgb_of(c: &Coefficients, y: u8, r_term: i32, g_term: i32, b_term: i32) -> [u8; 3] {
    let y = (i32::from(y) - c.y_offset) * c.y_gain + 128;
    [r_term, g_term, b_term].map(|t| clamp_u8((y + t) >> 8))
}

/// [`rgb_of`] into the pixel's three bytes: the per-pixel formula the tests hold the block
/// converters to.
#[cfg(test)]
fn yuv_pixel(c: &Coefficients, y: u8, r_term: i32, g_term: i32, b_term: i32, out: &mut [u8]) {
    out.copy_from_slice(&rgb_of(c, y, r_term, g_term, b_term));
}

#[inline(always)]
fn chroma_terms(c: &Coefficients, u: u8, v: u8) -> (i32, i32, i32) {
    let (u, v) = (i32::from(u) - 128, i32::from(v) - 128);
    (c.v_to_r * v, -c.u_to_g * u - c.v_to_g * v, c.u_to_b * u)
}

/// Converts one raw frame into `out` (which must have the frame's size). Allocates nothing.
pub fn to_rgb(raw: &[u8], layout: &RawLayout, out: &mut RgbImage) -> Result<(), ConvertError> {
    let (w, h) = (layout.width as usize, layout.height as usize);
    if (out.width(), out.height()) != (layout.width, layout.height) {
        return Err(ConvertError::Size {
            width: layout.width,
            height: layout.height,
            got_w: out.width(),
            got_h: out.height(),
        });
    }
    let short = |needed: usize| ConvertError::Short {
        format: layout.format,
        width: layout.width,
        height: layout.height,
        got: raw.len(),
        needed,
    };
    let c = layout.range.coefficients();
    match layout.format {
        PixelFormat::Yuyv => {
            let stride = layout.bytes_per_line.max(w * 2);
            let needed = stride * (h - 1) + w * 2;
            if raw.len() < needed {
                return Err(short(needed));
            }
            interleaved_to_rgb(raw, layout.format, stride, c, out);
        }
        PixelFormat::Nv12 => {
            let stride = layout.bytes_per_line.max(w);
            let chroma_rows = h.div_ceil(2);
            let luma = stride * h;
            let needed = luma + stride * (chroma_rows - 1) + w.div_ceil(2) * 2;
            if raw.len() < needed {
                return Err(short(needed));
            }
            interleaved_to_rgb(raw, layout.format, stride, c, out);
        }
        PixelFormat::Rgb24 => {
            let stride = layout.bytes_per_line.max(w * 3);
            let needed = stride * (h - 1) + w * 3;
            if raw.len() < needed {
                return Err(short(needed));
            }
            for (y, row) in out.as_bytes_mut().chunks_exact_mut(w * 3).enumerate() {
                row.copy_from_slice(&raw[y * stride..y * stride + w * 3]);
            }
        }
        PixelFormat::Mjpeg => decode_jpeg_into(raw, out).map_err(ConvertError::Jpeg)?,
    }
    Ok(())
}

/// A YUYV or NV12 frame (lengths checked by [`to_rgb`], `stride` its first plane's) into `out`,
/// through [`interleaved_rows`] compiled for AVX2 where the CPU has it.
fn interleaved_to_rgb(
    raw: &[u8],
    format: PixelFormat,
    stride: usize,
    c: &Coefficients,
    out: &mut RgbImage,
) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::Isa::Avx2Fma.is_available() {
        // SAFETY: AVX2 is available (checked above).
        unsafe { interleaved_rows_avx2(raw, format, stride, c, out) };
        return;
    }
    interleaved_rows(raw, format, stride, c, out);
}

/// [`interleaved_rows`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn interleaved_rows_avx2(
    raw: &[u8],
    format: PixelFormat,
    stride: usize,
    c: &Coefficients,
    out: &mut RgbImage,
) {
    interleaved_rows(raw, format, stride, c, out);
}

/// The camera's interleaved YUV (YUYV: `Y0 U Y1 V` per two pixels; NV12: a Y plane, then `U V`
/// pairs per 2×2 pixels) in blocks of [`BLOCK`] pixels: the block's luma and its chroma spread
/// to one sample per pixel on the stack, then [`block_to_rgb`], as [`planar_rows`] (the same
/// integers as [`rgb_of`] of [`chroma_terms`] per pixel, in loops LLVM vectorises). YUYV converts the even part
/// of a row (its format has no odd widths; a last odd pixel is left as it was).
#[inline(always)]
fn interleaved_rows(
    raw: &[u8],
    format: PixelFormat,
    stride: usize,
    c: &Coefficients,
    out: &mut RgbImage,
) {
    let (w, h) = (out.width() as usize, out.height() as usize);
    let (mut ys, mut us, mut vs) = ([0u8; BLOCK], [0u8; BLOCK], [0u8; BLOCK]);
    for (y, row) in out.as_bytes_mut().chunks_exact_mut(w * 3).enumerate() {
        // Blocks start at even pixels (`BLOCK` is even): a block's chroma pairs are its own.
        for (x0, rgb) in (0..w).step_by(BLOCK).zip(row.chunks_mut(BLOCK * 3)) {
            let n = match format {
                PixelFormat::Yuyv => {
                    let n = (w - x0).min(BLOCK) & !1;
                    let src = &raw[y * stride + 2 * x0..][..2 * n];
                    for (((quad, y2), u2), v2) in src
                        .chunks_exact(4)
                        .zip(ys.chunks_exact_mut(2))
                        .zip(us.chunks_exact_mut(2))
                        .zip(vs.chunks_exact_mut(2))
                    {
                        (y2[0], y2[1]) = (quad[0], quad[2]);
                        (u2[0], u2[1], v2[0], v2[1]) = (quad[1], quad[1], quad[3], quad[3]);
                    }
                    n
                }
                _ => {
                    let n = (w - x0).min(BLOCK);
                    ys[..n].copy_from_slice(&raw[y * stride + x0..][..n]);
                    let chroma = &raw[stride * h + (y / 2) * stride + x0..][..n.div_ceil(2) * 2];
                    for ((pair, u2), v2) in chroma
                        .chunks_exact(2)
                        .zip(us.chunks_mut(2))
                        .zip(vs.chunks_mut(2))
                    {
                        u2.fill(pair[0]);
                        v2.fill(pair[1]);
                    }
                    n
                }
            };
            block_to_rgb(c, &ys[..n], &us[..n], &vs[..n], &mut rgb[..3 * n]);
        }
    }
}

/// Three YUV planes borrowed from a decoder or a file (I420 = 4:2:0, or 4:4:4).
#[derive(Clone, Copy, Debug)]
pub struct Planes<'a> {
    pub y: &'a [u8],
    pub u: &'a [u8],
    pub v: &'a [u8],
    /// Bytes per row of Y, and of U and V.
    pub y_stride: usize,
    pub uv_stride: usize,
    /// Chroma is subsampled by 2 in both directions (4:2:0) rather than full (4:4:4).
    pub subsampled: bool,
}

/// Converts planar YUV into `out` (which gives the size). Allocates nothing.
pub fn planar_to_rgb(
    p: &Planes<'_>,
    range: YuvRange,
    out: &mut RgbImage,
) -> Result<(), ConvertError> {
    let (w, h) = (out.width() as usize, out.height() as usize);
    let shift = usize::from(p.subsampled);
    let (cw, ch) = ((w + shift) >> shift, (h + shift) >> shift);
    let needed_y = p.y_stride * (h - 1) + w;
    let needed_c = p.uv_stride * (ch - 1) + cw;
    if p.y_stride < w
        || p.uv_stride < cw
        || p.y.len() < needed_y
        || p.u.len() < needed_c
        || p.v.len() < needed_c
    {
        return Err(ConvertError::ShortPlanes {
            width: w as u32,
            height: h as u32,
            got: p.y.len() + p.u.len() + p.v.len(),
            needed: needed_y + 2 * needed_c,
        });
    }
    let c = range.coefficients();
    #[cfg(target_arch = "x86_64")]
    if crate::simd::Isa::Avx2Fma.is_available() {
        // SAFETY: AVX2 is available (checked above).
        unsafe { planar_rows_avx2(p, c, out) };
        return Ok(());
    }
    planar_rows(p, c, out);
    Ok(())
}

/// [`planar_rows`] compiled for AVX2 (8 lanes of 32-bit multiplies; the x86-64 baseline, SSE2,
/// has no 32-bit vector multiply).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn planar_rows_avx2(p: &Planes<'_>, c: &Coefficients, out: &mut RgbImage) {
    planar_rows(p, c, out);
}

/// Pixels per block of [`planar_rows`]: a block's values sit in arrays on the stack.
const BLOCK: usize = 64;

/// [`planar_to_rgb`] once the planes are checked: each row in blocks of [`BLOCK`] pixels, the
/// chroma of a block spread to one sample per pixel, then [`block_to_rgb`]. In loops LLVM
/// vectorises; the same integers as [`rgb_of`] of [`chroma_terms`] per pixel (a 768×432 frame
/// per pixel took 2.4 ns in the loop over pixels, 2.6% of a daemon frame on one thread).
#[inline(always)]
fn planar_rows(p: &Planes<'_>, c: &Coefficients, out: &mut RgbImage) {
    let w = out.width() as usize;
    let shift = usize::from(p.subsampled);
    let cw = (w + shift) >> shift;
    let (mut us, mut vs) = ([0u8; BLOCK], [0u8; BLOCK]);
    for (y, row) in out.as_bytes_mut().chunks_exact_mut(w * 3).enumerate() {
        let luma = &p.y[y * p.y_stride..y * p.y_stride + w];
        let crow = (y >> shift) * p.uv_stride;
        let (u_row, v_row) = (&p.u[crow..crow + cw], &p.v[crow..crow + cw]);
        for (x0, (ys, rgb)) in luma
            .chunks(BLOCK)
            .zip(row.chunks_mut(BLOCK * 3))
            .enumerate()
            .map(|(k, part)| (k * BLOCK, part))
        {
            let n = ys.len();
            if shift == 1 {
                // x0 is even: pixels 2j and 2j + 1 of the block share sample x0 / 2 + j.
                let (u, v) = (&u_row[x0 / 2..], &v_row[x0 / 2..]);
                let pairs = n / 2;
                for ((pu, pv), (&a, &b)) in us[..2 * pairs]
                    .chunks_exact_mut(2)
                    .zip(vs[..2 * pairs].chunks_exact_mut(2))
                    .zip(u.iter().zip(v))
                {
                    (pu[0], pu[1], pv[0], pv[1]) = (a, a, b, b);
                }
                if n % 2 == 1 {
                    (us[n - 1], vs[n - 1]) = (u[pairs], v[pairs]);
                }
            } else {
                us[..n].copy_from_slice(&u_row[x0..x0 + n]);
                vs[..n].copy_from_slice(&v_row[x0..x0 + n]);
            }
            block_to_rgb(c, ys, &us[..n], &vs[..n], rgb);
        }
    }
}

/// RGB of `ys.len()` ≤ [`BLOCK`] pixels, each with its own chroma samples, into `out` (3 bytes a
/// pixel): [`chroma_terms`] and [`rgb_of`] into three planes, then interleaved.
#[inline(always)]
fn block_to_rgb(c: &Coefficients, ys: &[u8], us: &[u8], vs: &[u8], out: &mut [u8]) {
    let (mut r, mut g, mut b) = ([0u8; BLOCK], [0u8; BLOCK], [0u8; BLOCK]);
    let n = ys.len();
    for i in 0..n {
        let (rt, gt, bt) = chroma_terms(c, us[i], vs[i]);
        [r[i], g[i], b[i]] = rgb_of(c, ys[i], rt, gt, bt);
    }
    for (px, ((&r, &g), &b)) in out
        .chunks_exact_mut(3)
        .zip(r[..n].iter().zip(&g[..n]).zip(&b[..n]))
    {
        px.copy_from_slice(&[r, g, b]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The block converter against the per-pixel formula, on random planes: widths from 1 to 200
    /// (tails of every length, odd chroma widths), strides past the width, 4:2:0 and 4:4:4,
    /// both ranges; on x86 both the AVX2 copy and the baseline one.
    #[test]
    fn planar_blocks_give_the_per_pixel_bytes() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for case in 0..120 {
            let (w, h) = (1 + (next() % 200) as usize, 1 + (next() % 7) as usize);
            let subsampled = case % 2 == 0;
            let range = if case % 3 == 0 {
                YuvRange::Full
            } else {
                YuvRange::Limited
            };
            let shift = usize::from(subsampled);
            let (cw, ch) = ((w + shift) >> shift, (h + shift) >> shift);
            let (y_stride, uv_stride) = (w + (next() % 9) as usize, cw + (next() % 5) as usize);
            let mut bytes = |n: usize| (0..n).map(|_| next() as u8).collect::<Vec<u8>>();
            let (y, u, v) = (
                bytes(y_stride * h),
                bytes(uv_stride * ch),
                bytes(uv_stride * ch),
            );
            let planes = Planes {
                y: &y,
                u: &u,
                v: &v,
                y_stride,
                uv_stride,
                subsampled,
            };
            let c = range.coefficients();
            let mut want = vec![0u8; w * h * 3];
            for (row, px_row) in want.chunks_exact_mut(w * 3).enumerate() {
                for (x, px) in px_row.chunks_exact_mut(3).enumerate() {
                    let at = (row >> shift) * uv_stride + (x >> shift);
                    let (r, g, b) = chroma_terms(c, u[at], v[at]);
                    yuv_pixel(c, y[row * y_stride + x], r, g, b, px);
                }
            }
            let mut got = RgbImage::black(w as u32, h as u32).unwrap();
            planar_to_rgb(&planes, range, &mut got).unwrap();
            assert_eq!(got.as_bytes(), &want[..], "case {case}: {w}x{h}");
            let mut plain = RgbImage::black(w as u32, h as u32).unwrap();
            planar_rows(&planes, c, &mut plain);
            assert_eq!(
                plain.as_bytes(),
                &want[..],
                "case {case} (baseline): {w}x{h}"
            );
        }
    }

    fn layout(format: PixelFormat, width: u32, height: u32) -> RawLayout {
        RawLayout {
            format,
            width,
            height,
            bytes_per_line: 0,
            range: YuvRange::Limited,
        }
    }

    /// BT.601 limited-range encoding of an RGB colour, as a camera would produce it (rounded).
    fn encode(rgb: [u8; 3]) -> [u8; 3] {
        let [r, g, b] = rgb.map(f64::from);
        let y = 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0;
        let u = 128.0 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255.0;
        let v = 128.0 + (112.0 * r - 93.786 * g - 18.214 * b) / 255.0;
        [y, u, v].map(|x| x.round() as u8)
    }

    const COLOURS: [[u8; 3]; 8] = [
        [191, 191, 191],
        [191, 191, 0],
        [0, 191, 191],
        [0, 191, 0],
        [191, 0, 191],
        [191, 0, 0],
        [0, 0, 191],
        [16, 16, 16],
    ];

    fn close(got: &[u8], want: [u8; 3]) -> bool {
        got.iter().zip(want).all(|(&g, w)| g.abs_diff(w) <= 2)
    }

    #[test]
    fn yuyv_colour_bars_round_trip() {
        // Eight bars of 2 pixels, 2 rows, rows padded to 40 bytes.
        let (w, h, stride) = (16u32, 2u32, 40usize);
        let mut raw = vec![0u8; stride * 2];
        for row in 0..2 {
            for (bar, colour) in COLOURS.iter().enumerate() {
                let [y, u, v] = encode(*colour);
                raw[row * stride + bar * 4..][..4].copy_from_slice(&[y, u, y, v]);
            }
        }
        let mut out = RgbImage::black(w, h).unwrap();
        let l = RawLayout {
            bytes_per_line: stride,
            ..layout(PixelFormat::Yuyv, w, h)
        };
        to_rgb(&raw, &l, &mut out).unwrap();
        for (i, px) in out.as_bytes().chunks(3).enumerate() {
            assert!(close(px, COLOURS[(i % 16) / 2]), "pixel {i}: {px:?}");
        }
    }

    #[test]
    fn nv12_colour_bars_round_trip() {
        let (w, h) = (16u32, 4u32);
        let mut raw = vec![0u8; 16 * 4 + 16 * 2];
        for y in 0..4 {
            for x in 0..16 {
                raw[y * 16 + x] = encode(COLOURS[x / 2])[0];
            }
        }
        for cy in 0..2 {
            for bar in 0..8 {
                let [_, u, v] = encode(COLOURS[bar]);
                raw[64 + cy * 16 + bar * 2..][..2].copy_from_slice(&[u, v]);
            }
        }
        let mut out = RgbImage::black(w, h).unwrap();
        to_rgb(&raw, &layout(PixelFormat::Nv12, w, h), &mut out).unwrap();
        for (i, px) in out.as_bytes().chunks(3).enumerate() {
            assert!(close(px, COLOURS[(i % 16) / 2]), "pixel {i}: {px:?}");
        }
    }

    #[test]
    fn full_range_greys_map_to_themselves() {
        let raw: Vec<u8> = [0u8, 64, 128, 255]
            .iter()
            .flat_map(|&y| [y, 128, y, 128])
            .collect();
        let mut out = RgbImage::black(8, 1).unwrap();
        let l = RawLayout {
            range: YuvRange::Full,
            ..layout(PixelFormat::Yuyv, 8, 1)
        };
        to_rgb(&raw, &l, &mut out).unwrap();
        let greys: Vec<u8> = out.as_bytes().chunks(6).map(|p| p[0]).collect();
        assert_eq!(greys, [0, 64, 128, 255]);
        assert!(
            out.as_bytes()
                .chunks(3)
                .all(|p| p[0] == p[1] && p[1] == p[2])
        );
    }

    #[test]
    fn rgb24_copies_rows_and_short_frames_are_errors() {
        let raw: Vec<u8> = (0..2 * 3 * 3).map(|i| i as u8).collect();
        let mut out = RgbImage::black(3, 2).unwrap();
        to_rgb(&raw, &layout(PixelFormat::Rgb24, 3, 2), &mut out).unwrap();
        assert_eq!(out.as_bytes(), &raw[..]);
        let err = to_rgb(&raw[..10], &layout(PixelFormat::Rgb24, 3, 2), &mut out).unwrap_err();
        assert_eq!(
            err.to_string(),
            "RGB3 frame of 10 bytes is too short: 3x2 needs 18"
        );
        let err = to_rgb(&raw, &layout(PixelFormat::Yuyv, 4, 4), &mut out).unwrap_err();
        assert!(matches!(err, ConvertError::Size { .. }));
    }

    /// The camera formats' block converter against the per-pixel formula, on random frames:
    /// widths 1–200 (NV12) and 2–200 even (YUYV; an odd one's last pixel stays as it was),
    /// heights 1–7, rows padded past the width, both ranges.
    #[test]
    fn camera_formats_give_the_per_pixel_bytes() {
        let mut rng = crate::bench::XorShift::new(0x9e37_79b9_7f4a_7c15);
        let mut next = || rng.next_u64();
        for case in 0..160 {
            let format = [PixelFormat::Yuyv, PixelFormat::Nv12][case % 2];
            let range = [YuvRange::Limited, YuvRange::Full][case / 2 % 2];
            let h = 1 + (next() % 7) as usize;
            let w = match format {
                PixelFormat::Yuyv => 2 + 2 * (next() % 100) as usize,
                _ => 1 + (next() % 200) as usize,
            };
            let packed = if format == PixelFormat::Yuyv {
                2 * w
            } else {
                w
            };
            let stride = packed + (next() % 9) as usize;
            let len = match format {
                PixelFormat::Yuyv => stride * h,
                // A chroma row of an odd width reads one byte past the width.
                _ => stride * (h + h.div_ceil(2)) + 1,
            };
            let raw: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let c = range.coefficients();
            let mut want = vec![0u8; w * h * 3];
            for (y, px_row) in want.chunks_exact_mut(w * 3).enumerate() {
                for (x, px) in px_row.chunks_exact_mut(3).enumerate() {
                    let (luma, u, v) = match format {
                        PixelFormat::Yuyv => {
                            let quad = y * stride + 4 * (x / 2);
                            (raw[y * stride + 2 * x], raw[quad + 1], raw[quad + 3])
                        }
                        _ => {
                            let uv = stride * h + (y / 2) * stride + (x / 2) * 2;
                            (raw[y * stride + x], raw[uv], raw[uv + 1])
                        }
                    };
                    let (r, g, b) = chroma_terms(c, u, v);
                    yuv_pixel(c, luma, r, g, b, px);
                }
            }
            let layout = RawLayout {
                format,
                width: w as u32,
                height: h as u32,
                bytes_per_line: stride,
                range,
            };
            let mut got = RgbImage::black(w as u32, h as u32).unwrap();
            to_rgb(&raw, &layout, &mut got).unwrap();
            assert_eq!(
                got.as_bytes(),
                &want[..],
                "{format} {w}x{h} stride {stride} {range:?}"
            );
            // And the same from the plain (not AVX2) copy.
            let mut plain = RgbImage::black(w as u32, h as u32).unwrap();
            interleaved_rows(&raw, format, stride, c, &mut plain);
            assert_eq!(plain.as_bytes(), &want[..], "{format} {w}x{h}: plain copy");
        }
    }

    #[test]
    fn formats_parse_by_fourcc_or_name() {
        assert_eq!("yuyv".parse::<PixelFormat>().unwrap(), PixelFormat::Yuyv);
        assert_eq!("RGB3".parse::<PixelFormat>().unwrap(), PixelFormat::Rgb24);
        assert_eq!("rgb24".parse::<PixelFormat>().unwrap(), PixelFormat::Rgb24);
        assert_eq!(PixelFormat::from_fourcc(*b"MJPG"), Some(PixelFormat::Mjpeg));
        assert!("H264".parse::<PixelFormat>().is_err());
    }
}
