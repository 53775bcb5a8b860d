//! The result entries the simulator produces (Smile ID's job-status, result-code and `Actions` pages at <https://docs.usesmileid.com>).

use serde_json::{Map, Value, json};

use smileid::signature::format_timestamp;

/// The sandbox outcome a job asked for through `partner_params.sandbox_result`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SandboxOutcome {
    Approve,
    Reject,
    Provisional,
}

impl SandboxOutcome {
    /// Reads `"0"`, `"1"`, `"2"` (string or number); anything else approves, like the sandbox default.
    pub fn from_partner_params(params: &Map<String, Value>) -> Self {
        let value = match params.get("sandbox_result") {
            Some(Value::String(text)) => text.trim().to_owned(),
            Some(Value::Number(number)) => number.to_string(),
            _ => String::new(),
        };
        match value.as_str() {
            "1" => Self::Reject,
            "2" => Self::Provisional,
            _ => Self::Approve,
        }
    }
}

/// One result code with everything needed to render it.
#[derive(Clone, Copy, Debug)]
pub struct Outcome {
    pub code: &'static str,
    pub text: &'static str,
    pub result_type: &'static str,
    pub is_final: bool,
    pub is_machine: bool,
    pub confidence: &'static str,
    /// Liveness_Check, Selfie_To_Registered_Selfie_Compare, Human_Review_Compare,
    /// Human_Review_Liveness_Check, Register_Selfie.
    pub actions: [&'static str; 5],
}

const NA: &str = "Not Applicable";

pub fn authentication_outcomes(outcome: SandboxOutcome) -> Vec<Outcome> {
    match outcome {
        SandboxOutcome::Approve => vec![Outcome {
            code: "0820",
            text: "Authenticate User Machine Judgement - PASS",
            result_type: "SAIA",
            is_final: true,
            is_machine: true,
            confidence: "99.60",
            actions: ["Passed", "Completed", NA, NA, NA],
        }],
        SandboxOutcome::Reject => vec![Outcome {
            code: "0821",
            text: "Images did not match - Machine Judgement - FAIL",
            result_type: "SAIA",
            is_final: true,
            is_machine: true,
            confidence: "12.40",
            actions: ["Passed", "Failed", NA, NA, NA],
        }],
        SandboxOutcome::Provisional => vec![
            Outcome {
                code: "0822",
                text: "Machine Judgement - Pure Provisional, awaiting human judgement",
                result_type: "SAIA",
                is_final: false,
                is_machine: true,
                confidence: "71.00",
                actions: ["Passed", "Under Review", "Under Review", NA, NA],
            },
            Outcome {
                code: "1220",
                text: "Authenticate User Human Judgement - PASS",
                result_type: "DIVA",
                is_final: true,
                is_machine: false,
                confidence: "100",
                actions: ["Passed", "Completed", "Passed", "Passed", NA],
            },
        ],
    }
}

pub fn registration_outcomes(outcome: SandboxOutcome) -> Vec<Outcome> {
    let machine = |code, text, is_final, actions| Outcome {
        code,
        text,
        result_type: "SAIA",
        is_final,
        is_machine: true,
        confidence: "99.00",
        actions,
    };
    match outcome {
        SandboxOutcome::Approve => vec![machine(
            "0840",
            "Enroll User - Machine Judgement - PASS",
            true,
            ["Passed", NA, NA, NA, "Approved"],
        )],
        SandboxOutcome::Reject => vec![machine(
            "0841",
            "Enroll User - Machine Judgement - FAIL",
            true,
            ["Failed", NA, NA, NA, "Rejected"],
        )],
        SandboxOutcome::Provisional => vec![
            machine(
                "0842",
                "Enroll User - Machine Judgement - Pure Provisional",
                false,
                ["Passed", NA, "Under Review", NA, "Under Review"],
            ),
            Outcome {
                code: "1240",
                text: "Enroll User - Human Judgement - PASS",
                result_type: "DIVA",
                is_final: true,
                is_machine: false,
                confidence: "100",
                actions: ["Passed", NA, "Passed", "Passed", "Approved"],
            },
        ],
    }
}

/// Results for a submission Smile ID could not process.
pub fn failure(code: &'static str, text: &'static str) -> Outcome {
    Outcome {
        code,
        text,
        result_type: "SYSTEM",
        is_final: true,
        is_machine: true,
        confidence: "0",
        actions: [NA, NA, NA, NA, NA],
    }
}

/// A result entry as job_status and callbacks carry it.
pub fn render(
    outcome: &Outcome,
    smile_job_id: &str,
    partner_params: &Map<String, Value>,
    selfie_provided: bool,
) -> Value {
    let [liveness, compare, human_compare, human_liveness, register] = outcome.actions;
    json!({
        "Actions": {
            "Liveness_Check": liveness,
            "Register_Selfie": register,
            "Selfie_Provided": if selfie_provided { "Passed" } else { "Not Applicable" },
            "Verify_ID_Number": NA,
            "Human_Review_Compare": human_compare,
            "Return_Personal_Info": NA,
            "Selfie_To_ID_Card_Compare": NA,
            "Human_Review_Update_Selfie": NA,
            "Human_Review_Liveness_Check": human_liveness,
            "Selfie_To_ID_Authority_Compare": NA,
            "Update_Registered_Selfie_On_File": NA,
            "Selfie_To_Registered_Selfie_Compare": compare,
        },
        "ResultCode": outcome.code,
        "ResultText": outcome.text,
        "ResultType": outcome.result_type,
        "SmileJobID": smile_job_id,
        "JSONVersion": "1.0.0",
        "IsFinalResult": outcome.is_final.to_string(),
        "IsMachineResult": outcome.is_machine.to_string(),
        "ConfidenceValue": outcome.confidence,
        "PartnerParams": partner_params,
        "Source": "WebAPI",
        "timestamp": format_timestamp(chrono::Utc::now()),
    })
}

/// Whether a rendered result means the job achieved its purpose (`job_success`).
pub fn is_success(result: &Value) -> bool {
    matches!(
        result.get("ResultCode").and_then(Value::as_str),
        Some("0820" | "1220" | "0840" | "1240")
    )
}
