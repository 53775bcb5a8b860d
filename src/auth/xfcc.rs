//! Envoy's `x-forwarded-client-cert` header: the client certificate a service
//! mesh proxy verified, forwarded to us. Anyone can send the header, so it is
//! read only from the proxies the operator trusts (see `TrustedForwarders`).
//!
//! The header holds one element per hop, comma-separated, and may arrive as
//! several header lines, which HTTP reads as one list in order; each element
//! is `Key=Value` pairs separated by `;`, a value double-quoted when it holds
//! `,` `;` or `=`. A proxy appends its element (Envoy's `APPEND_FORWARD`) or
//! replaces the header (`SANITIZE_SET`): either way the last element is the
//! one the nearest proxy, ours, added. Earlier ones are the caller's to write.

use super::Identity;

/// The header's name.
pub const HEADER: &str = "x-forwarded-client-cert";

/// The SPIFFE ID (`URI=`) of the last element over every line of the header,
/// or none when a line is malformed, or the last element names no URI, more
/// than one, or one that is not a SPIFFE ID.
pub fn identity(headers: &http::HeaderMap) -> Option<Identity> {
    let mut last = None;
    for line in headers.get_all(HEADER) {
        last = split_unquoted(line.to_str().ok()?, ',')?.pop();
    }
    let mut uris = split_unquoted(last?, ';')?.into_iter().filter_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        key.trim().eq_ignore_ascii_case("URI").then_some(value)
    });
    let uri = unquote(uris.next()?.trim())?;
    if uris.next().is_some() {
        return None;
    }
    Identity::spiffe(&uri)
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

    fn identity_of(lines: &[&'static str]) -> Option<String> {
        let mut headers = http::HeaderMap::new();
        for line in lines {
            headers.append(HEADER, http::HeaderValue::from_static(line));
        }
        identity(&headers).map(|id| id.to_string())
    }

    #[test]
    fn the_last_elements_uri_is_the_identity() {
        let header = r#"By=spiffe://cluster.local/ns/selfie/sa/server;Hash=0f1e;Subject="CN=a,O=b";URI=spiffe://cluster.local/ns/payments/sa/checkout"#;
        assert_eq!(
            identity_of(&[header]).as_deref(),
            Some("spiffe://cluster.local/ns/payments/sa/checkout")
        );
        let two_hops = "URI=spiffe://first/a;By=x,Hash=1;URI=\"spiffe://second/b\"";
        assert_eq!(identity_of(&[two_hops]).as_deref(), Some("spiffe://second/b"));
        assert_eq!(
            identity_of(&["URI=spiffe://forged/admin", "URI=spiffe://real/client"]).as_deref(),
            Some("spiffe://real/client"),
            "the last line holds the nearest proxy's element"
        );
    }

    #[test]
    fn malformed_ambiguous_or_uriless_headers_name_nobody() {
        for header in [
            "",
            "Hash=1",
            "URI=\"spiffe://open",
            "URI=",
            "garbage",
            "By=x;Subject=\"CN=x\"",
            "URI=spiffe://a/x;URI=spiffe://b/y",
            "URI=https://not-spiffe/x",
            "URI=spiffe://real/client,Hash=1",
        ] {
            assert!(identity_of(&[header]).is_none(), "{header}");
        }
        assert!(identity_of(&["URI=spiffe://a/x", "URI=\"spiffe://open"]).is_none());
    }
}
