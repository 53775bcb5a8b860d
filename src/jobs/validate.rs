//! Checks a submission and turns it into what Smile ID expects: JPEG images and
//! a content fingerprint for idempotency. Image bytes never leave this module in
//! an error or a log.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::time::Duration;

use super::error::{FieldViolation, InvalidReason, JobError, Limit, quoted};
use super::fingerprint::Content;
use super::memory::{MemoryBudget, Refused};
use super::model::{JobKind, Prepared};
use super::settings::ImageLimits;
use crate::fair::{FairLane, Precedence};
use bytes::Bytes;
use image::{ImageDecoder as _, ImageFormat, ImageReader, Limits};

/// Longest wait for decode memory before a submission is shed as overloaded.
const DECODE_WAIT: Duration = Duration::from_secs(10);

pub const MAX_ID_LEN: usize = 100;
pub const LIVENESS_COUNTS: std::ops::RangeInclusive<usize> = 6..=8;
const MAX_PARTNER_PARAMS: usize = 20;
const RESERVED_PARAMS: [&str; 3] = ["user_id", "job_id", "job_type"];

/// The name a caller takes its turns under (its checks, its submissions);
/// unidentified callers share one.
pub(super) fn caller_key(owner: Option<&str>) -> &str {
    owner.unwrap_or_default()
}

/// A submission as callers send it.
pub struct SubmitRequest {
    pub kind: JobKind,
    /// The identity of the caller, recorded on a new job.
    pub owner: Option<String>,
    pub user_id: String,
    pub job_id: String,
    pub selfie: Bytes,
    pub liveness: Vec<Bytes>,
    pub partner_params: BTreeMap<String, String>,
    /// Enrolments: ask Smile ID to enrol the user again although they are enrolled.
    pub allow_new_enroll: bool,
    /// Where it waits for its turns: one of its caller's first few in flight, or further.
    pub precedence: Precedence,
}

impl std::fmt::Debug for SubmitRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubmitRequest")
            .field("kind", &self.kind)
            .field("user_id", &self.user_id)
            .field("job_id", &self.job_id)
            .field("selfie_bytes", &self.selfie.len())
            .field("liveness_frames", &self.liveness.len())
            .field("partner_params", &self.partner_params)
            .finish_non_exhaustive()
    }
}

/// Whether `id` is a valid user_id / job_id: 1-100 of `[A-Za-z0-9._:@-]`.
pub fn id_problem(id: &str) -> Option<String> {
    if id.is_empty() {
        return Some("must not be empty".into());
    }
    if id.len() > MAX_ID_LEN {
        return Some(format!("must be at most {MAX_ID_LEN} characters"));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '@' | '-');
    (!id.chars().all(allowed)).then(|| "may only contain letters, digits and . _ : @ -".into())
}

/// Validates and prepares a submission. Each image's header is read first, so
/// its pixels are known (and bounded) before anything is decoded; the checks,
/// the PNG to JPEG conversion and the fingerprint run on `lane` in the
/// caller's turn, within the process's decode budget.
pub async fn prepare(
    request: SubmitRequest,
    limits: ImageLimits,
    budget: &MemoryBudget,
    lane: &FairLane,
    sandbox: bool,
) -> Result<Prepared, JobError> {
    check_fields(&request, sandbox)?;
    check_sizes(&request, limits)?;
    let mut needed = 0u64;
    for (field, image) in images(&request) {
        needed += decode_cost(image, limits).map_err(|description| {
            JobError::invalid(InvalidReason::InvalidImage, vec![FieldViolation { field, description }])
        })?;
    }
    let permit = budget
        .reserve(needed, DECODE_WAIT)
        .await
        .map_err(|refused| match refused {
            Refused::TooLarge => JobError::invalid(
                InvalidReason::InvalidImage,
                vec![FieldViolation {
                    field: "selfie_image".into(),
                    description: format!(
                        "the images need {} MiB to decode, over this server's {} MiB",
                        needed / (1024 * 1024),
                        budget.capacity_bytes() / (1024 * 1024)
                    ),
                }],
            ),
            Refused::Busy => JobError::overloaded(
                Limit::DecodeMemory,
                "the server is busy checking other images; retry shortly",
            ),
        })?;
    let caller = caller_key(request.owner.as_deref()).to_owned();
    let (request, selfie_jpeg, liveness_jpegs, content_hash) = lane
        .run(&caller, move || {
            let jpegs = images(&request)
                .map(|(field, image)| to_jpeg(image, limits).map_err(|problem| (field, problem)))
                .collect::<Result<Vec<_>, _>>()?;
            drop(permit);
            let content_hash = content_of(&request).fingerprint();
            let mut jpegs = jpegs.into_iter();
            let selfie = jpegs.next().unwrap_or_default();
            Ok((request, selfie, jpegs.collect::<Vec<_>>(), content_hash))
        })
        .await
        .map_err(|_| JobError::Internal("image check was interrupted".into()))?
        .map_err(|(field, description): (String, String)| {
            JobError::invalid(InvalidReason::InvalidImage, vec![FieldViolation { field, description }])
        })?;
    Ok(Prepared {
        kind: request.kind,
        owner: request.owner,
        user_id: request.user_id,
        job_id: request.job_id,
        selfie_jpeg,
        liveness_jpegs,
        partner_params: request.partner_params,
        content_hash,
        submitted_selfie: request.selfie,
        submitted_liveness: request.liveness,
        allow_new_enroll: request.allow_new_enroll,
    })
}

