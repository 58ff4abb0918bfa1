//! H.264 replay: an MP4 file's first AVC video track, or a raw Annex B elementary stream
//! (`.264`, `.h264`), decoded by Cisco's OpenH264 (the `openh264` crate, built from its bundled
//! source) and converted to RGB with our BT.601 limited-range code.
//!
//! MP4 samples are access units with length-prefixed NAL units; they are rewritten with start
//! codes into one reused packet buffer. An Annex B stream is read in chunks and cut into access
//! units at the first slice of each picture (or at an access unit delimiter, SEI, SPS or PPS).
//! The first picture is decoded when the file is opened, so a corrupt file fails at start-up.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use openh264::OpenH264API;
use openh264::decoder::{DecodeOptions, Decoder, DecoderConfig, Flush};
use openh264::formats::YUVSource;

use super::convert::{self, Planes, YuvRange};
use super::replay::{Numbering, ended};
use super::{CaptureError, Frame, FrameSource};
use crate::frame::RgbImage;

/// The MP4 file as the `mp4` crate reads it, with a budget for reading its header: the crate's
/// box loops make no progress on a child box whose size is below its header's (a size of 0
/// seeks back to the same header, forever: found by fuzzing, `replay` target). Every read
/// (its bytes, at least 1) and seek (8) spends the budget; spent, reads fail, which ends the
/// loop with an error. Set to unbounded once the header is read (samples are read once each).
struct Bounded {
    inner: BufReader<File>,
    budget: Arc<AtomicU64>,
}

impl Bounded {
    fn spend(&self, units: u64) -> std::io::Result<()> {
        let left = self.budget.load(Ordering::Relaxed);
        if left < units {
            return Err(std::io::Error::other(
                "its boxes loop (a box smaller than its own header?): gave up reading the header",
            ));
        }
        if left != u64::MAX {
            self.budget.store(left - units, Ordering::Relaxed);
        }
        Ok(())
    }
}

impl Read for Bounded {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.spend(buf.len().max(1) as u64)?;
        self.inner.read(buf)
    }
}

impl Seek for Bounded {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        self.spend(8)?;
        self.inner.seek(to)
    }
}

/// What the `mp4` crate divides by when it times the track and finds its samples, checked
/// first: it panics on a zero (found by fuzzing: a chunk of 0 samples in `stsc`).
fn check_track(track: &mp4::Mp4Track, file_size: u64) -> Result<(), String> {
    let mdhd = &track.trak.mdia.mdhd;
    if mdhd.timescale == 0 {
        return Err("mdhd: a timescale of 0".into());
    }
    if mdhd.duration > u64::MAX / 1_000_000 {
        return Err(format!("mdhd: a duration of {} is too long", mdhd.duration));
    }
    let stbl = &track.trak.mdia.minf.stbl;
    if let Some(e) = stbl.stsc.entries.iter().find(|e| e.samples_per_chunk == 0) {
        return Err(format!("stsc: chunk {} holds 0 samples", e.first_chunk));
    }
    if !track.trafs.is_empty() && (track.sample_count() as usize) < track.trafs.len() {
        return Err("fewer samples than track fragments".into());
    }
    // The crate unwraps the time of every sample it reads: stts must cover them all (a
    // fragmented track is timed by its default duration instead).
    if track.trafs.is_empty() {
        let timed: u64 = stbl
            .stts
            .entries
            .iter()
            .map(|e| u64::from(e.sample_count))
            .sum();
        if timed < u64::from(track.sample_count()) {
            return Err(format!(
                "stts: times {timed} of the {} samples",
                track.sample_count()
            ));
        }
    } else if track.trafs.iter().any(|t| t.trun.is_none()) {
        // ... and a fragment's sample sizes come from its trun, unwrapped too.
        return Err("traf: a track fragment without a trun box".into());
    }
    // It allocates each sample at the size the file gives before reading it: none may be larger
    // than the file.
    let largest = stbl
        .stsz
        .sample_sizes
        .iter()
        .chain(
            track
                .trafs
                .iter()
                .flat_map(|t| t.trun.iter().flat_map(|r| &r.sample_sizes)),
        )
        .copied()
        .chain([stbl.stsz.sample_size])
        .max()
        .unwrap_or(0);
    if u64::from(largest) > file_size {
        return Err(format!(
            "stsz/trun: a sample of {largest} bytes in a file of {file_size}"
        ));
    }
    Ok(())
}

