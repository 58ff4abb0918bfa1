//! The box sizes of an MP4 header, checked before the `mp4` crate reads it: the crate allocates
//! some boxes' contents at the size the file declares before reading them (a `meta` child, for
//! one), so a size past the file's end made it panic (capacity overflow) or abort the process
//! (an allocation that cannot be made). Found by fuzzing (docs/fuzzing.md).

use std::io::{Read, Seek, SeekFrom};

/// The largest `moov` or `moof` box read: a header, not media (an hour at 30 fps is ~2 MB).
const MAX_HEADER_BOX: u64 = 64 << 20;
/// Nesting deeper than any header the crate reads.
const MAX_DEPTH: u32 = 16;

/// Whether a box's payload is a sequence of boxes (after this many bytes of its own fields), in
/// the parts of a header the crate reads.
fn children_at(name: &[u8]) -> Option<usize> {
    match name {
        b"moov" | b"trak" | b"mdia" | b"minf" | b"stbl" | b"dinf" | b"edts" | b"udta" | b"mvex"
        | b"moof" | b"traf" | b"ilst" => Some(0),
        // A full box: version and flags first.
        b"meta" => Some(4),
        _ => None,
    }
}

/// A box header's size and length (8 bytes, or 16 with a 64-bit size) from its first 16 bytes
/// (`head[8..16]` read only for a 64-bit size); `left`: the bytes from the box's start to the
/// end of its parent (a size of 0 means all of them).
fn size_and_header(head: &[u8], left: u64) -> (u64, u64) {
    let word = |i: usize| u32::from_be_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
    match word(0) {
        0 => (left, 8),
        1 => ((u64::from(word(8)) << 32) | u64::from(word(12)), 16),
        s => (u64::from(s), 8),
    }
}

/// Every box of `data` (and of the boxes inside it, for containers) within `data`. `items`: the
/// children of an `ilst`, each a container of `data` boxes whatever its name.
fn check_level(data: &[u8], items: bool, depth: u32) -> Result<(), String> {
    let mut at = 0usize;
    while data.len() - at >= 8 {
        let left = (data.len() - at) as u64;
        let name = &data[at + 4..at + 8];
        if data[at..at + 4] == 1u32.to_be_bytes() && left < 16 {
            return Err(format!("box {}: cut short", String::from_utf8_lossy(name)));
        }
        let (size, header) = size_and_header(&data[at..], left);
        let header = header as usize;
        if size < header as u64 || size > left {
            return Err(format!(
                "box {} declares {size} bytes where its parent has {left} left",
                String::from_utf8_lossy(name)
            ));
        }
        let body = &data[at + header..at + size as usize];
        let inner = if items { Some(0) } else { children_at(name) };
        if let Some(skip) = inner
            && depth < MAX_DEPTH
            && body.len() >= skip
        {
            check_level(&body[skip..], name == b"ilst", depth + 1)?;
        }
        at += size as usize;
    }
    Ok(())
}

/// Checks the `moov` and `moof` boxes of an MP4 file of `file_size` bytes (each read whole,
/// at most [`MAX_HEADER_BOX`], within the file). Another top-level box running past the end
/// (the media of a recording cut short) ends the scan.
pub(super) fn check_boxes(file: &mut (impl Read + Seek), file_size: u64) -> Result<(), String> {
    let mut at = 0u64;
    while file_size - at >= 8 {
        file.seek(SeekFrom::Start(at)).map_err(|e| e.to_string())?;
        let mut head = [0u8; 16];
        file.read_exact(&mut head[..8]).map_err(|e| e.to_string())?;
        let name = [head[4], head[5], head[6], head[7]];
        let left = file_size - at;
        if head[..4] == 1u32.to_be_bytes() {
            file.read_exact(&mut head[8..]).map_err(|e| e.to_string())?;
        }
        let (size, header) = size_and_header(&head, left);
        let shown = String::from_utf8_lossy(&name);
        let is_header = &name == b"moov" || &name == b"moof";
        let is_event = &name == b"emsg";
        if size < header || (is_header && size > left) {
            return Err(format!(
                "box {shown} declares {size} bytes where the file has {left} left"
            ));
        }
        if size > left {
            // A recording cut short (its `mdat` runs past the end): it plays to where it breaks
            // off; nothing after it is read.
            break;
        }
        if is_header || is_event {
            if size > MAX_HEADER_BOX {
                return Err(format!(
                    "box {shown} of {size} bytes: too large for a header"
                ));
            }
            let mut body = vec![0u8; (size - header) as usize];
            file.read_exact(&mut body).map_err(|e| e.to_string())?;
            if is_header {
                check_level(&body, false, 1)?;
            } else {
                check_event(&body)?;
            }
        }
        at += size;
    }
    Ok(())
}

