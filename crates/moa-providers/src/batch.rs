//! What the vendors' batch APIs share: the ids that come back from upstream are checked before
//! they go into a URL path (an id is a name, never a path or a host), and result files are
//! JSON Lines read one line at a time (a line that does not parse costs only itself).

use moa_core::ProviderError;

/// Whether `id`, read from an upstream answer, may be put into a URL path: letters, digits,
/// `-`, `_` and `.` (not `..`), at most 128 characters.
pub(crate) fn safe_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id != "."
        && !id.contains("..")
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// `id` if [`safe_id`], else the error that says which id was refused.
pub(crate) fn checked_id(provider: &str, what: &str, id: &str) -> Result<String, ProviderError> {
    if safe_id(id) {
        Ok(id.to_string())
    } else {
        Err(ProviderError::Upstream {
            provider: provider.to_string(),
            message: format!(
                "the batch API answered with a {what} id that is not a plain name: {:?}",
                crate::http::truncate(id, 80)
            ),
        })
    }
}

/// The JSON values of a JSON Lines body; unparsable lines are skipped.
pub(crate) fn json_lines(bytes: &[u8]) -> impl Iterator<Item = serde_json::Value> + '_ {
    bytes
        .split(|b| *b == b'\n')
        .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
        .filter_map(|line| serde_json::from_slice(line).ok())
}

/// The id the submitter gave a request: the strictest vendor's rule (Anthropic's).
pub(crate) fn valid_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_from_upstream_must_be_plain_names() {
        assert!(safe_id("batch_abc123") && safe_id("file-XYZ") && safe_id("msgbatch_01.a"));
        for bad in [
            "",
            "..",
            "a/b",
            "../x",
            "x?y=1",
            "http://evil",
            "a b",
            "%2e%2e",
        ] {
            assert!(!safe_id(bad), "{bad:?}");
        }
        assert!(!safe_id(&"a".repeat(129)));
        assert!(valid_request_id("r-12_a") && !valid_request_id("81/2"));
        let lines: Vec<_> = json_lines(b"{\"a\":1}\n\nnot json\n{\"b\":2}").collect();
        assert_eq!(lines.len(), 2);
    }
}
