//! State values as text, read and written so that what LangBot's Python wrote
//! reads back with the meaning Python gave it (SPEC section 5, "Values").
//!
//! * Doubles are parsed exactly (serde_json's `float_roundtrip`, on for the
//!   whole workspace): every float Python's `json.dumps` writes reads back bit
//!   for bit, `-0.0` included; `1` stays an integer and `1.0` a float.
//! * Integers across the signed and unsigned 64-bit ranges stay integers.
//! * What Python writes but a JSON value here cannot hold is a typed
//!   [`ValueError`], never a silent change: `NaN`, `Infinity`, `-Infinity`
//!   (Python's `allow_nan` default) and integers beyond 64 bits (which a
//!   lenient parser would turn into a rounded float).
//! * Nesting: LangBot's reader (Python's `json`, bound by the interpreter's
//!   recursion limit of 1000) reads values nested a little under 1000 deep.
//!   Here every value up to [`MAX_VALUE_DEPTH`] is read and written, and a
//!   deeper one is refused when set, before any SQL, so a set never stores
//!   what a get could not read.

use serde::Deserialize;
use serde_json::Value;

/// Deepest nesting of arrays and objects read or written (`1` is depth 0,
/// `[1]` depth 1). Above what Python's own `json` reads by default.
pub const MAX_VALUE_DEPTH: usize = 1000;

/// Why a stored text cannot be read as a value, or a value cannot be stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ValueError {
    /// Not JSON, not even the JSON Python writes.
    #[error("not valid JSON")]
    NotJson(#[source] serde_json::Error),
    /// `NaN`, `Infinity` or `-Infinity`: Python writes them, JSON has no such
    /// number, and a JSON value here cannot hold one.
    #[error("holds {token}, which Python writes but JSON cannot represent")]
    NonFiniteNumber {
        /// The token as stored.
        token: &'static str,
    },
    /// An integer outside both the signed and the unsigned 64-bit range.
    #[error("holds the integer {digits}, beyond 64 bits")]
    IntegerOutOfRange {
        /// The integer as stored (at most its first 40 characters).
        digits: String,
    },
    /// Nested deeper than [`MAX_VALUE_DEPTH`].
    #[error("is nested {depth} deep, over the limit of {max}")]
    TooDeep {
        /// Its depth (as far as it was counted).
        depth: usize,
        /// [`MAX_VALUE_DEPTH`].
        max: usize,
    },
}

/// Reads a stored value: exact numbers, any depth up to [`MAX_VALUE_DEPTH`].
///
/// # Errors
/// A [`ValueError`] saying what the text holds that cannot be represented.
pub fn decode(text: &str) -> Result<Value, ValueError> {
    // One pass over the text first: it finds what a JSON value would change
    // or could not hold, and bounds the depth the parser then recurses to.
    let depth = scan(text.as_bytes())?;
    let parse = || {
        let mut de = serde_json::Deserializer::from_str(text);
        de.disable_recursion_limit();
        let value = Value::deserialize(&mut de).map_err(ValueError::NotJson)?;
        de.end().map_err(ValueError::NotJson)?;
        Ok(value)
    };
    if depth > SHALLOW {
        on_big_stack(parse)
    } else {
        parse()
    }
}

/// Depth up to which values are parsed and written on the caller's stack.
const SHALLOW: usize = 64;

/// Runs `f` on a thread with a stack deep enough for [`MAX_VALUE_DEPTH`]
/// levels of serde_json's recursion, whatever the caller's stack (a test
/// thread's 2 MiB, a task deep in a future): only deep values pay for it.
fn on_big_stack<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("deep-json".into())
            .stack_size(64 << 20)
            .spawn_scoped(scope, f)
            .expect("spawn a thread for a deeply nested value")
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Writes a value as stored text (compact, as serde_json writes it).
///
/// # Errors
/// [`ValueError::TooDeep`] when nested deeper than [`MAX_VALUE_DEPTH`].
pub fn encode(value: &Value) -> Result<String, ValueError> {
    let depth = depth_of(value);
    if depth > MAX_VALUE_DEPTH {
        return Err(ValueError::TooDeep {
            depth,
            max: MAX_VALUE_DEPTH,
        });
    }
    Ok(if depth > SHALLOW {
        on_big_stack(|| value.to_string())
    } else {
        value.to_string()
    })
}

/// Nesting depth of `value`, without recursion (a caller's value may be
/// arbitrarily deep).
pub fn depth_of(value: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((v, depth)) = stack.pop() {
        match v {
            Value::Array(items) => {
                deepest = deepest.max(depth + 1);
                stack.extend(items.iter().map(|i| (i, depth + 1)));
            }
            Value::Object(map) => {
                deepest = deepest.max(depth + 1);
                stack.extend(map.values().map(|i| (i, depth + 1)));
            }
            _ => {}
        }
    }
    deepest
}