/// The fields of `request` its fingerprint is made of.
pub fn content_of(request: &SubmitRequest) -> Content<'_> {
    Content {
        kind: request.kind,
        user_id: &request.user_id,
        partner_params: &request.partner_params,
        selfie: &request.selfie,
        liveness: &request.liveness,
    }
}

/// The images of a request with their field names: the selfie first.
fn images(request: &SubmitRequest) -> impl Iterator<Item = (String, &Bytes)> {
    std::iter::once(("selfie_image".to_owned(), &request.selfie)).chain(
        request
            .liveness
            .iter()
            .enumerate()
            .map(|(index, frame)| (format!("liveness_images[{index}]"), frame)),
    )
}

/// `sandbox_result` forces an outcome in Smile ID's sandbox; production must never get it.
const SANDBOX_ONLY_PARAM: &str = "sandbox_result";

fn check_fields(request: &SubmitRequest, sandbox: bool) -> Result<(), JobError> {
    let mut violations = Vec::new();
    let mut violate = |field: &str, description: String| {
        violations.push(FieldViolation {
            field: field.to_owned(),
            description,
        });
    };
    if let Some(problem) = id_problem(&request.user_id) {
        violate("user_id", problem);
    }
    if !request.job_id.is_empty()
        && let Some(problem) = id_problem(&request.job_id)
    {
        violate("job_id", problem);
    }
    if request.selfie.is_empty() {
        violate("selfie_image", "a selfie is required".into());
    }
    let frames = request.liveness.len();
    if frames != 0 && !LIVENESS_COUNTS.contains(&frames) {
        violate(
            "liveness_images",
            format!("send none or 6 to 8 liveness frames, not {frames}"),
        );
    }
    if request.partner_params.len() > MAX_PARTNER_PARAMS {
        violate("partner_params", format!("at most {MAX_PARTNER_PARAMS} entries"));
    }
    for (key, value) in &request.partner_params {
        let key_ok = !key.is_empty() && key.len() <= 64 && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !key_ok {
            violate(
                "partner_params",
                format!("key {} must be 1-64 characters of [A-Za-z0-9_]", quoted(key)),
            );
        } else if RESERVED_PARAMS.contains(&key.as_str()) {
            violate(
                "partner_params",
                format!("key {} is reserved; use the request field instead", quoted(key)),
            );
        } else if key == SANDBOX_ONLY_PARAM && !sandbox {
            violate(
                "partner_params",
                format!("key {} only works in the Smile ID sandbox", quoted(key)),
            );
        } else if value.len() > 256 {
            violate(
                "partner_params",
                format!("value of {} must be at most 256 bytes", quoted(key)),
            );
        }
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(JobError::invalid(InvalidReason::InvalidField, violations))
    }
}

fn check_sizes(request: &SubmitRequest, limits: ImageLimits) -> Result<(), JobError> {
    let mut violations = Vec::new();
    let too_big = |len: usize| {
        format!(
            "{len} bytes is over the {} byte limit per image",
            limits.max_image_bytes
        )
    };
    if request.selfie.len() > limits.max_image_bytes {
        violations.push(FieldViolation {
            field: "selfie_image".into(),
            description: too_big(request.selfie.len()),
        });
    }
    for (index, frame) in request.liveness.iter().enumerate() {
        if frame.len() > limits.max_image_bytes {
            violations.push(FieldViolation {
                field: format!("liveness_images[{index}]"),
                description: too_big(frame.len()),
            });
        }
    }
    let total = request.selfie.len() + request.liveness.iter().map(Bytes::len).sum::<usize>();
    if total > limits.max_total_bytes {
        violations.push(FieldViolation {
            field: "liveness_images".into(),
            description: format!(
                "{total} bytes of images in all is over the {} byte limit",
                limits.max_total_bytes
            ),
        });
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(JobError::invalid(InvalidReason::ImageTooLarge, violations))
    }
}

