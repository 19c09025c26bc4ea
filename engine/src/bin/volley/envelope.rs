//! The notify mode's JSON envelope, `{"to": [keys], "data": ...}`, read straight from the
//! message text without building a document.
//!
//! A `serde_json::Value` costs about 64 bytes per array element (the value and its own
//! allocation), so a 16 MiB message listing millions of keys made hundreds of MiB of
//! values before the key count could even be checked. Here the keys are borrowed from the
//! text (copied only when they contain escapes), parsing stops at the first key past the
//! cap or the first invalid one, and `data` is kept as its raw JSON text: the memory is the
//! cap's worth of keys, whatever the message holds.

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;

/// What the sender is told when the message is not an object (or not JSON at all).
const NOT_OBJECT: &str = "expected a JSON object {\"to\": [keys], \"data\": ...}";
const TO_NOT_ARRAY: &str = "\"to\" must be an array of keys";
const BAD_KEY: &str = "every key must be a valid name";
const NO_DATA: &str = "\"data\" is missing";

/// A parsed envelope: the keys as listed, and the data to send (the string itself when
/// `data` is a string, else its JSON text).
#[derive(Debug, PartialEq, Eq)]
pub struct JsonEvent<'a> {
    pub to: Vec<Cow<'a, str>>,
    pub data: Cow<'a, str>,
}

/// Parses an envelope allowing at most `max_keys` keys (0: no limit), each checked with
/// `valid`. `Err` is the reason to answer with.
pub fn parse_json_envelope<'a>(
    text: &'a str,
    max_keys: usize,
    valid: fn(&str) -> bool,
) -> Result<JsonEvent<'a>, String> {
    let why = Cell::new(None);
    let seed = EnvelopeSeed {
        max_keys,
        valid,
        why: &why,
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = seed.deserialize(&mut de).and_then(|v| de.end().map(|()| v));
    let (to, raw) = parsed.map_err(|_| why.take().unwrap_or_else(|| NOT_OBJECT.to_owned()))?;
    let raw = raw.get();
    let data = match serde_json::from_str::<&str>(raw) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => match serde_json::from_str::<String>(raw) {
            Ok(s) => Cow::Owned(s),
            Err(_) => Cow::Borrowed(raw),
        },
    };
    Ok(JsonEvent { to, data })
}

#[derive(Clone, Copy)]
struct EnvelopeSeed<'c> {
    max_keys: usize,
    valid: fn(&str) -> bool,
    /// The first reason found, for the answer (serde_json's own message would name a
    /// line and column instead).
    why: &'c Cell<Option<String>>,
}

impl EnvelopeSeed<'_> {
    fn fail<E: de::Error>(&self, why: impl Into<String>) -> E {
        let why = why.into();
        let e = E::custom(&why);
        self.note(why);
        e
    }

    /// Records `why` unless a more precise reason was recorded first.
    fn note(&self, why: impl Into<String>) {
        let prev = self.why.take();
        self.why.set(Some(prev.unwrap_or_else(|| why.into())));
    }
}

type Parsed<'de> = (Vec<Cow<'de, str>>, &'de RawValue);

impl<'de> DeserializeSeed<'de> for EnvelopeSeed<'_> {
    type Value = Parsed<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EnvelopeSeed<'_> {
    type Value = Parsed<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut to, mut data) = (None, None);
        while let Some(Name(field)) = map.next_key()? {
            match &*field {
                "to" if to.is_none() => {
                    let keys = KeysSeed(self);
                    to = Some(map.next_value_seed(keys).inspect_err(|_| {
                        self.note(TO_NOT_ARRAY);
                    })?);
                }
                "data" if data.is_none() => data = Some(map.next_value::<&RawValue>()?),
                "to" | "data" => return Err(self.fail(format!("duplicate field {field:?}"))),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let to = to.ok_or_else(|| self.fail(TO_NOT_ARRAY))?;
        let data = data.ok_or_else(|| self.fail(NO_DATA))?;
        Ok((to, data))
    }
}

