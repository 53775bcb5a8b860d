//! A JPEG's structure, checked without decoding its pixels: the markers in
//! order, the frame, table and scan headers consistent, entropy-coded data in
//! every scan, and the end-of-image marker with nothing after it but padding.
//! Truncated files and broken markers are refused at a small fraction of a
//! full decode's cost; a JPEG is sent to Smile ID as it came, so nothing else
//! of it is needed. (PNGs are still decoded, since they are transcoded.)

/// What is wrong with a JPEG's structure.
pub type Problem = &'static str;

const SOI: u8 = 0xD8;
const EOI: u8 = 0xD9;
const SOS: u8 = 0xDA;
const DQT: u8 = 0xDB;
const DHT: u8 = 0xC4;
const DRI: u8 = 0xDD;

/// Whether `marker` starts a frame (SOF0-15, but DHT, JPG and DAC).
fn is_frame(marker: u8) -> bool {
    matches!(marker, 0xC0..=0xCF) && !matches!(marker, DHT | 0xC8 | 0xCC)
}

fn is_restart(marker: u8) -> bool {
    matches!(marker, 0xD0..=0xD7)
}

/// The marker at `at` (after any fill bytes), and where its segment starts.
fn marker_at(bytes: &[u8], mut at: usize) -> Result<(u8, usize), Problem> {
    if bytes.get(at) != Some(&0xFF) {
        return Err(if at >= bytes.len() {
            "is truncated"
        } else {
            "has a corrupt marker"
        });
    }
    while bytes.get(at) == Some(&0xFF) {
        at += 1;
    }
    let marker = *bytes.get(at).ok_or("is truncated")?;
    Ok((marker, at + 1))
}

/// The segment whose length field is at `at`, and where the next marker starts.
fn segment_at(bytes: &[u8], at: usize) -> Result<(&[u8], usize), Problem> {
    let length = match bytes.get(at..at + 2) {
        Some(&[high, low]) => usize::from(u16::from_be_bytes([high, low])),
        _ => return Err("is truncated"),
    };
    if length < 2 {
        return Err("has a corrupt segment length");
    }
    let segment = bytes.get(at + 2..at + length).ok_or("is truncated")?;
    Ok((segment, at + length))
}

/// A JPEG's width and height, from its frame header alone.
pub fn frame_size(bytes: &[u8]) -> Result<(u32, u32), Problem> {
    if bytes.get(..2) != Some(&[0xFF, SOI]) {
        return Err("does not start with a JPEG start-of-image marker");
    }
    let mut at = 2;
    loop {
        let (marker, after) = marker_at(bytes, at)?;
        match marker {
            0x01 => at = after,
            SOS | EOI => return Err("has no frame header before its image data"),
            0x00 | SOI => return Err("has a corrupt marker"),
            marker if is_restart(marker) => return Err("has a restart marker outside a scan"),
            marker => {
                let (segment, next) = segment_at(bytes, after)?;
                if is_frame(marker) {
                    frame(segment)?;
                    let [_, h1, h0, w1, w0, ..] = *segment else {
                        return Err("has a corrupt frame header");
                    };
                    return Ok((
                        u32::from(u16::from_be_bytes([w1, w0])),
                        u32::from(u16::from_be_bytes([h1, h0])),
                    ));
                }
                at = next;
            }
        }
    }
}

