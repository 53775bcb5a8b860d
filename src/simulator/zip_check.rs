//! Inspects an uploaded zip the way Smile ID must: tolerant of every shape the
//! SDKs send (smileid-protocol.md §3.2, §9; sdk-wire-traces §2.3, §7).

use std::collections::HashMap;
use std::io::{Cursor, Read};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::Value;

/// What a processable zip contained.
#[derive(Debug, PartialEq, Eq)]
pub struct Inspected {
    pub selfie_found: bool,
    pub liveness_frames: usize,
}

/// Why a zip cannot be processed, as the result code Smile ID reports for it.
#[derive(Debug, PartialEq, Eq)]
pub enum ZipProblem {
    /// 0903: not a zip, or entries cannot be read.
    Corrupt,
    /// 2203-like: info.json missing or malformed; reported as 0001 data invalid.
    InvalidInfoJson,
    /// 0001: no usable selfie.
    NoSelfie,
}

const MAX_ENTRY_BYTES: u64 = 16 * 1024 * 1024;

pub fn inspect(zip_bytes: &[u8]) -> Result<Inspected, ZipProblem> {
    let mut archive = zip::ZipArchive::new(Cursor::new(zip_bytes)).map_err(|_| ZipProblem::Corrupt)?;
    // Names can repeat (Python writes several `base64imgString`); the first wins.
    let mut entries: HashMap<String, Vec<u8>> = HashMap::new();
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index).map_err(|_| ZipProblem::Corrupt)?;
        if entry.is_dir() {
            continue;
        }
        let name = entry
            .name()
            .map_err(|_| ZipProblem::Corrupt)?
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let mut data = Vec::new();
        (&mut entry)
            .take(MAX_ENTRY_BYTES)
            .read_to_end(&mut data)
            .map_err(|_| ZipProblem::Corrupt)?;
        entries.entry(name).or_insert(data);
    }
    let info: Value = entries
        .get("info.json")
        .and_then(|bytes| serde_json::from_slice(bytes).ok())
        .ok_or(ZipProblem::InvalidInfoJson)?;
    let images = info
        .get("images")
        .and_then(Value::as_array)
        .ok_or(ZipProblem::InvalidInfoJson)?;

    let mut selfie_found = false;
    let mut liveness_frames = 0;
    for image in images {
        let Some(type_id) = image_type(image.get("image_type_id")) else {
            continue;
        };
        let bytes = image_bytes(image, &entries);
        let usable = bytes.as_deref().is_some_and(looks_like_image);
        match type_id {
            0 | 2 if usable => selfie_found = true,
            4 | 6 if usable => liveness_frames += 1,
            // Node sends liveness files as local paths it never zips; tolerate and skip them.
            _ => {}
        }
    }
    if !selfie_found {
        return Err(ZipProblem::NoSelfie);
    }
    Ok(Inspected {
        selfie_found,
        liveness_frames,
    })
}

fn image_type(value: Option<&Value>) -> Option<u64> {
    match value? {
        Value::Number(number) => number.as_u64(),
        Value::String(text) => text.trim().parse().ok(),
        _ => None,
    }
}

/// Finds an image's bytes: a zip entry named by `file_name`, or base64 in `image`.
fn image_bytes(image: &Value, entries: &HashMap<String, Vec<u8>>) -> Option<Vec<u8>> {
    let file_name = image.get("file_name").and_then(Value::as_str).unwrap_or_default();
    if !file_name.is_empty() {
        let base_name = file_name.rsplit(['/', '\\']).next().unwrap_or(file_name);
        if let Some(bytes) = entries.get(base_name) {
            return Some(bytes.clone());
        }
    }
    let inline = image.get("image").and_then(Value::as_str).unwrap_or_default();
    let inline = inline.split_once("base64,").map_or(inline, |(_, data)| data);
    BASE64.decode(inline.trim()).ok().filter(|bytes| !bytes.is_empty())
}

fn looks_like_image(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xFF, 0xD8, 0xFF]) || bytes.starts_with(b"\x89PNG\r\n\x1a\n")
}
