//! The labels an agent gives its host (its config's `[labels]`, or a join token's): they become
//! labels of the host's series and are shown to operators, so they are bounded and
//! well-formed, whichever way they arrive (a Hello, an enrollment). A leaf.

/// Labels a host may have, at most (as the agent's config allows).
pub const MAX_LABELS: usize = 32;
/// The longest label value; also the longest version, host name or OS name a Hello may carry.
pub const MAX_VALUE: usize = 256;

/// Whether `k` may be a label name of a host's series.
pub fn valid_name(k: &str) -> bool {
    k.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !k.starts_with("__")
        && k.len() <= MAX_VALUE
}

/// Checks a host's labels: how many, their names, and values without control characters.
pub fn check<'a>(labels: impl ExactSizeIterator<Item = (&'a String, &'a String)>) -> Result<(), String> {
    if labels.len() > MAX_LABELS {
        return Err(format!("{} labels; at most {MAX_LABELS} are accepted", labels.len()));
    }
    for (k, v) in labels {
        if !valid_name(k) {
            return Err(format!("label name {k:?} is not a valid label name"));
        }
        if v.len() > MAX_VALUE || fleet_common::has_control(v) {
            return Err(format!("the value of label {k} is longer than {MAX_VALUE} bytes or holds control characters"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded_and_well_formed() {
        let map = |pairs: &[(&str, &str)]| -> std::collections::BTreeMap<String, String> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        assert!(check(map(&[("role", "gpu"), ("_x", "")]).iter()).is_ok());
        assert!(check(map(&[("__name__", "x")]).iter()).unwrap_err().contains("not a valid label name"));
        assert!(check(map(&[("1a", "x")]).iter()).is_err());
        assert!(check(map(&[("a", "x\u{1b}[2J")]).iter()).unwrap_err().contains("control characters"));
        assert!(check(map(&[("a", &"x".repeat(MAX_VALUE + 1))]).iter()).is_err());
        let many: Vec<(String, String)> = (0..=MAX_LABELS).map(|i| (format!("l{i}"), String::new())).collect();
        let many: std::collections::BTreeMap<String, String> = many.into_iter().collect();
        assert!(check(many.iter()).unwrap_err().contains("at most 32"));
    }
}