/// Checks `bytes` as a whole JPEG.
pub fn check(bytes: &[u8]) -> Result<(), Problem> {
    if bytes.get(..2) != Some(&[0xFF, SOI]) {
        return Err("does not start with a JPEG start-of-image marker");
    }
    let mut at = 2;
    let mut components: Option<Vec<u8>> = None;
    let (mut quantized, mut scanned) = (false, false);
    loop {
        let (marker, after) = marker_at(bytes, at)?;
        at = after;
        match marker {
            EOI => {
                if !scanned {
                    return Err("has no image data");
                }
                // Some encoders pad the file with zeros.
                return if bytes[at..].iter().all(|byte| *byte == 0) {
                    Ok(())
                } else {
                    Err("has data after its end-of-image marker")
                };
            }
            SOI => return Err("has a second start-of-image marker"),
            0x00 => return Err("has a corrupt marker"),
            0x01 => continue,
            marker if is_restart(marker) => return Err("has a restart marker outside a scan"),
            _ => {}
        }
        let (segment, next) = segment_at(bytes, at)?;
        at = next;
        match marker {
            marker if is_frame(marker) => {
                if components.is_some() {
                    return Err("has a second frame header");
                }
                components = Some(frame(segment)?);
            }
            DHT => huffman_tables(segment)?,
            DQT => {
                quantization_tables(segment)?;
                quantized = true;
            }
            DRI if segment.len() != 2 => return Err("has a corrupt restart interval"),
            SOS => {
                let declared = components.as_deref().ok_or("has a scan before its frame header")?;
                if !quantized {
                    return Err("has no quantization table");
                }
                scan_header(segment, declared)?;
                at = entropy_coded_data(bytes, at)?;
                scanned = true;
            }
            _ => {}
        }
    }
}

/// A frame header's component ids.
fn frame(segment: &[u8]) -> Result<Vec<u8>, Problem> {
    let &[precision, h1, h0, w1, w0, count, ref specs @ ..] = segment else {
        return Err("has a corrupt frame header");
    };
    let (height, width) = (u16::from_be_bytes([h1, h0]), u16::from_be_bytes([w1, w0]));
    let count = usize::from(count);
    if !matches!(precision, 8 | 12 | 16) || height == 0 || width == 0 || !(1..=4).contains(&count) {
        return Err("has a corrupt frame header");
    }
    if specs.len() != 3 * count {
        return Err("has a corrupt frame header");
    }
    let mut ids = Vec::with_capacity(count);
    for spec in specs.chunks_exact(3) {
        let (sampling, table) = (spec[1], spec[2]);
        if !(1..=4).contains(&(sampling >> 4)) || !(1..=4).contains(&(sampling & 0x0F)) || table > 3 {
            return Err("has a corrupt frame header");
        }
        ids.push(spec[0]);
    }
    Ok(ids)
}

fn huffman_tables(mut segment: &[u8]) -> Result<(), Problem> {
    while let Some((&class_and_id, rest)) = segment.split_first() {
        let counts = rest.get(..16).ok_or("has a corrupt Huffman table")?;
        let symbols: usize = counts.iter().map(|count| usize::from(*count)).sum();
        if class_and_id >> 4 > 1 || class_and_id & 0x0F > 3 || symbols > 256 {
            return Err("has a corrupt Huffman table");
        }
        segment = rest.get(16 + symbols..).ok_or("has a corrupt Huffman table")?;
    }
    Ok(())
}

fn quantization_tables(mut segment: &[u8]) -> Result<(), Problem> {
    if segment.is_empty() {
        return Err("has a corrupt quantization table");
    }
    while let Some((&precision_and_id, rest)) = segment.split_first() {
        let size = match precision_and_id >> 4 {
            0 => 64,
            1 => 128,
            _ => return Err("has a corrupt quantization table"),
        };
        if precision_and_id & 0x0F > 3 {
            return Err("has a corrupt quantization table");
        }
        segment = rest.get(size..).ok_or("has a corrupt quantization table")?;
    }
    Ok(())
}

fn scan_header(segment: &[u8], declared: &[u8]) -> Result<(), Problem> {
    let Some((&count, rest)) = segment.split_first() else {
        return Err("has a corrupt scan header");
    };
    let count = usize::from(count);
    if !(1..=4).contains(&count) || rest.len() != 2 * count + 3 {
        return Err("has a corrupt scan header");
    }
    if rest[..2 * count]
        .chunks_exact(2)
        .any(|spec| !declared.contains(&spec[0]))
    {
        return Err("has a scan of a component its frame does not declare");
    }
    Ok(())
}

/// Where the entropy-coded data starting at `at` ends: at the next marker
/// that is not a stuffed byte or a restart marker.
fn entropy_coded_data(bytes: &[u8], at: usize) -> Result<usize, Problem> {
    let mut index = at;
    loop {
        // Most of a JPEG's bytes are here: a vectorised search, not a byte loop.
        let found = memchr::memchr(0xFF, &bytes[index..]).ok_or("is truncated")?;
        index += found;
        match bytes.get(index + 1) {
            None => return Err("is truncated"),
            Some(0x00) => index += 2,
            Some(&marker) if is_restart(marker) => index += 2,
            Some(0xFF) => index += 1,
            Some(_) if index == at => return Err("has a scan without data"),
            Some(_) => return Ok(index),
        }
    }
}

