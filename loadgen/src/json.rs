//! A small JSON writer for `--json` reports (no parser: [`crate::report`] reads reports
//! back with serde_json).

use std::fmt::{self, Write};

/// A JSON value.
#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    /// `null`
    Null,
    /// `true` / `false`
    Bool(bool),
    /// An unsigned integer.
    U(u64),
    /// A signed integer.
    I(i64),
    /// A float (`null` when not finite).
    F(f64),
    /// A string.
    S(String),
    /// An array.
    A(Vec<Json>),
    /// An object, keys in insertion order.
    O(Vec<(String, Json)>),
}

impl Json {
    /// An empty object.
    pub fn obj() -> Json {
        Json::O(Vec::new())
    }

    /// Adds `key: value` to an object (no-op on other values); returns self for chaining.
    pub fn with(mut self, key: &str, value: impl Into<Json>) -> Json {
        self.set(key, value);
        self
    }

    /// Adds `key: value` to an object (no-op on other values).
    pub fn set(&mut self, key: &str, value: impl Into<Json>) {
        if let Json::O(v) = self {
            v.push((key.to_owned(), value.into()));
        }
    }

    fn write(&self, out: &mut String, indent: usize) -> fmt::Result {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => write!(out, "{b}")?,
            Json::U(n) => write!(out, "{n}")?,
            Json::I(n) => write!(out, "{n}")?,
            Json::F(x) if x.is_finite() => write!(out, "{x}")?,
            Json::F(_) => out.push_str("null"),
            Json::S(s) => write_str(out, s),
            Json::A(items) => {
                // Arrays of scalars stay on one line (histogram buckets are long).
                let flat = items
                    .iter()
                    .all(|i| !matches!(i, Json::O(_)) && !matches!(i, Json::A(a) if a.len() > 4));
                out.push('[');
                for (n, item) in items.iter().enumerate() {
                    if n > 0 {
                        out.push(',');
                    }
                    if !flat {
                        newline(out, indent + 1);
                    }
                    item.write(out, indent + 1)?;
                }
                if !flat && !items.is_empty() {
                    newline(out, indent);
                }
                out.push(']');
            }
            Json::O(fields) => {
                out.push('{');
                for (n, (k, v)) in fields.iter().enumerate() {
                    if n > 0 {
                        out.push(',');
                    }
                    newline(out, indent + 1);
                    write_str(out, k);
                    out.push_str(": ");
                    v.write(out, indent + 1)?;
                }
                if !fields.is_empty() {
                    newline(out, indent);
                }
                out.push('}');
            }
        }
        Ok(())
    }
}

fn newline(out: &mut String, indent: usize) {
    out.push('\n');
    for _ in 0..indent {
        out.push_str("  ");
    }
}

fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

impl fmt::Display for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::new();
        self.write(&mut s, 0)?;
        f.write_str(&s)
    }
}

impl From<bool> for Json {
    fn from(b: bool) -> Json {
        Json::Bool(b)
    }
}
impl From<u64> for Json {
    fn from(n: u64) -> Json {
        Json::U(n)
    }
}
impl From<usize> for Json {
    fn from(n: usize) -> Json {
        Json::U(n as u64)
    }
}
impl From<u32> for Json {
    fn from(n: u32) -> Json {
        Json::U(n as u64)
    }
}
impl From<i64> for Json {
    fn from(n: i64) -> Json {
        Json::I(n)
    }
}
impl From<f64> for Json {
    fn from(x: f64) -> Json {
        Json::F(x)
    }
}
impl From<&str> for Json {
    fn from(s: &str) -> Json {
        Json::S(s.to_owned())
    }
}
impl From<String> for Json {
    fn from(s: String) -> Json {
        Json::S(s)
    }
}
impl<T: Into<Json>> From<Option<T>> for Json {
    fn from(o: Option<T>) -> Json {
        o.map_or(Json::Null, Into::into)
    }
}
impl<T: Into<Json>> From<Vec<T>> for Json {
    fn from(v: Vec<T>) -> Json {
        Json::A(v.into_iter().map(Into::into).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_nested() {
        let j = Json::obj()
            .with("a", 1u64)
            .with("s", "x\"y\n")
            .with("f", f64::NAN)
            .with("l", vec![1u64, 2])
            .with("o", Json::obj().with("k", true));
        assert_eq!(
            j.to_string(),
            "{\n  \"a\": 1,\n  \"s\": \"x\\\"y\\n\",\n  \"f\": null,\n  \"l\": [1,2],\n  \"o\": {\n    \"k\": true\n  }\n}"
        );
    }
}