/// An `emsg` (event message) box's body holds what the crate reads before the message: version
/// and flags, its fixed fields and two NUL-terminated strings. The crate takes the message's
/// length as the box size minus those, unchecked: a box too small for them made it allocate
/// ~2⁶⁴ bytes (a capacity-overflow panic at start-up; found by fuzzing, `replay` target).
fn check_event(body: &[u8]) -> Result<(), String> {
    let cut = || "box emsg: too small for its fields".to_string();
    let (&version, rest) = body.split_first().ok_or_else(cut)?;
    let rest = rest.get(3..).ok_or_else(cut)?;
    // Version 0: the strings, then timescale, time delta, duration and id (4 bytes each);
    // version 1: timescale, time (8 bytes), duration and id, then the strings.
    let (fixed, strings) = match version {
        0 => (16, rest),
        1 => (20, rest.get(20..).ok_or_else(cut)?),
        v => return Err(format!("box emsg: version {v} (0 or 1)")),
    };
    let first = strings.iter().position(|&b| b == 0).ok_or_else(cut)?;
    let second = strings[first + 1..]
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(cut)?;
    if first + second + 2 + fixed > rest.len() {
        return Err(cut());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mp4_box(name: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut b = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        b.extend_from_slice(name);
        b.extend_from_slice(body);
        b
    }

    #[test]
    fn an_event_box_too_small_for_its_fields_is_refused() {
        let file = |emsg: &[u8]| [mp4_box(b"ftyp", b"isom"), mp4_box(b"emsg", emsg)].concat();
        let check = |emsg: &[u8]| {
            let f = file(emsg);
            check_boxes(&mut std::io::Cursor::new(&f), f.len() as u64)
        };
        let v0 = [&[0u8, 0, 0, 0][..], b"urn:x\0v\0", &[0; 16], b"message"].concat();
        let v1 = [&[1u8, 0, 0, 0][..], &[0; 20], b"urn:x\0v\0"].concat();
        assert_eq!(check(&v0), Ok(()));
        assert_eq!(check(&v1), Ok(()));
        for bad in [
            &[][..],
            &[0, 0, 0],
            &v0[..14],
            &v1[..20],
            &v1[..v1.len() - 1],
        ] {
            let err = check(bad).unwrap_err();
            assert!(err.contains("emsg"), "{err}");
        }
        assert!(check(&[2, 0, 0, 0]).unwrap_err().contains("version 2"));
    }

    #[test]
    fn a_box_larger_than_its_parent_is_found_at_any_depth() {
        let hdlr = mp4_box(b"hdlr", &[0; 24]);
        let good_meta = [&[0u8; 4][..], &hdlr].concat();
        let good = [
            mp4_box(b"ftyp", b"isom"),
            mp4_box(b"moov", &mp4_box(b"trak", &mp4_box(b"meta", &good_meta))),
        ]
        .concat();
        let mut cursor = std::io::Cursor::new(&good);
        assert_eq!(check_boxes(&mut cursor, good.len() as u64), Ok(()));
        // A child of meta declaring 2^31 bytes: what made the crate allocate that much.
        let mut bad = good.clone();
        let at = bad.len() - hdlr.len();
        bad[at..at + 4].copy_from_slice(&(1u32 << 31).to_be_bytes());
        let mut cursor = std::io::Cursor::new(&bad);
        let err = check_boxes(&mut cursor, bad.len() as u64).unwrap_err();
        assert!(err.contains("box hdlr declares 2147483648 bytes"), "{err}");
        // A header past the end of the file; media past it is a recording cut short.
        let cut = &good[..good.len() - 1];
        let mut cursor = std::io::Cursor::new(cut);
        assert!(check_boxes(&mut cursor, cut.len() as u64).is_err());
        let cut_media = [good.clone(), mp4_box(b"mdat", &[7; 64])].concat();
        let cut_media = &cut_media[..cut_media.len() - 10];
        let mut cursor = std::io::Cursor::new(cut_media);
        assert_eq!(check_boxes(&mut cursor, cut_media.len() as u64), Ok(()));
    }
}
