//! Caller identities, each of one kind, so that a name of one kind can never
//! pass for another: a certificate's common name written `spiffe://…` is a
//! common name, and policies and owners see it as `cn:spiffe://…`.

use std::fmt;

/// Where an identity comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IdentityKind {
    /// A SPIFFE ID: a certificate's URI SAN, or the `URI=` a trusted mesh proxy forwards.
    Spiffe,
    /// A client certificate's subject common name, for certificates without a SPIFFE ID.
    CommonName,
    /// A bearer token's `sub`, as its trusted issuer states it.
    TokenSubject,
}

/// A caller's identity. Its text — a SPIFFE ID, `cn:` and a common name, or a
/// token's subject — is what jobs record as their owner and policies match.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    kind: IdentityKind,
    text: String,
}

/// Longest identity accepted; SPIFFE caps its IDs at 2048 bytes.
const MAX_LEN: usize = 2048;

impl Identity {
    /// A SPIFFE ID (`spiffe://trust-domain/path`), checked as the SPIFFE
    /// standard defines it; none for anything else.
    pub fn spiffe(uri: &str) -> Option<Self> {
        is_spiffe_id(uri).then(|| Self {
            kind: IdentityKind::Spiffe,
            text: uri.to_owned(),
        })
    }

    /// A certificate's common name.
    pub fn common_name(name: &str) -> Option<Self> {
        printable(name).then(|| Self {
            kind: IdentityKind::CommonName,
            text: format!("cn:{name}"),
        })
    }

    /// A bearer token's subject.
    pub fn token_subject(subject: &str) -> Option<Self> {
        printable(subject).then(|| Self {
            kind: IdentityKind::TokenSubject,
            text: subject.to_owned(),
        })
    }

    pub fn kind(&self) -> IdentityKind {
        self.kind
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// Non-empty, not too long, and without control characters (which would let
/// a name forge lines in logs).
fn printable(text: &str) -> bool {
    !text.trim().is_empty() && text.len() <= MAX_LEN && !text.chars().any(char::is_control)
}

/// The SPIFFE ID grammar: `spiffe://` and a trust domain of `[a-z0-9._-]`,
/// then path segments of `[A-Za-z0-9._-]`, none empty, `.` or `..`; no port,
/// user info, query or fragment.
fn is_spiffe_id(uri: &str) -> bool {
    let Some(rest) = uri.strip_prefix("spiffe://") else {
        return false;
    };
    if uri.len() > MAX_LEN {
        return false;
    }
    let (domain, path) = rest
        .split_once('/')
        .map_or((rest, None), |(domain, path)| (domain, Some(path)));
    let domain_ok = !domain.is_empty()
        && domain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'));
    let path_ok = path.is_none_or(|path| {
        path.split('/').all(|segment| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        })
    });
    domain_ok && path_ok
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.text)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_follow_the_standard() {
        for good in [
            "spiffe://cluster.local/ns/payments/sa/checkout",
            "spiffe://example.org",
            "spiffe://a-b_c.9/x.y/z_1",
        ] {
            assert!(Identity::spiffe(good).is_some(), "{good}");
        }
        for bad in [
            "",
            "spiffe://",
            "SPIFFE://c/x",
            "spiffe://Cluster.local/x",
            "spiffe://c:443/x",
            "spiffe://user@c/x",
            "spiffe://c/x/",
            "spiffe://c//x",
            "spiffe://c/./x",
            "spiffe://c/../x",
            "spiffe://c/x?y",
            "spiffe://c/x#y",
            "spiffe://c/x\ny",
            "https://c/x",
        ] {
            assert!(Identity::spiffe(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn a_common_name_never_passes_for_a_spiffe_id() {
        let cn = Identity::common_name("spiffe://c/ns/support/sa/console").expect("a name");
        assert_eq!(cn.kind(), IdentityKind::CommonName);
        assert_eq!(cn.as_str(), "cn:spiffe://c/ns/support/sa/console");
        assert_ne!(Some(cn), Identity::spiffe("spiffe://c/ns/support/sa/console"));
        assert!(Identity::common_name("api\nforged").is_none());
        assert!(Identity::common_name(" ").is_none());
        assert!(Identity::token_subject("").is_none());
    }
}
