//! The zip uploaded to Smile ID's pre-signed URL: `info.json` first, then one
//! entry per image file, in the shape the official server SDKs (smile-identity-core-python,
//! smile-identity-core-js) produce.

use std::io::{Cursor, Write};

use serde_json::{Value, json};
use zip::CompressionMethod;
use zip::write::{SimpleFileOptions, ZipWriter};

use super::wire::PartnerParams;

/// The `file_name` announced in the prep upload.
pub const ZIP_FILE_NAME: &str = "selfie.zip";
/// The zip entry holding the selfie.
pub const SELFIE_ENTRY: &str = "selfie.jpg";
/// `image_type_id` of a selfie sent as a file in the zip.
pub const IMAGE_TYPE_SELFIE_FILE: u32 = 0;
/// `image_type_id` of a liveness frame sent as a file in the zip.
pub const IMAGE_TYPE_LIVENESS_FILE: u32 = 4;

/// Everything `info.json` needs besides the images.
pub struct PackageInfo<'a> {
    /// The partner id.
    pub partner_id: &'a str,
    /// The job's partner params, as sent in the prep upload.
    pub partner_params: &'a PartnerParams,
    /// Where results go, as sent in the prep upload.
    pub callback_url: Option<&'a str>,
    /// The signed timestamp of the prep upload.
    pub timestamp: &'a str,
    /// The signature of the prep upload.
    pub signature: &'a str,
    /// Whether this resumes an existing job.
    pub retry: bool,
    /// The pre-signed URL the zip is sent to.
    pub upload_url: &'a str,
}

/// The zip entry holding liveness frame `index` (from 0).
pub fn liveness_entry_name(index: usize) -> String {
    format!("liveness_{index}.jpg")
}

/// Builds `info.json` in the server-SDK shape.
pub fn info_json(info: &PackageInfo<'_>, liveness_count: usize) -> Value {
    let mut images = vec![json!({
        "image_type_id": IMAGE_TYPE_SELFIE_FILE, "image": "", "file_name": SELFIE_ENTRY,
    })];
    images.extend((0..liveness_count).map(|index| {
        json!({"image_type_id": IMAGE_TYPE_LIVENESS_FILE, "image": "", "file_name": liveness_entry_name(index)})
    }));
    json!({
        "package_information": {
            "apiVersion": {"buildNumber": 0, "majorVersion": 2, "minorVersion": 0},
            "language": "rust",
        },
        "misc_information": {
            "timestamp": info.timestamp,
            "signature": info.signature,
            "retry": if info.retry { "true" } else { "false" },
            "partner_params": info.partner_params,
            "file_name": ZIP_FILE_NAME,
            "smile_client_id": info.partner_id,
            "callback_url": info.callback_url.unwrap_or(""),
            "userData": {
                "isVerifiedProcess": false, "name": "", "fbUserID": "", "firstName": "",
                "lastName": "", "gender": "", "email": "", "phone": "",
                "countryCode": "+", "countryName": "",
            },
        },
        "id_info": {},
        "images": images,
        "server_information": info.upload_url,
    })
}

/// `info.json`'s bytes.
pub fn info_bytes(info: &PackageInfo<'_>, liveness_count: usize) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(&info_json(info, liveness_count))
}

/// Builds the zip around `info.json`'s bytes. Every entry is stored, as the
/// Node SDK sends it: JPEG is compressed already, and deflating a kilobyte of
/// JSON would cost a compressor's whole state for a few hundred bytes. CPU
/// work (CRCs of every byte): run it off the async workers.
pub fn build_zip(
    info_bytes: &[u8],
    selfie_jpeg: &[u8],
    liveness_jpegs: &[impl AsRef<[u8]>],
) -> zip::result::ZipResult<Vec<u8>> {
    let mut writer = ZipWriter::new(Cursor::new(Vec::with_capacity(
        selfie_jpeg.len() + liveness_jpegs.iter().map(|image| image.as_ref().len()).sum::<usize>() + 4096,
    )));
    let stored = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
    writer.start_file("info.json", stored)?;
    writer.write_all(info_bytes)?;
    writer.start_file(SELFIE_ENTRY, stored)?;
    writer.write_all(selfie_jpeg)?;
    for (index, frame) in liveness_jpegs.iter().enumerate() {
        writer.start_file(liveness_entry_name(index), stored)?;
        writer.write_all(frame.as_ref())?;
    }
    Ok(writer.finish()?.into_inner())
}
