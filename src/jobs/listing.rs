//! ListJobs: pages of jobs, newest first, behind opaque page tokens (AIP-158).
//!
//! A token names where its page ended and the filter it was issued for, so a
//! token cannot be replayed with a different filter and skip or repeat jobs.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use super::error::JobError;
use super::model::Job;
use super::ports::{JobCursor, JobFilter, SharedStore};
use super::validate::id_problem;

/// Jobs a page holds when the caller does not say.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// Most jobs a page holds; larger requests are served this many (AIP-158).
pub const MAX_PAGE_SIZE: u32 = 500;

/// One page of a listing.
#[derive(Debug)]
pub struct JobPage {
    pub jobs: Vec<Job>,
    /// Where the next page starts; none on the last page.
    pub next_page_token: Option<String>,
}

/// The jobs a page holds for a requested `page_size` (0: the default).
pub fn page_size(requested: i32) -> Result<u32, JobError> {
    match u32::try_from(requested) {
        Ok(0) => Ok(DEFAULT_PAGE_SIZE),
        Ok(size) => Ok(size.min(MAX_PAGE_SIZE)),
        Err(_) => Err(JobError::invalid_field(
            "page_size",
            format!("must be 0 (for {DEFAULT_PAGE_SIZE}) or positive, got {requested}"),
        )),
    }
}

/// A short digest of a filter, carried in its page tokens.
fn fingerprint(filter: &JobFilter) -> String {
    let text = format!(
        "{}\u{0}{}\u{0}{}\u{0}{}",
        filter.owner.as_deref().unwrap_or_default(),
        filter.user_id.as_deref().unwrap_or_default(),
        filter.state.map(super::model::JobState::as_str).unwrap_or_default(),
        filter.kind.map(super::model::JobKind::as_str).unwrap_or_default()
    );
    crate::lower_hex(&Sha256::digest(text.as_bytes())[..8])
}

/// The token that continues `filter`'s listing after `cursor`.
pub fn encode_token(filter: &JobFilter, cursor: &JobCursor) -> String {
    let text = format!("{} {} {}", cursor.created_ms, cursor.job_id, fingerprint(filter));
    URL_SAFE_NO_PAD.encode(text)
}

/// Reads a token this service issued for `filter`; anything else is refused.
pub fn decode_token(filter: &JobFilter, token: &str) -> Result<JobCursor, JobError> {
    let refused = || JobError::InvalidPageToken;
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| refused())?;
    let text = String::from_utf8(bytes).map_err(|_| refused())?;
    let mut parts = text.split(' ');
    let (Some(created_ms), Some(job_id), Some(issued_for), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(refused());
    };
    let created_ms = created_ms.parse::<i64>().map_err(|_| refused())?;
    if id_problem(job_id).is_some()
        || issued_for != fingerprint(filter)
        || encode_token(
            filter,
            &JobCursor {
                created_ms,
                job_id: job_id.to_owned(),
            },
        ) != token
    {
        return Err(refused());
    }
    Ok(JobCursor {
        created_ms,
        job_id: job_id.to_owned(),
    })
}

/// A page of the jobs `filter` matches, newest first, after `page_token`
/// (empty: from the newest).
pub async fn list_jobs(
    store: &SharedStore,
    filter: &JobFilter,
    page_size: u32,
    page_token: &str,
) -> Result<JobPage, JobError> {
    if let Some(description) = filter.user_id.as_deref().and_then(id_problem) {
        return Err(JobError::invalid_field("user_id", description));
    }
    let after = (!page_token.is_empty())
        .then(|| decode_token(filter, page_token))
        .transpose()?;
    // One more than the page shows whether another page follows.
    let mut jobs = store.list_jobs(filter, after.as_ref(), page_size + 1).await?;
    let next_page_token = if jobs.len() > page_size as usize {
        jobs.truncate(page_size as usize);
        jobs.last().map(|last| encode_token(filter, &JobCursor::of(last)))
    } else {
        None
    };
    Ok(JobPage { jobs, next_page_token })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::model::{JobKind, JobState};

    fn filter() -> JobFilter {
        JobFilter {
            owner: None,
            user_id: Some("alice".into()),
            state: Some(JobState::Completed),
            kind: None,
        }
    }

    #[test]
    fn a_token_reads_back_only_for_its_own_filter() {
        let cursor = JobCursor {
            created_ms: 1_790_000_000_000,
            job_id: "job.1:x@y-z".into(),
        };
        let token = encode_token(&filter(), &cursor);
        assert_eq!(decode_token(&filter(), &token).expect("own filter"), cursor);
        let other = JobFilter {
            kind: Some(JobKind::Enrollment),
            ..filter()
        };
        assert!(matches!(decode_token(&other, &token), Err(JobError::InvalidPageToken)));
        for forged in ["", "!!", "bm90IGEgdG9rZW4", &URL_SAFE_NO_PAD.encode("1 bad job 0000")] {
            assert!(
                matches!(decode_token(&filter(), forged), Err(JobError::InvalidPageToken)),
                "{forged}"
            );
        }
    }

    #[test]
    fn page_sizes_default_and_are_capped() {
        assert_eq!(page_size(0).expect("default"), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(7).expect("as asked"), 7);
        assert_eq!(page_size(i32::MAX).expect("capped"), MAX_PAGE_SIZE);
        assert!(page_size(-1).is_err());
    }
}
