//! Reading `jsonb` columns so that one row the API cannot parse never breaks a listing.
//!
//! `jsonb` stores numbers as exact decimals, so a row written outside the API (or before the
//! API refused such values) can hold a number no `f64` represents, such as `1e400`. serde_json
//! refuses it, and with a plain `Value` column the whole page, the task and its cancel would
//! answer 500. Such a value reads back as a string holding its JSON text instead.

use serde_json::Value;
use sqlx::postgres::{PgTypeInfo, PgValueFormat, PgValueRef};
use sqlx::{Decode, Postgres, Type, ValueRef};

/// A `jsonb` (or `json`) column read leniently; `None` for SQL null.
pub struct LenientJson(Option<Value>);

impl Type<Postgres> for LenientJson {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_name("jsonb")
    }

    fn compatible(ty: &PgTypeInfo) -> bool {
        *ty == PgTypeInfo::with_name("jsonb") || *ty == PgTypeInfo::with_name("json")
    }
}

impl<'r> Decode<'r, Postgres> for LenientJson {
    fn decode(value: PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        if value.is_null() {
            return Ok(Self(None));
        }
        let binary_jsonb = value.format() == PgValueFormat::Binary
            && *value.type_info() == PgTypeInfo::with_name("jsonb");
        let mut bytes = value.as_bytes()?;
        if binary_jsonb {
            // Binary jsonb is a version byte (1) followed by the JSON text.
            match bytes.split_first() {
                Some((1, text)) => bytes = text,
                _ => return Err("unsupported jsonb format version".into()),
            }
        }
        Ok(Self(Some(parse_lenient(bytes))))
    }
}

/// The JSON value of `text`, or the text itself as a string when serde_json cannot read it.
pub fn parse_lenient(text: &[u8]) -> Value {
    serde_json::from_slice(text).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "a stored JSON value cannot be read; returned as its text");
        Value::String(String::from_utf8_lossy(text).into_owned())
    })
}

impl From<LenientJson> for Value {
    fn from(json: LenientJson) -> Self {
        json.0.unwrap_or(Value::Null)
    }
}

impl From<LenientJson> for Option<Value> {
    fn from(json: LenientJson) -> Self {
        json.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unreadable_numbers_come_back_as_text() {
        assert_eq!(parse_lenient(br#"{"n": 1}"#), json!({"n": 1}));
        let huge = format!(r#"{{"n": 1{}}}"#, "0".repeat(400));
        assert_eq!(parse_lenient(huge.as_bytes()), Value::String(huge.clone()));
    }

    /// PostgreSQL prints a `jsonb` number as a plain decimal; the largest and smallest `f64`
    /// must read back as themselves (serde_json's `float_roundtrip`).
    #[test]
    fn extreme_floats_read_back_from_their_plain_decimal_form() {
        let max = format!("17976931348623157{}", "0".repeat(292));
        assert_eq!(parse_lenient(max.as_bytes()), json!(f64::MAX));
        let tiny = format!("0.{}5", "0".repeat(323));
        assert_eq!(parse_lenient(tiny.as_bytes()), json!(5e-324));
    }
}
