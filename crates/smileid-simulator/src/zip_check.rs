//! Inspects an uploaded zip the way Smile ID must: tolerant of every shape the
//! SDKs send (smile-identity-core-python, smile-identity-core-js).

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

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, data) in entries {
            writer
                .start_file(*name, zip::write::SimpleFileOptions::default())
                .expect("entry");
            writer.write_all(data).expect("write");
        }
        writer.finish().expect("finish").into_inner()
    }

    const JPEG_HEAD: &[u8] = &[0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10];

    #[test]
    fn reads_server_sdk_mobile_and_base64_shapes() {
        let server = zip_of(&[
            ("info.json", br#"{"images":[{"image_type_id":0,"image":"","file_name":"selfie.jpg"},{"image_type_id":4,"file_name":"liveness_0.jpg"}]}"#),
            ("selfie.jpg", JPEG_HEAD),
            ("liveness_0.jpg", JPEG_HEAD),
        ]);
        assert_eq!(
            inspect(&server),
            Ok(Inspected {
                selfie_found: true,
                liveness_frames: 1
            })
        );
        let base64_selfie = BASE64.encode(JPEG_HEAD);
        let inline =
            format!(r#"{{"images":[{{"image_type_id":"2","image":"data:image/jpeg;base64,{base64_selfie}"}}]}}"#);
        let mobile = zip_of(&[("info.json", inline.as_bytes()), ("base64imgString", b"9k=")]);
        assert_eq!(
            inspect(&mobile),
            Ok(Inspected {
                selfie_found: true,
                liveness_frames: 0
            })
        );
    }

    #[test]
    fn no_input_makes_it_panic() {
        let valid = zip_of(&[
            (
                "info.json",
                br#"{"images":[{"image_type_id":0,"file_name":"selfie.jpg"}]}"#,
            ),
            ("selfie.jpg", JPEG_HEAD),
        ]);
        assert!(inspect(&valid).is_ok());
        // Every truncation and a byte flipped at every position: an answer, never a panic.
        for end in 0..valid.len() {
            let _ = inspect(&valid[..end]);
        }
        for index in 0..valid.len() {
            let mut corrupted = valid.clone();
            corrupted[index] ^= 0xA5;
            let _ = inspect(&corrupted);
        }
        assert_eq!(inspect(b""), Err(ZipProblem::Corrupt));
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #[test]
            fn any_bytes_are_read_or_refused_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
                let _ = inspect(&bytes);
            }

            #[test]
            fn any_info_json_in_a_real_zip_is_read_without_panic(
                info in "\\PC{0,200}",
                name in "[a-z_.]{1,16}",
                data in proptest::collection::vec(any::<u8>(), 0..64),
            ) {
                let _ = inspect(&zip_of(&[("info.json", info.as_bytes()), (name.as_str(), &data)]));
            }
        }
    }
}