/// The `to` array: stops at the first invalid key or the first key past the cap.
struct KeysSeed<'c>(EnvelopeSeed<'c>);

impl<'de> DeserializeSeed<'de> for KeysSeed<'_> {
    type Value = Vec<Cow<'de, str>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for KeysSeed<'_> {
    type Value = Vec<Cow<'de, str>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of keys")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let s = self.0;
        let mut keys = Vec::new();
        while let Some(Name(k)) = seq.next_element().inspect_err(|_| s.note(BAD_KEY))? {
            if !(s.valid)(&k) {
                return Err(s.fail(BAD_KEY));
            }
            if s.max_keys != 0 && keys.len() == s.max_keys {
                return Err(s.fail(format!("too many keys (at most {} per event)", s.max_keys)));
            }
            keys.push(k);
        }
        Ok(keys)
    }
}

/// A string, borrowed from the text unless it has escapes.
struct Name<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(NameVisitor)
    }
}

struct NameVisitor;

impl<'de> Visitor<'de> for NameVisitor {
    type Value = Name<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Name<'de>, E> {
        Ok(Name(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Name<'de>, E> {
        Ok(Name(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Name<'de>, E> {
        Ok(Name(Cow::Owned(v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(_: &str) -> bool {
        true
    }

    fn no_space(s: &str) -> bool {
        !s.is_empty() && !s.contains(' ')
    }

    fn keys<'a>(e: &'a JsonEvent<'_>) -> Vec<&'a str> {
        e.to.iter().map(|k| &**k).collect()
    }

    #[test]
    fn reads_keys_and_data() {
        let e = parse_json_envelope(r#"{"to":["a","b\/c"],"data":"hi \"x\""}"#, 0, any).unwrap();
        assert_eq!(keys(&e), ["a", "b/c"]);
        assert!(
            matches!(e.to[0], Cow::Borrowed(_)),
            "no copy without escapes"
        );
        assert_eq!(e.data, "hi \"x\"");
        let e = parse_json_envelope(r#"{"extra":[1,{"a":2}],"data":{"n": 1},"to":[]}"#, 0, any)
            .unwrap();
        assert!(e.to.is_empty());
        assert_eq!(e.data, r#"{"n": 1}"#);
        let e = parse_json_envelope(r#"{"to":["a"],"data":"plain"}"#, 0, any).unwrap();
        assert!(matches!(e.data, Cow::Borrowed("plain")));
    }

    #[test]
    fn each_fault_has_its_answer() {
        let cases = [
            ("not json", NOT_OBJECT.to_owned()),
            ("[1,2]", NOT_OBJECT.to_owned()),
            (r#"{"to":["a"],"data":1} x"#, NOT_OBJECT.to_owned()),
            (r#"{"to":"a","data":1}"#, TO_NOT_ARRAY.to_owned()),
            (r#"{"data":1}"#, TO_NOT_ARRAY.to_owned()),
            (r#"{"to":["a"]}"#, NO_DATA.to_owned()),
            (r#"{"to":["a",1],"data":1}"#, BAD_KEY.to_owned()),
            (r#"{"to":["a","b c"],"data":1}"#, BAD_KEY.to_owned()),
            (
                r#"{"to":["a","b","c"],"data":1}"#,
                "too many keys (at most 2 per event)".to_owned(),
            ),
            (
                r#"{"to":[],"to":[],"data":1}"#,
                "duplicate field \"to\"".to_owned(),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(parse_json_envelope(text, 2, no_space), Err(want), "{text}");
        }
        assert!(parse_json_envelope(r#"{"to":["a","b"],"data":1}"#, 2, no_space).is_ok());
    }

    /// Parsing stops at the first key past the cap: the rest of the array is not even read
    /// (here it is not valid JSON).
    #[test]
    fn stops_at_the_cap() {
        let mut text = String::from(r#"{"to":["k","k","k""#);
        text.push_str(&",".repeat(1000));
        assert_eq!(
            parse_json_envelope(&text, 2, any),
            Err("too many keys (at most 2 per event)".to_owned())
        );
    }
}
