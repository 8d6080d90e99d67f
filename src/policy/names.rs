//! Kubernetes name rules and the field-path spelling used in messages.

/// Whether `name` is a DNS-1123 subdomain (what Secret names must be).
pub fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            let bytes = label.as_bytes();
            !bytes.is_empty()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
                && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
                && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        })
}

/// `prefix.key` for plain keys, `prefix["key"]` for keys such as `rndc.key` or `key-name`.
/// A key that is long or looks like key material is shown by its length only (see `shown`).
pub fn data_path(prefix: &str, key: &str) -> String {
    let shown = super::shown::shown_key(key);
    if shown != key {
        format!("{prefix}[{shown}]")
    } else if !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        format!("{prefix}.{key}")
    } else {
        format!("{prefix}[{key:?}]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_subdomains_are_lower_case_labels_joined_by_dots() {
        for ok in ["a", "dns-primary-rndc", "a.b-c.d9", &"a".repeat(253)] {
            assert!(is_dns_subdomain(ok), "{ok}");
        }
        for bad in ["", "A", "-a", "a-", "a..b", "a_b", "a b", &"a".repeat(254)] {
            assert!(!is_dns_subdomain(bad), "{bad}");
        }
    }

    #[test]
    fn data_paths_bracket_keys_with_punctuation() {
        assert_eq!(data_path("data", "secret"), "data.secret");
        assert_eq!(data_path("data", "rndc.key"), "data[\"rndc.key\"]");
        assert_eq!(data_path("data", "key-name"), "data[\"key-name\"]");
    }
}
