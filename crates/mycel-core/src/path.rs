//! Paths of files inside a component, checked so that none can leave its directory.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A relative, normalized, `/`-separated path inside a component.
///
/// Holding one proves the path has no `..`, `.`, empty or absolute part, no backslash
/// and no control character, so joining it under a directory stays inside it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ComponentPath(String);

/// The longest path we accept, in bytes; most filesystems cap names near here.
pub const MAX_PATH_BYTES: usize = 1024;

/// Why a path was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid path {path:?}: {reason}")]
pub struct PathError {
    /// The path as given, cut to a readable length.
    pub path: String,
    /// What is wrong with it and what is expected.
    pub reason: &'static str,
}

impl ComponentPath {
    /// Checks `path` and wraps it.
    pub fn new(path: &str) -> Result<Self, PathError> {
        let fail = |reason| {
            Err(PathError {
                path: path.chars().take(200).collect(),
                reason,
            })
        };
        if path.is_empty() {
            return fail("empty; expected a relative path such as model.py");
        }
        if path.len() > MAX_PATH_BYTES {
            return fail("longer than 1024 bytes");
        }
        if path.starts_with('/') {
            return fail("absolute; expected a path relative to the component root");
        }
        if path.contains('\\') {
            return fail("contains a backslash; expected '/' as the separator");
        }
        if path.chars().any(char::is_control) {
            return fail("contains a control character");
        }
        for part in path.split('/') {
            match part {
                "" => return fail("has an empty part (leading, trailing or double '/')"),
                "." => return fail("has a '.' part; expected a normalized path"),
                ".." => return fail("has a '..' part, which would leave the component"),
                _ => {}
            }
        }
        Ok(Self(path.to_owned()))
    }

    /// The path as a `/`-separated string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path's parts, for joining onto a local directory.
    pub fn parts(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

impl fmt::Display for ComponentPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ComponentPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl Serialize for ComponentPath {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ComponentPath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        ComponentPath::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_normal_paths() {
        for ok in [
            "model.py",
            "weights/a.safetensors",
            "a/b/c.txt",
            ".hidden",
            "a..b",
        ] {
            assert_eq!(ComponentPath::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_escapes_and_oddities() {
        for (bad, why) in [
            ("", "empty"),
            ("/etc/passwd", "absolute"),
            ("../x", "'..'"),
            ("a/../../x", "'..'"),
            ("a/./b", "'.'"),
            ("a//b", "empty part"),
            ("a/", "empty part"),
            ("a\\b", "backslash"),
            ("a\nb", "control"),
        ] {
            let err = ComponentPath::new(bad).unwrap_err();
            assert!(err.to_string().contains(why), "{bad:?}: {err}");
        }
        assert!(ComponentPath::new(&"a".repeat(MAX_PATH_BYTES + 1)).is_err());
    }

    #[test]
    fn deserialize_checks() {
        assert!(serde_json::from_str::<ComponentPath>("\"../x\"").is_err());
        assert!(serde_json::from_str::<ComponentPath>("\"x/y\"").is_ok());
    }
}
