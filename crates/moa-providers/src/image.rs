//! Image parts as the dialects that are not OpenAI's take them.

/// The media type and base64 data of a `data:<type>;base64,<data>` URL.
pub fn data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let media_type = meta.strip_suffix(";base64")?;
    media_type
        .starts_with("image/")
        .then_some((media_type, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_urls_split_into_type_and_data() {
        assert_eq!(
            data_url("data:image/png;base64,iVBORw0K"),
            Some(("image/png", "iVBORw0K"))
        );
        assert_eq!(data_url("data:text/plain;base64,aGk="), None);
        assert_eq!(data_url("data:image/png,raw"), None);
        assert_eq!(data_url("https://example.com/cat.png"), None);
    }
}
