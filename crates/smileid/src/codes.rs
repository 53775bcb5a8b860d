//! Catalogues of Smile ID codes: result codes (what a job's result means) and
//! error codes (why a request was refused before any job existed).
//!
//! Sources: Smile ID's result-code and error-code pages (<https://docs.usesmileid.com/further-reading/result-codes>,
//! <https://docs.usesmileid.com/further-reading/result-codes/error-codes>)
//! and the official server SDKs. Codes are reliable; texts are indicative.

use std::fmt;

/// What a result means for the caller.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Decision {
    /// The selfie matches the enrolled user.
    Approved,
    /// The selfie does not match, or the user cannot be authenticated.
    Rejected,
    /// A machine approval awaiting human review; a final result follows.
    ProvisionallyApproved,
    /// The selfie looks like a spoof (a photo of a photo, a mask, a screen).
    SuspectedSpoof,
    /// Smile ID could not process the submission (corrupt zip, unusable image).
    Error,
    /// A code this catalogue does not know; the raw code is kept.
    Unknown(String),
}

/// A result code looked up in the catalogue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResultMeaning {
    /// What the result means for the caller.
    pub decision: Decision,
    /// Whether Smile ID reports no further result after this one.
    pub is_final: bool,
    /// Smile ID's wording of the code, for people; callers should go by the code.
    pub text: &'static str,
}

/// Looks up a job_type 2 result code (and the enrolment codes seen beside it).
///
/// An unknown code is classified [`Decision::Unknown`] and taken as final only
/// when Smile ID says so in `IsFinalResult`; the catalogue does not guess.
pub fn classify_result(code: &str) -> ResultMeaning {
    use Decision::*;
    let (decision, is_final, text) = match code {
        "0820" => (Approved, true, "Authenticate User Machine Judgement - PASS"),
        "0821" => (Rejected, true, "Images did not match - Machine Judgement - FAIL"),
        "0822" => (
            ProvisionallyApproved,
            false,
            "Machine Judgement - Pure Provisional, awaiting human judgement",
        ),
        "0823" => (SuspectedSpoof, true, "Machine Judgement - FAIL, Possible Spoof"),
        "0824" => (
            SuspectedSpoof,
            false,
            "Machine Judgement - PROVISIONAL - Possible Spoof, awaiting human judgement",
        ),
        "0825" => (
            ProvisionallyApproved,
            false,
            "Machine Judgement - PROVISIONAL - Machine compare unsure, awaiting human judgement",
        ),
        "0826" => (
            SuspectedSpoof,
            false,
            "PENDING - Possible Spoof, awaiting human judgement",
        ),
        "1220" => (Approved, true, "Authenticate User Human Judgement - PASS"),
        "1221" => (Rejected, true, "Human Judgement - FAIL - Human compare failed"),
        "1222" => (SuspectedSpoof, true, "Human Judgement - FAIL - Spoof detected"),
        "0921" => (Rejected, true, "FAIL - No face found"),
        "0922" => (Rejected, true, "FAIL - Image quality judged too poor"),
        "0907" => (SuspectedSpoof, true, "FAIL - Possible spoof - strict setting"),
        "0001" => (Error, true, "Data invalid - selfie image unusable"),
        "0903" => (Error, true, "Zip corrupt"),
        // SmartSelfie registration (job_type 4), which enrols the users job_type 2 authenticates.
        "0840" => (Approved, true, "Enroll User - Machine Judgement - PASS"),
        "0841" => (Rejected, true, "Enroll User - Machine Judgement - FAIL - Compare"),
        "0842" => (
            ProvisionallyApproved,
            false,
            "Enroll User - Machine Judgement - Pure Provisional",
        ),
        "0843" => (
            SuspectedSpoof,
            true,
            "Enroll User - Machine Judgement - FAIL - Possible Spoof",
        ),
        "0844" => (
            SuspectedSpoof,
            false,
            "Enroll User - Machine Judgement - PROVISIONAL - Possible Spoof",
        ),
        "0846" => (SuspectedSpoof, false, "Enroll User - PENDING - Possible Spoof"),
        "0941" => (Rejected, true, "Enroll User - FAIL - No face found"),
        "0942" => (Rejected, true, "Enroll User - FAIL - Image quality judged too poor"),
        "1240" => (Approved, true, "Enroll User - Human Judgement - PASS"),
        "1241" => (Rejected, true, "Enroll User - Human Judgement - FAIL"),
        "1242" => (SuspectedSpoof, true, "Enroll User - Human Judgement - FAIL - Spoof"),
        other => (Unknown(other.to_owned()), false, "Unknown result code"),
    };
    ResultMeaning {
        decision,
        is_final,
        text,
    }
}