/// Finds, outside strings, nesting over the limit, non-finite number tokens
/// and integers beyond 64 bits, and returns the deepest nesting. Text that is
/// not JSON at all is left for the parser to name.
fn scan(bytes: &[u8]) -> Result<usize, ValueError> {
    let mut depth = 0usize;
    let mut deepest = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
                if depth > MAX_VALUE_DEPTH {
                    return Err(ValueError::TooDeep {
                        depth,
                        max: MAX_VALUE_DEPTH,
                    });
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'N' if bytes[i..].starts_with(b"NaN") => {
                return Err(ValueError::NonFiniteNumber { token: "NaN" });
            }
            b'I' if bytes[i..].starts_with(b"Infinity") => {
                return Err(ValueError::NonFiniteNumber { token: "Infinity" });
            }
            b'-' if bytes[i + 1..].starts_with(b"Infinity") => {
                return Err(ValueError::NonFiniteNumber { token: "-Infinity" });
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i + 1 < bytes.len()
                    && matches!(bytes[i + 1], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                {
                    i += 1;
                }
                check_integer(&bytes[start..=i])?;
            }
            _ => {}
        }
        i += 1;
    }
    Ok(deepest)
}

/// An integer token (no fraction, no exponent) must fit `i64` or `u64`.
fn check_integer(token: &[u8]) -> Result<(), ValueError> {
    if token.iter().any(|b| matches!(b, b'.' | b'e' | b'E')) {
        return Ok(());
    }
    let Ok(text) = std::str::from_utf8(token) else {
        return Ok(());
    };
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(()); // not a JSON number: the parser says so
    }
    let fits = if text.starts_with('-') {
        text.parse::<i64>().is_ok()
    } else {
        text.parse::<u64>().is_ok()
    };
    if fits {
        Ok(())
    } else {
        Err(ValueError::IntegerOutOfRange {
            digits: text.chars().take(40).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> String {
        format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn deep_values_read_up_to_the_limit_on_a_small_stack() {
        // On a stack the size of a tokio worker's (2 MiB).
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(|| {
                let v = decode(&nested(MAX_VALUE_DEPTH)).unwrap();
                assert_eq!(depth_of(&v), MAX_VALUE_DEPTH);
                assert_eq!(encode(&v).unwrap(), nested(MAX_VALUE_DEPTH));
                let obj = format!(
                    "{}1{}",
                    "{\"k\": ".repeat(MAX_VALUE_DEPTH),
                    "}".repeat(MAX_VALUE_DEPTH)
                );
                assert_eq!(depth_of(&decode(&obj).unwrap()), MAX_VALUE_DEPTH);
            })
            .unwrap()
            .join()
            .unwrap();
        assert!(matches!(
            decode(&nested(MAX_VALUE_DEPTH + 1)),
            Err(ValueError::TooDeep {
                depth: 1001,
                max: 1000
            })
        ));
        // Brackets inside strings are not nesting.
        let text = format!("[\"{}\"]", "[".repeat(5000));
        assert_eq!(depth_of(&decode(&text).unwrap()), 1);
    }

    #[test]
    fn what_json_cannot_hold_is_a_typed_error() {
        for (text, token) in [
            ("NaN", "NaN"),
            ("[1, Infinity]", "Infinity"),
            ("{\"a\": -Infinity}", "-Infinity"),
        ] {
            match decode(text) {
                Err(ValueError::NonFiniteNumber { token: t }) => assert_eq!(t, token),
                other => panic!("{text}: {other:?}"),
            }
        }
        assert!(decode("\"NaN Infinity -Infinity\"").is_ok());
        for text in [
            "18446744073709551616",
            "-9223372036854775809",
            "[1, 100000000000000000000000000000]",
        ] {
            assert!(
                matches!(decode(text), Err(ValueError::IntegerOutOfRange { .. })),
                "{text}"
            );
        }
        assert_eq!(
            decode("18446744073709551615").unwrap(),
            Value::from(u64::MAX)
        );
        assert_eq!(
            decode("-9223372036854775808").unwrap(),
            Value::from(i64::MIN)
        );
        // Exponent and fraction forms are floats, whatever their size.
        assert!(decode("1e400").is_err_and(|e| matches!(e, ValueError::NotJson(_))));
        assert_eq!(decode("1e+16").unwrap(), Value::from(1e16));
        assert!(matches!(decode("{not json"), Err(ValueError::NotJson(_))));
        assert!(matches!(decode("[1] x"), Err(ValueError::NotJson(_))));
    }

    #[test]
    fn floats_read_bit_for_bit() {
        for (text, bits) in [
            ("0.9999999999999999", 0.9999999999999999f64.to_bits()),
            ("1.602176634e-19", 1.602176634e-19f64.to_bits()),
            ("-0.0", (-0.0f64).to_bits()),
            ("5e-324", 5e-324f64.to_bits()),
            ("1.7976931348623157e+308", f64::MAX.to_bits()),
        ] {
            let v = decode(text).unwrap();
            assert_eq!(v.as_f64().unwrap().to_bits(), bits, "{text}");
            assert!(v.is_f64(), "{text}");
        }
        assert!(decode("1").unwrap().is_u64());
        assert!(decode("1.0").unwrap().is_f64());
        assert_eq!(decode("true").unwrap(), Value::Bool(true));
    }
}