enum Demux {
    Mp4 {
        reader: Box<mp4::Mp4Reader<Bounded>>,
        track: u32,
        next_sample: u32,
        samples: u32,
        length_size: usize,
    },
    AnnexB(AnnexB),
}

/// A decoded H.264 file.
pub struct H264Source {
    path: PathBuf,
    demux: Demux,
    decoder: Decoder,
    packet: Vec<u8>,
    rgb: RgbImage,
    /// Pictures come out in display order; the MP4 track's rate (or the configured one) times
    /// them.
    numbering: Numbering,
    container: &'static str,
    /// Pictures taken from the reorder buffer after the end of the file.
    flushed: u32,
}

/// Most pictures an H.264 decoder holds back (the DPB holds at most 16).
const MAX_FLUSHED: u32 = 16;

impl H264Source {
    /// Opens an `.mp4` (by its `ftyp` box) or an Annex B stream; `fps` times Annex B frames
    /// (MP4 carries its own timing).
    pub fn open(path: &Path, fps: f64) -> Result<Self, CaptureError> {
        let mut file = File::open(path).map_err(|source| CaptureError::Open {
            device: path.to_owned(),
            source,
        })?;
        let bad = |problem: String| CaptureError::replay(path, problem);
        let mut head = [0u8; 8];
        let n = file
            .read(&mut head)
            .map_err(|e| bad(format!("cannot read: {e}")))?;
        drop(file);
        let mut file = File::open(path).map_err(|e| bad(format!("cannot reopen: {e}")))?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        // No flush after each packet: with B-frames (Main/High profile) pictures come out in
        // display order a few packets later, and forced flushes corrupt the reference lists.
        let decoder = Decoder::with_api_config(
            OpenH264API::from_source(),
            DecoderConfig::new().flush_after_decode(Flush::NoFlush),
        )
        .map_err(|e| bad(format!("cannot start the H.264 decoder: {e}")))?;
        let mut packet = Vec::with_capacity(1 << 16);
        let (demux, fps, container) = if n == 8 && &head[4..8] == b"ftyp" {
            super::mp4_boxes::check_boxes(&mut file, size)
                .and_then(|()| file.rewind().map_err(|e| e.to_string()))
                .map_err(|e| bad(format!("not a readable MP4 file: {e}")))?;
            // Reading a header takes about its size (the media data is skipped by seeking).
            let budget = Arc::new(AtomicU64::new(
                size.saturating_mul(16).saturating_add(1 << 20),
            ));
            let bounded = Bounded {
                inner: BufReader::new(file),
                budget: Arc::clone(&budget),
            };
            let reader = mp4::Mp4Reader::read_header(bounded, size)
                .map_err(|e| bad(format!("not a readable MP4 file: {e}")))?;
            budget.store(u64::MAX, Ordering::Relaxed);
            let (id, track) = reader
                .tracks()
                .iter()
                .find(|(_, t)| t.trak.mdia.minf.stbl.stsd.avc1.is_some())
                .ok_or_else(|| bad("no H.264 (avc1) video track in this MP4 file".into()))?;
            check_track(track, size).map_err(|e| bad(format!("not a playable MP4 track: {e}")))?;
            let avcc = &track
                .trak
                .mdia
                .minf
                .stbl
                .stsd
                .avc1
                .as_ref()
                .expect("found above")
                .avcc;
            for nal in avcc
                .sequence_parameter_sets
                .iter()
                .chain(&avcc.picture_parameter_sets)
            {
                packet.extend_from_slice(&[0, 0, 0, 1]);
                packet.extend_from_slice(&nal.bytes);
            }
            let fps = track.frame_rate();
            let demux = Demux::Mp4 {
                track: *id,
                next_sample: 1,
                samples: track.sample_count(),
                length_size: usize::from(avcc.length_size_minus_one & 3) + 1,
                reader: Box::new(reader),
            };
            (demux, if fps > 0.0 { fps } else { 25.0 }, "MP4")
        } else {
            if n < 4 || !(head.starts_with(&[0, 0, 1]) || head.starts_with(&[0, 0, 0, 1])) {
                return Err(bad(
                    "not an H.264 file: expected an MP4 (ftyp box) or an Annex B stream (starting with 00 00 01)"
                        .into(),
                ));
            }
            (Demux::AnnexB(AnnexB::new(file)), fps, "Annex B")
        };
        let mut source = H264Source {
            path: path.to_owned(),
            demux,
            decoder,
            packet,
            rgb: RgbImage::black(1, 1).expect("1x1 image"),
            numbering: Numbering::new(fps),
            container,
            flushed: 0,
        };
        if !source.decode_next()? {
            return Err(bad("no decodable picture in this file".into()));
        }
        source.numbering.prime();
        Ok(source)
    }