fn format_of(bytes: &[u8]) -> Result<ImageFormat, String> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Ok(ImageFormat::Jpeg)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Ok(ImageFormat::Png)
    } else {
        Err("not a JPEG or PNG image".into())
    }
}

fn name_of(format: ImageFormat) -> &'static str {
    if format == ImageFormat::Jpeg { "JPEG" } else { "PNG" }
}

/// The bytes decoding `bytes` will take, from its header alone; refuses an
/// image whose header is unreadable or whose size is out of bounds.
fn decode_cost(bytes: &Bytes, limits: ImageLimits) -> Result<u64, String> {
    let format = format_of(bytes)?;
    let cannot_decode = || format!("{} header cannot be decoded", name_of(format));
    // A JPEG is checked by its structure, never decoded, so its frame header
    // is all that is read; a PNG is decoded and converted: its pixels, once
    // more as RGB, and the JPEG written.
    if format == ImageFormat::Jpeg {
        let (width, height) = super::jpeg::frame_size(bytes).map_err(|_| cannot_decode())?;
        check_dimensions(width, height, limits)?;
        return Ok(0);
    }
    let decoder = ImageReader::with_format(Cursor::new(bytes.as_ref()), format)
        .into_decoder()
        .map_err(|_| cannot_decode())?;
    let (width, height) = decoder.dimensions();
    check_dimensions(width, height, limits)?;
    Ok(decoder.total_bytes() + u64::from(width) * u64::from(height) * 4)
}

/// Checks the whole image (a truncated or corrupt one is refused, so it never
/// becomes a billed Smile ID job) and returns it as JPEG, which Smile ID
/// expects: a JPEG by its structure, as it came; a PNG decoded and transcoded.
fn to_jpeg(bytes: &Bytes, limits: ImageLimits) -> Result<Bytes, String> {
    let format = format_of(bytes)?;
    if format == ImageFormat::Jpeg {
        return match super::jpeg::check(bytes) {
            Ok(()) => Ok(bytes.clone()),
            Err(problem) => Err(format!("JPEG image {problem}")),
        };
    }
    decode_to_jpeg(bytes, format, limits)
}

/// Decodes the whole image, within the limits, and returns it as JPEG.
fn decode_to_jpeg(bytes: &Bytes, format: ImageFormat, limits: ImageLimits) -> Result<Bytes, String> {
    let name = name_of(format);
    let mut reader = ImageReader::with_format(Cursor::new(bytes.as_ref()), format);
    let mut image_limits = Limits::default();
    image_limits.max_image_width = Some(limits.max_side_px);
    image_limits.max_image_height = Some(limits.max_side_px);
    image_limits.max_alloc = Some(limits.decode_memory_bytes as u64);
    reader.limits(image_limits);
    let decoded = reader.decode().map_err(|_| format!("{name} image cannot be decoded"))?;
    check_dimensions(decoded.width(), decoded.height(), limits)?;
    if format == ImageFormat::Jpeg {
        return Ok(bytes.clone());
    }
    let mut jpeg = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(decoded.to_rgb8())
        .write_to(&mut jpeg, ImageFormat::Jpeg)
        .map_err(|_| "PNG image cannot be converted to JPEG".to_owned())?;
    Ok(Bytes::from(jpeg.into_inner()))
}

