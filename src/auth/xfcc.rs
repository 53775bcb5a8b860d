//! Envoy's `x-forwarded-client-cert` header: the client certificate a service
//! mesh sidecar verified, forwarded to us. Anyone can send the header, so it is
//! read only when the operator says a sidecar sets it (`SELFIE_AUTH_TRUST_XFCC`).
//!
//! The header holds one element per hop, comma-separated; each is
//! `Key=Value` pairs separated by `;`, a value double-quoted when it holds `,`
//! `;` or `=`. The last element is the one our own sidecar added.

use super::Identity;

/// The header's name.
pub const HEADER: &str = "x-forwarded-client-cert";

/// The SPIFFE ID (`URI=`) of the last element of an `x-forwarded-client-cert`
/// value, or none when the value is malformed or names no URI.
pub fn identity(header: &str) -> Option<Identity> {
    let elements = split_unquoted(header, ',')?;
    let last = elements.last()?;
    for pair in split_unquoted(last, ';')? {
        let (key, value) = pair.split_once('=')?;
        if key.trim().eq_ignore_ascii_case("URI") {
            return Identity::new(unquote(value.trim())?);
        }
    }
    None
}

/// Splits at `separator` outside double quotes; none if a quote is left open.
fn split_unquoted(text: &str, separator: char) -> Option<Vec<&str>> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (at, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == separator && !quoted => {
                parts.push(&text[start..at]);
                start = at + c.len_utf8();
            }
            _ => {}
        }
    }
    if quoted {
        return None;
    }
    parts.push(&text[start..]);
    Some(parts)
}

/// A value without its quotes and escapes.
fn unquote(value: &str) -> Option<String> {
    let Some(inner) = value.strip_prefix('"') else {
        return Some(value.to_owned());
    };
    let inner = inner.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        out.push(if c == '\\' { chars.next()? } else { c });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_elements_uri_is_the_identity() {
        let header = r#"By=spiffe://cluster.local/ns/selfie/sa/server;Hash=0f1e;Subject="CN=a,O=b";URI=spiffe://cluster.local/ns/payments/sa/checkout"#;
        assert_eq!(
            identity(header).map(|id| id.to_string()).as_deref(),
            Some("spiffe://cluster.local/ns/payments/sa/checkout")
        );
        let two_hops = "URI=spiffe://first;By=x,Hash=1;URI=\"spiffe://second\"";
        assert_eq!(
            identity(two_hops).map(|id| id.to_string()).as_deref(),
            Some("spiffe://second")
        );
    }

    #[test]
    fn malformed_or_uriless_headers_name_nobody() {
        for header in [
            "",
            "Hash=1",
            "URI=\"spiffe://open",
            "URI=",
            "garbage",
            "By=x;Subject=\"CN=x\"",
        ] {
            assert!(identity(header).is_none(), "{header}");
        }
    }
}