    /// Feeds packets to the decoder until it returns a picture (converted into `rgb`); false at
    /// the end of the file.
    fn decode_next(&mut self) -> Result<bool, CaptureError> {
        let sequence = self.numbering.sequence();
        let path = &self.path;
        let bad =
            |problem: String| CaptureError::replay(path, format!("frame {sequence}: {problem}"));
        loop {
            // `packet` may already hold the MP4 parameter sets when the first sample comes.
            let more = match &mut self.demux {
                Demux::Mp4 {
                    reader,
                    track,
                    next_sample,
                    samples,
                    length_size,
                    ..
                } => {
                    if *next_sample > *samples {
                        false
                    } else {
                        let sample = reader
                            .read_sample(*track, *next_sample)
                            .map_err(|e| bad(format!("cannot read MP4 sample {next_sample}: {e}")))?
                            .ok_or_else(|| bad(format!("MP4 sample {next_sample} is missing")))?;
                        *next_sample += 1;
                        if let Err(e) =
                            avcc_to_annexb(&sample.bytes, *length_size, &mut self.packet)
                        {
                            // That sample is skipped; the next starts clean.
                            self.packet.clear();
                            return Err(CaptureError::bad_frame(
                                path,
                                format!("frame {sequence}: MP4 sample {}: {e}", *next_sample - 1),
                            ));
                        }
                        true
                    }
                }
                Demux::AnnexB(stream) => stream
                    .next_access_unit(&mut self.packet)
                    .map_err(|e| bad(format!("cannot read: {e}")))?,
            };
            let decoded = if more {
                let d = self.decoder.decode(&self.packet);
                self.packet.clear();
                // The decoder goes on with the next access unit (pictures that referred to
                // the damaged one may show artefacts until the next key frame).
                d.map_err(|e| {
                    CaptureError::bad_frame(
                        path,
                        format!("frame {sequence}: H.264 decoding failed: {e}"),
                    )
                })?
            } else {
                // End of the file: the pictures still in the reorder buffer, one per call.
                if self.flushed >= MAX_FLUSHED {
                    return Ok(false);
                }
                self.flushed += 1;
                let flush = DecodeOptions::new().flush_after_decode(Flush::Flush);
                match self.decoder.decode_with_options(&[], flush) {
                    Ok(Some(yuv)) => Some(yuv),
                    _ => {
                        self.flushed = MAX_FLUSHED;
                        return Ok(false);
                    }
                }
            };
            let Some(yuv) = decoded else { continue };
            let (w, h) = yuv.dimensions();
            if (w as u32, h as u32) != (self.rgb.width(), self.rgb.height()) {
                self.rgb = RgbImage::black(w as u32, h as u32).map_err(|e| bad(e.to_string()))?;
            }
            let (y_stride, uv_stride, _) = yuv.strides();
            let planes = Planes {
                y: yuv.y(),
                u: yuv.u(),
                v: yuv.v(),
                y_stride,
                uv_stride,
                subsampled: true,
            };
            convert::planar_to_rgb(&planes, YuvRange::Limited, &mut self.rgb)
                .map_err(|e| bad(e.to_string()))?;
            return Ok(true);
        }
    }
}

impl FrameSource for H264Source {
    fn next_frame(&mut self) -> Result<Frame<'_>, CaptureError> {
        if self.numbering.needs_decode() && !self.decode_next()? {
            return Err(ended(&self.path));
        }
        Ok(self.numbering.frame(self.rgb.view(), &[]))
    }

    fn describe(&self) -> String {
        format!(
            "{}: H.264 ({}) {}x{} at {:.2} fps",
            self.path.display(),
            self.container,
            self.rgb.width(),
            self.rgb.height(),
            self.numbering.fps
        )
    }

    fn size(&self) -> (u32, u32) {
        (self.rgb.width(), self.rgb.height())
    }
}