/// Smile ID's synchronous request errors (no job record was made).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// `2201`, `2301`, `2401`: a system error at Smile ID; try again later. The raw code is kept.
    SystemError(String),
    /// `2203`: the body is not valid JSON.
    InvalidJson,
    /// `2204`: a field has the wrong type.
    WrongDataType,
    /// `2205`, `2405`: the signature or partner id was refused.
    Unauthorized,
    /// `2207`: the user was deactivated.
    UserDisabled,
    /// `2208`: the user was deleted.
    UserDeleted,
    /// `2209`: the user is already enrolled (enrolling again needs `allow_new_enroll`).
    UserAlreadyEnrolled,
    /// `2210`: the user is not enrolled, so cannot be authenticated.
    UserNotEnrolled,
    /// `2211`: the user must enrol again before authenticating.
    ReEnrollmentRequired,
    /// `2212`: the job type (or the partner params) is not one Smile ID accepts.
    InvalidJobType,
    /// `2213`, `2413`: a required field is missing.
    MissingParameter,
    /// `2215`: a job with this job id exists; resend with `retry: true` to resume it.
    JobAlreadyExists,
    /// `2216`: Smile ID holds no enrolled photo of the user.
    NoPhotoOnFile,
    /// `2217`: the product is not enabled for the partner.
    InvalidProduct,
    /// `2220`: the partner is not enabled for production.
    ProductionNotEnabled,
    /// `2314`: the pre-signed upload received no zip.
    NoZipReceived,
    /// A code this catalogue does not know; the raw code is kept.
    Other(String),
}

impl ErrorCode {
    /// The error code `code` (as Smile ID sends it, string or number text).
    pub fn parse(code: &str) -> Self {
        use ErrorCode::*;
        match code.trim() {
            c @ ("2201" | "2301" | "2401") => SystemError(c.to_owned()),
            "2203" => InvalidJson,
            "2204" => WrongDataType,
            "2205" | "2405" => Unauthorized,
            "2207" => UserDisabled,
            "2208" => UserDeleted,
            "2209" => UserAlreadyEnrolled,
            "2210" => UserNotEnrolled,
            "2211" => ReEnrollmentRequired,
            "2212" => InvalidJobType,
            "2213" | "2413" => MissingParameter,
            "2215" => JobAlreadyExists,
            "2216" => NoPhotoOnFile,
            "2217" => InvalidProduct,
            "2220" => ProductionNotEnabled,
            "2314" => NoZipReceived,
            other => Other(other.to_owned()),
        }
    }

    /// The four-digit code Smile ID uses for this error.
    pub fn code(&self) -> &str {
        use ErrorCode::*;
        match self {
            SystemError(code) | Other(code) => code,
            InvalidJson => "2203",
            WrongDataType => "2204",
            Unauthorized => "2205",
            UserDisabled => "2207",
            UserDeleted => "2208",
            UserAlreadyEnrolled => "2209",
            UserNotEnrolled => "2210",
            ReEnrollmentRequired => "2211",
            InvalidJobType => "2212",
            MissingParameter => "2213",
            JobAlreadyExists => "2215",
            NoPhotoOnFile => "2216",
            InvalidProduct => "2217",
            ProductionNotEnabled => "2220",
            NoZipReceived => "2314",
        }
    }

    /// Smile ID's text for the code.
    pub fn text(&self) -> &'static str {
        use ErrorCode::*;
        match self {
            SystemError(_) => "System Error",
            InvalidJson => "Error - Invalid JSON",
            WrongDataType => "Error - A parameter is of the wrong data type",
            Unauthorized => "Error - You are not authorized to do that",
            UserDisabled => "Error - Enrolled User is disabled",
            UserDeleted => "Error - Enrolled user is deleted",
            UserAlreadyEnrolled => "Error - Wrong user id. This user is already enrolled",
            UserNotEnrolled => "Error - No enrolled user found",
            ReEnrollmentRequired => "Error - Enrolled user must complete re-enrollment",
            InvalidJobType => "Invalid job type.",
            MissingParameter => "Error - A required parameter is missing",
            JobAlreadyExists => "Job already exists. Did you mean to set the retry flag to true?",
            NoPhotoOnFile => "Error - Enrolled user does not have a photo on file",
            InvalidProduct => "Invalid product.",
            ProductionNotEnabled => "Error - Production is not enabled",
            NoZipReceived => "Error - No Zip File Received",
            Other(_) => "Unknown error",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.code(), self.text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_job_type_2_code_has_its_decision_and_finality() {
        use Decision::*;
        let table = [
            ("0820", Approved, true),
            ("0821", Rejected, true),
            ("0822", ProvisionallyApproved, false),
            ("0823", SuspectedSpoof, true),
            ("0824", SuspectedSpoof, false),
            ("0825", ProvisionallyApproved, false),
            ("0826", SuspectedSpoof, false),
            ("1220", Approved, true),
            ("1221", Rejected, true),
            ("1222", SuspectedSpoof, true),
            ("0921", Rejected, true),
            ("0922", Rejected, true),
            ("0001", Error, true),
            ("0903", Error, true),
            ("0907", SuspectedSpoof, true),
        ];
        for (code, decision, is_final) in table {
            let meaning = classify_result(code);
            assert_eq!((meaning.decision, meaning.is_final), (decision, is_final), "{code}");
        }
    }

    #[test]
    fn unknown_result_code_keeps_the_raw_code() {
        assert_eq!(classify_result("0999").decision, Decision::Unknown("0999".into()));
    }

    #[test]
    fn error_codes_round_trip() {
        for code in [
            "2203", "2204", "2205", "2207", "2208", "2209", "2210", "2211", "2212", "2213", "2215", "2216", "2217",
            "2220", "2314",
        ] {
            assert_eq!(ErrorCode::parse(code).code(), code);
        }
        assert_eq!(ErrorCode::parse("2405"), ErrorCode::Unauthorized);
        assert_eq!(ErrorCode::parse("2201"), ErrorCode::SystemError("2201".into()));
        assert_eq!(ErrorCode::parse("7777"), ErrorCode::Other("7777".into()));
    }
}