#[cfg(test)]
pub mod tests {
    use std::io::Cursor;

    use super::*;

    #[expect(clippy::cast_possible_truncation, reason = "pixel patterns wrap on purpose")]
    pub fn encode(side: u32, seed: u8) -> Vec<u8> {
        let image = image::RgbImage::from_fn(side, side, |x, y| {
            image::Rgb([(x as u8).wrapping_mul(seed), (y as u8) ^ seed, seed])
        });
        let mut out = Cursor::new(Vec::new());
        image::DynamicImage::ImageRgb8(image)
            .write_to(&mut out, image::ImageFormat::Jpeg)
            .expect("encode");
        out.into_inner()
    }

    #[test]
    fn real_jpegs_pass() {
        for (side, seed) in [(16, 1), (64, 7), (200, 13)] {
            let good = encode(side, seed);
            assert_eq!(check(&good), Ok(()), "{side}x{side}");
            let mut padded = good.clone();
            padded.extend_from_slice(&[0, 0, 0]);
            assert_eq!(check(&padded), Ok(()), "zero padding after the end");
        }
    }

    #[test]
    fn frame_size_agrees_with_the_decoder() {
        for (side, seed) in [(16, 1), (64, 7), (200, 13)] {
            let good = encode(side, seed);
            let decoder = image::ImageReader::with_format(Cursor::new(&good), image::ImageFormat::Jpeg)
                .into_decoder()
                .expect("header");
            assert_eq!(
                frame_size(&good),
                Ok(image::ImageDecoder::dimensions(&decoder)),
                "{side}x{side}"
            );
        }
        let good = encode(24, 5);
        let sof = (2..good.len() - 1)
            .find(|&at| good[at] == 0xFF && good[at + 1] == 0xC0)
            .expect("a baseline frame header");
        assert_eq!(frame_size(&good[..sof]), Err("is truncated"));
        assert_eq!(frame_size(&good[..sof + 6]), Err("is truncated"));
        let mut zero_width = good.clone();
        zero_width[sof + 7..sof + 9].copy_from_slice(&[0, 0]);
        assert_eq!(frame_size(&zero_width), Err("has a corrupt frame header"));
        assert!(frame_size(b"\x89PNG").is_err());
    }

    #[test]
    fn no_input_makes_it_panic() {
        let good = encode(24, 5);
        for end in 0..good.len() {
            let _ = check(&good[..end]);
            let _ = frame_size(&good[..end]);
        }
        for at in 0..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0x5A;
            let _ = check(&bad);
            let _ = frame_size(&bad);
        }
    }

    /// Broken JPEGs of every kind the structural check is for, made from `good`.
    pub fn corpus(good: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut broken = Vec::new();
        for end in [
            2,
            3,
            20,
            good.len() / 3,
            good.len() / 2,
            good.len() - 3,
            good.len() - 2,
            good.len() - 1,
        ] {
            broken.push((format!("cut at {end}"), good[..end].to_vec()));
        }
        let markers: Vec<usize> = (2..good.len() - 1)
            .filter(|&at| good[at] == 0xFF && matches!(good[at + 1], 0xC0 | 0xC4 | 0xDA | 0xDB))
            .collect();
        for at in markers {
            let mut bad = good.to_vec();
            bad[at + 1] = 0x00;
            broken.push((format!("marker at {at} zeroed"), bad));
            let mut bad = good.to_vec();
            bad[at + 2] = 0xFF;
            bad[at + 3] = 0xFF;
            broken.push((format!("segment at {at} overlong"), bad));
        }
        let mut second_start = good.to_vec();
        second_start.splice(2..2, [0xFF, SOI]);
        broken.push(("two starts".into(), second_start));
        let no_end = good[..good.len() - 2].iter().copied().chain([0xAB, 0xCD]).collect();
        broken.push(("no end marker".into(), no_end));
        broken
    }
}