/// Appends `sample`'s length-prefixed NAL units to `out` with 4-byte start codes.
fn avcc_to_annexb(sample: &[u8], length_size: usize, out: &mut Vec<u8>) -> Result<(), String> {
    let mut rest = sample;
    while !rest.is_empty() {
        if rest.len() < length_size {
            return Err("truncated NAL length".into());
        }
        let len = rest[..length_size]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        rest = &rest[length_size..];
        if len > rest.len() {
            return Err(format!(
                "NAL unit of {len} bytes overruns the sample ({} left)",
                rest.len()
            ));
        }
        out.extend_from_slice(&[0, 0, 0, 1]);
        out.extend_from_slice(&rest[..len]);
        rest = &rest[len..];
    }
    Ok(())
}

/// Cuts an Annex B byte stream into access units, reading it in chunks.
struct AnnexB {
    file: File,
    buf: Vec<u8>,
    /// Start of the first unconsumed NAL unit (at its start code) in `buf`.
    pos: usize,
    eof: bool,
}

const CHUNK: usize = 1 << 16;

impl AnnexB {
    fn new(file: File) -> Self {
        AnnexB {
            file,
            buf: Vec::with_capacity(4 * CHUNK),
            pos: 0,
            eof: false,
        }
    }

    /// Reads more of the file into `buf` (dropping consumed bytes first); false at the end.
    fn fill(&mut self) -> std::io::Result<bool> {
        if self.eof {
            return Ok(false);
        }
        self.buf.drain(..self.pos);
        self.pos = 0;
        let len = self.buf.len();
        self.buf.resize(len + CHUNK, 0);
        let n = self.file.read(&mut self.buf[len..])?;
        self.buf.truncate(len + n);
        self.eof = n == 0;
        Ok(n > 0)
    }

    /// The next NAL unit as (start, end) in `buf`, start code included.
    fn next_nal(&mut self) -> std::io::Result<Option<(usize, usize)>> {
        loop {
            let from = self.pos;
            if let Some(first) = find_start_code(&self.buf[from..]) {
                let body = from + first + 3;
                if let Some(next) = find_start_code(&self.buf[body..]) {
                    return Ok(Some((from + first, body + next)));
                }
                if self.eof {
                    return Ok(Some((from + first, self.buf.len())));
                }
            } else if self.eof {
                return Ok(None);
            }
            if !self.fill()? && self.buf.len() <= self.pos {
                return Ok(None);
            }
        }
    }

    /// Appends the next access unit to `out`; false at the end of the stream.
    fn next_access_unit(&mut self, out: &mut Vec<u8>) -> std::io::Result<bool> {
        let mut has_slice = false;
        while let Some((start, end)) = self.next_nal()? {
            let nal = &self.buf[start..end];
            let header = nal.iter().position(|&b| b == 1).map(|i| i + 1);
            let (kind, first_mb_zero) = match header.and_then(|i| nal.get(i..i + 2)) {
                Some(h) => (h[0] & 0x1F, h[1] & 0x80 != 0),
                None => (0, false),
            };
            let is_slice = matches!(kind, 1 | 5);
            let starts_picture = matches!(kind, 6..=9) || (is_slice && first_mb_zero);
            if has_slice && starts_picture {
                return Ok(true);
            }
            out.extend_from_slice(nal);
            has_slice |= is_slice;
            self.pos = end;
        }
        Ok(!out.is_empty())
    }
}

/// Offset of the first `00 00 01` in `data`.
fn find_start_code(data: &[u8]) -> Option<usize> {
    data.windows(3).position(|w| w == [0, 0, 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avcc_samples_become_start_code_nals() {
        let sample = [0, 0, 0, 2, 0x65, 0xAA, 0, 0, 0, 1, 0x06];
        let mut out = Vec::new();
        avcc_to_annexb(&sample, 4, &mut out).unwrap();
        assert_eq!(out, [0, 0, 0, 1, 0x65, 0xAA, 0, 0, 0, 1, 0x06]);
        let overrun = [0, 0, 0, 9, 0x65];
        assert!(
            avcc_to_annexb(&overrun, 4, &mut Vec::new())
                .unwrap_err()
                .contains("overruns")
        );
    }
}
