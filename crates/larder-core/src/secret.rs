//! Keeping secrets out of logs: the one way every config's `Debug` form hides them.

/// `<redacted>` for a secret that is set, `None` for one that is not: what a `Debug` form
/// shows of a password or key.
pub fn redacted(secret: &Option<String>) -> Option<&'static str> {
    secret.as_ref().map(|_| "<redacted>")
}

/// A URL with the password of its user info replaced by `<redacted>`.
pub fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((user_info, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match user_info.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:<redacted>@{host}"),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_and_fields_are_hidden() {
        assert_eq!(
            redact_url_password("redis://app:s3cret@cache:6379"),
            "redis://app:<redacted>@cache:6379"
        );
        assert_eq!(
            redact_url_password("redis://cache:6379"),
            "redis://cache:6379"
        );
        assert_eq!(redacted(&Some("s3cret".into())), Some("<redacted>"));
        assert_eq!(redacted(&None), None);
    }
}
