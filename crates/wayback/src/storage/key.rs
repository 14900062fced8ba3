//! Object keys: validation and joining, pure and unit-tested.
//!
//! A key is relative to the store's root (the URL's prefix) and `/`-separated. The rules are the
//! intersection of what S3 and a POSIX directory both accept *without surprises*: no leading `/`,
//! no empty segment (`a//b`), no `.` or `..` segment (a local store would climb out of its root;
//! S3 would keep them literally and confuse every tool that normalises paths), no backslash or
//! control character, and at most [`MAX_KEY_LEN`] bytes once the prefix is added. Segments that
//! start with [`TEMP_MARKER`] are reserved for the local store's in-flight files.
//!
//! Imports nothing from the crate but [`super::error`].

use super::error::StorageError;

/// S3's limit on a key's length in bytes, which includes the URL's prefix.
pub const MAX_KEY_LEN: usize = 1024;

/// Leading name of the local store's temporary files; no key segment may start with it, so that a
/// listing never shows an upload that has not been renamed into place.
pub const TEMP_MARKER: &str = ".wayback-tmp-";

/// Checks one object key (see the module docs for the rules).
pub fn validate_key(key: &str) -> Result<(), StorageError> {
    let invalid = |reason: &str| StorageError::InvalidKey {
        key: key.to_owned(),
        reason: reason.to_owned(),
    };
    if key.is_empty() {
        return Err(invalid("a key must not be empty"));
    }
    if key.starts_with('/') {
        return Err(invalid("a key must not start with '/'"));
    }
    if key.ends_with('/') {
        return Err(invalid("a key must not end with '/'"));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(invalid("a key must be at most 1024 bytes"));
    }
    if key.chars().any(|c| c.is_control() || c == '\\') {
        return Err(invalid("a key must not contain control characters or '\\'"));
    }
    for segment in key.split('/') {
        match segment {
            "" => return Err(invalid("a key must not contain an empty segment ('//')")),
            "." | ".." => return Err(invalid("a key must not contain '.' or '..' segments")),
            s if s.starts_with(TEMP_MARKER) => {
                return Err(invalid("a key segment must not start with '.wayback-tmp-'"))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Checks a listing prefix: empty (everything), or a key's beginning. A prefix may end with `/`
/// (a "directory") or in the middle of a segment (`wal/0000000100`), but otherwise follows the key
/// rules.
pub fn validate_prefix(prefix: &str) -> Result<(), StorageError> {
    if prefix.is_empty() {
        return Ok(());
    }
    let trimmed = prefix.strip_suffix('/').unwrap_or(prefix);
    validate_key(trimmed).map_err(|e| match e {
        StorageError::InvalidKey { reason, .. } => StorageError::InvalidKey {
            key: prefix.to_owned(),
            reason: reason.replace("a key", "a prefix"),
        },
        other => other,
    })
}

/// Joins key segments with `/` and validates the result: `join_key(&["wal", name])`.
pub fn join_key(segments: &[&str]) -> Result<String, StorageError> {
    let key = segments.join("/");
    validate_key(&key)?;
    Ok(key)
}

/// Normalises the prefix taken from a URL's path: no leading `/`, exactly one trailing `/` unless
/// empty. `"/a/b"` → `"a/b/"`, `""` → `""`.
pub fn normalize_root_prefix(raw: &str) -> Result<String, StorageError> {
    let trimmed = raw.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    validate_key(trimmed).map_err(|e| match e {
        StorageError::InvalidKey { reason, .. } => StorageError::InvalidUrl {
            url: raw.to_owned(),
            reason: format!("bad prefix: {}", reason.replace("a key", "a prefix")),
        },
        other => other,
    })?;
    Ok(format!("{trimmed}/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_archive_style_keys() {
        for key in [
            "a",
            "wal/000000010000000000000001",
            "spaces/s/instances/i/wal/00000002.history",
            "base/20240101T000000/manifest.json",
            "name with spaces/ok",
            "dots.in.names/x..y",
        ] {
            assert!(validate_key(key).is_ok(), "{key}");
        }
    }

    #[test]
    fn refuses_bad_keys_with_a_reason() {
        let cases = [
            ("", "empty"),
            ("/abs", "start with '/'"),
            ("dir/", "end with '/'"),
            ("a//b", "empty segment"),
            ("a/../b", "'..'"),
            ("./a", "'.'"),
            ("..", "'..'"),
            ("a\\b", "'\\'"),
            ("a\nb", "control"),
            ("a/.wayback-tmp-123", ".wayback-tmp-"),
        ];
        for (key, why) in cases {
            let err = validate_key(key).expect_err(key).to_string();
            assert!(err.contains(why), "{key:?}: {err}");
        }
        assert!(validate_key(&"k".repeat(MAX_KEY_LEN + 1)).is_err());
    }

    #[test]
    fn prefixes_may_end_with_a_slash_or_mid_segment() {
        for prefix in ["", "wal/", "wal/0000000100", "a/b/"] {
            assert!(validate_prefix(prefix).is_ok(), "{prefix}");
        }
        for prefix in ["/", "/wal", "a//", "../", "a/../"] {
            let err = validate_prefix(prefix).expect_err(prefix).to_string();
            assert!(err.contains("prefix"), "{prefix}: {err}");
        }
    }

    #[test]
    fn joins_and_validates() {
        assert_eq!(join_key(&["wal", "0001"]).unwrap(), "wal/0001");
        assert!(join_key(&["wal", ""]).is_err());
        assert!(join_key(&["..", "x"]).is_err());
    }

    #[test]
    fn normalizes_url_prefixes() {
        assert_eq!(normalize_root_prefix("").unwrap(), "");
        assert_eq!(normalize_root_prefix("/").unwrap(), "");
        assert_eq!(normalize_root_prefix("/a/b").unwrap(), "a/b/");
        assert_eq!(normalize_root_prefix("a/b/").unwrap(), "a/b/");
        assert!(normalize_root_prefix("/a//b/").is_err());
        assert!(normalize_root_prefix("/a/../b").is_err());
    }
}