fn check_dimensions(width: u32, height: u32, limits: ImageLimits) -> Result<(), String> {
    if width < limits.min_side_px || height < limits.min_side_px {
        return Err(format!(
            "{width}x{height} is smaller than {0}x{0} pixels",
            limits.min_side_px
        ));
    }
    if width > limits.max_side_px || height > limits.max_side_px {
        return Err(format!(
            "{width}x{height} is larger than {0}x{0} pixels",
            limits.max_side_px
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[expect(clippy::cast_possible_truncation, reason = "pixel patterns wrap on purpose")]
    fn encode(format: ImageFormat, side: u32) -> Bytes {
        let image = image::RgbImage::from_fn(side, side, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mut out = Cursor::new(Vec::new());
        image::DynamicImage::ImageRgb8(image)
            .write_to(&mut out, format)
            .expect("encode");
        Bytes::from(out.into_inner())
    }

    #[test]
    fn a_truncated_jpeg_is_refused() {
        let limits = ImageLimits::default();
        let jpeg = encode(ImageFormat::Jpeg, 64);
        for end in [jpeg.len() / 2, jpeg.len() - 2, jpeg.len() - 1] {
            assert!(to_jpeg(&jpeg.slice(..end), limits).is_err(), "cut at {end}");
        }
    }

    /// Today's check of a JPEG before the structural one: the end marker, then a full decode.
    fn fully_decodes(bytes: &[u8]) -> bool {
        let end = bytes.len() - bytes.iter().rev().take_while(|byte| **byte == 0).count();
        bytes[..end].ends_with(&[0xFF, 0xD9])
            && decode_to_jpeg(
                &Bytes::copy_from_slice(bytes),
                ImageFormat::Jpeg,
                ImageLimits::default(),
            )
            .is_ok()
    }

    #[test]
    fn the_structure_refuses_every_broken_jpeg_a_full_decode_refuses() {
        let limits = ImageLimits::default();
        for (side, seed) in [(64, 3), (200, 9)] {
            let good = crate::jobs::jpeg::tests::encode(side, seed);
            assert!(fully_decodes(&good) && to_jpeg(&Bytes::from(good.clone()), limits).is_ok());
            for (what, bad) in crate::jobs::jpeg::tests::corpus(&good) {
                assert!(
                    !fully_decodes(&bad),
                    "{what}: the corpus holds only images a full decode refuses"
                );
                assert!(
                    to_jpeg(&Bytes::from(bad), limits).is_err(),
                    "{what}: passed the structural check"
                );
            }
        }
    }

    #[test]
    fn decoding_cost_is_known_from_the_header() {
        let limits = ImageLimits::default();
        assert_eq!(
            decode_cost(&encode(ImageFormat::Jpeg, 64), limits),
            Ok(0),
            "never decoded"
        );
        assert_eq!(
            decode_cost(&encode(ImageFormat::Png, 64), limits),
            Ok(64 * 64 * 3 + 64 * 64 * 4)
        );
        assert!(decode_cost(&Bytes::from_static(b"\x89PNG\r\n\x1a\n"), limits).is_err());
    }

    #[test]
    fn png_becomes_jpeg_and_jpeg_passes_through() {
        let limits = ImageLimits::default();
        let jpeg = encode(ImageFormat::Jpeg, 32);
        assert_eq!(to_jpeg(&jpeg, limits).expect("jpeg"), jpeg);
        let converted = to_jpeg(&encode(ImageFormat::Png, 32), limits).expect("png");
        assert!(converted.starts_with(&[0xFF, 0xD8, 0xFF]));
    }

    #[test]
    fn no_truncated_or_corrupted_image_makes_it_panic() {
        let limits = ImageLimits::default();
        for image in [encode(ImageFormat::Jpeg, 24), encode(ImageFormat::Png, 24)] {
            for end in 0..image.len() {
                let _ = to_jpeg(&image.slice(..end), limits);
            }
            for index in (0..image.len()).step_by(3) {
                let mut corrupted = image.to_vec();
                corrupted[index] ^= 0x5A;
                let _ = to_jpeg(&Bytes::from(corrupted), limits);
            }
        }
    }

    #[test]
    fn ids_are_checked_for_length_and_charset() {
        assert_eq!(id_problem("user-1@example.com:7_a.b"), None);
        assert!(id_problem("").is_some());
        assert!(id_problem(&"a".repeat(MAX_ID_LEN + 1)).is_some());
        for bad in ["a b", "a/b", "ü", "a\nb", "a;b"] {
            assert!(id_problem(bad).is_some(), "{bad:?}");
        }
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            #[test]
            fn any_bytes_after_an_image_signature_are_checked_without_panic(
                png in any::<bool>(),
                tail in proptest::collection::vec(any::<u8>(), 0..256),
            ) {
                let mut bytes = if png { b"\x89PNG\r\n\x1a\n".to_vec() } else { vec![0xFF, 0xD8, 0xFF] };
                bytes.extend_from_slice(&tail);
                let bytes = Bytes::from(bytes);
                let limits = ImageLimits::default();
                let _ = decode_cost(&bytes, limits);
                let _ = to_jpeg(&bytes, limits);
            }

            #[test]
            fn a_real_image_with_bytes_changed_is_checked_without_panic(
                png in any::<bool>(),
                changes in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            ) {
                let image = encode(if png { ImageFormat::Png } else { ImageFormat::Jpeg }, 24);
                let mut bytes = image.to_vec();
                for (index, value) in changes {
                    let at = index.index(bytes.len());
                    bytes[at] = value;
                }
                let bytes = Bytes::from(bytes);
                let limits = ImageLimits::default();
                if decode_cost(&bytes, limits).is_ok() {
                    let _ = to_jpeg(&bytes, limits);
                }
            }
        }
    }
}
