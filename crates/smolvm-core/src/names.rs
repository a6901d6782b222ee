//! The one naming rule for sandboxes, snapshots and images: 1–64 chars,
//! lowercase letters, digits, `-` and `_`, starting and ending with a letter
//! or digit. Names become directory names, so nothing else is ever accepted.

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name was empty.
    #[error("{what} cannot be empty")]
    Empty {
        /// "sandbox name", "snapshot_id", ...
        what: &'static str,
    },
    /// The name breaks the rule.
    #[error("{what} '{name}' is not valid: use 1-64 lowercase letters, digits, '-' or '_', starting and ending with a letter or digit")]
    Invalid {
        /// What kind of name.
        what: &'static str,
        /// The name as given (shown escaped).
        name: String,
    },
}

/// Checks `name` against the naming rule.
pub fn validate(what: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { what });
    }
    let ok_char = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_';
    let ok_end = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let b = name.as_bytes();
    let valid = b.len() <= 64 && b.iter().all(|&c| ok_char(c)) && ok_end(b[0]) && ok_end(b[b.len() - 1]);
    if valid {
        Ok(())
    } else {
        Err(NameError::Invalid { what, name: name.escape_debug().to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::validate;

    #[test]
    fn rule_accepts_and_refuses_what_it_should() {
        for good in ["a", "0", "demo", "my-box_2", &"a".repeat(64)] {
            assert!(validate("sandbox name", good).is_ok(), "{good}");
        }
        for bad in ["", "A", "../x", "x/y", "-a", "a-", "a b", "é", &"a".repeat(65), ".", "a\0"] {
            assert!(validate("sandbox name", bad).is_err(), "{bad:?}");
        }
    }
}
