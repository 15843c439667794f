//! How an answer's values are compared with the expected ones: [`values_match`].

use serde_json::Value;

/// Text trimmed, case-folded, with each run of whitespace collapsed to one space.
pub fn normalise_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(word.chars().flat_map(char::to_lowercase));
    }
    out
}

/// Whether `predicted` matches `expected` within an absolute numeric `tolerance`: when both are
/// numbers (or numeric strings), `|expected - predicted| <= tolerance`; otherwise exactly as
/// [`values_match`]. For money summed as floats (`59.980000000000004` against `59.98`); a
/// tolerance that is negative or not finite matches no number.
///
/// ```
/// use mtrl_core::values_match_within;
/// use serde_json::json;
/// assert!(values_match_within(&json!(59.98), &json!(59.980000000000004), 0.005));
/// assert!(!values_match_within(&json!(59.98), &json!(59.99), 0.005));
/// assert!(values_match_within(&json!("open"), &json!("Open"), 0.005));
/// ```
pub fn values_match_within(expected: &Value, predicted: &Value, tolerance: f64) -> bool {
    match (number(expected), number(predicted)) {
        (Some(e), Some(p)) => (e - p).abs() <= tolerance,
        _ => values_match(expected, predicted),
    }
}

/// A finite number, or a numeric string read as one.
fn number(v: &Value) -> Option<f64> {
    let f = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) if s.trim().bytes().any(|b| b.is_ascii_digit()) => {
            s.trim().parse::<f64>().ok()?
        }
        _ => return None,
    };
    f.is_finite().then_some(f)
}

/// Whether `predicted` matches `expected` under the documented normalisation (see the
/// [module documentation](super)).
pub fn values_match(expected: &Value, predicted: &Value) -> bool {
    if is_blank(expected) {
        return is_blank(predicted);
    }
    if is_blank(predicted) {
        return false;
    }
    if let (Some(e), Some(p)) = (Decimal::of(expected), Decimal::of(predicted)) {
        return e == p;
    }
    if let (Some(e), Some(p)) = (as_bool(expected), as_bool(predicted)) {
        return e == p;
    }
    match (expected, predicted) {
        (Value::Array(e), Value::Array(p)) => {
            e.len() == p.len() && e.iter().zip(p).all(|(e, p)| values_match(e, p))
        }
        (Value::Object(e), Value::Object(p)) => {
            e.len() == p.len()
                && e.iter()
                    .all(|(k, e)| p.get(k).is_some_and(|p| values_match(e, p)))
        }
        (Value::Array(_) | Value::Object(_), _) | (_, Value::Array(_) | Value::Object(_)) => false,
        _ => normalise_text(&scalar_text(expected)) == normalise_text(&scalar_text(predicted)),
    }
}

fn is_blank(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => s.trim().is_empty(),
        _ => false,
    }
}

fn as_bool(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match normalise_text(s).as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

fn scalar_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A decimal number, exactly: `±0.d₁d₂…dₙ × 10^exponent` with no leading or trailing zero
/// digit (zero has no digits). Two decimals are equal exactly when they denote the same number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Decimal {
    negative: bool,
    digits: Vec<u8>,
    exponent: i64,
}

impl Decimal {
    /// The decimal a JSON value denotes: a JSON number, or a string of decimal text.
    fn of(value: &Value) -> Option<Decimal> {
        match value {
            Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
                (Some(u), _, _) => Decimal::parse(&u.to_string()),
                (_, Some(i), _) => Decimal::parse(&i.to_string()),
                // The shortest text that reads back as this f64: the decimal it was read from.
                (_, _, Some(f)) if f.is_finite() => Decimal::parse(&format!("{f:e}")),
                _ => None,
            },
            Value::String(s) => Decimal::parse_text(s.trim()),
            _ => None,
        }
    }

    /// Decimal text an answer may hold in a string: as [`Decimal::parse`], except that digits
    /// with a leading zero (`"007"`, `"0012.5"`) are an identifier, not a number.
    fn parse_text(text: &str) -> Option<Decimal> {
        let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
        let b = unsigned.as_bytes();
        if b.len() > 1 && b[0] == b'0' && b[1].is_ascii_digit() {
            return None;
        }
        Decimal::parse(text)
    }

    /// Reads `[+-]digits[.digits][(e|E)[+-]digits]` (either side of the point may be empty,
    /// not both); `None` for anything else, `inf` and `nan` included.
    pub(crate) fn parse(text: &str) -> Option<Decimal> {
        let (negative, rest) = match text.as_bytes().first()? {
            b'-' => (true, &text[1..]),
            b'+' => (false, &text[1..]),
            _ => (false, text),
        };
        let (mantissa, exponent) = match rest.find(['e', 'E']) {
            Some(at) => {
                let e = &rest[at + 1..];
                let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
                if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
                    return None;
                }
                // An exponent beyond i64 is not a number anyone means.
                (&rest[..at], e.parse::<i64>().ok()?)
            }
            None => (rest, 0),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        if int.is_empty() && frac.is_empty()
            || !int.bytes().chain(frac.bytes()).all(|c| c.is_ascii_digit())
        {
            return None;
        }
        let all: Vec<u8> = int.bytes().chain(frac.bytes()).map(|c| c - b'0').collect();
        let Some(first) = all.iter().position(|&d| d != 0) else {
            return Some(Decimal {
                negative: false,
                digits: Vec::new(),
                exponent: 0,
            });
        };
        let last = all.iter().rposition(|&d| d != 0).unwrap_or(first);
        // The value is 0.all × 10^(int.len() + exponent); drop the leading zeros.
        let point = i64::try_from(int.len()).ok()?.checked_add(exponent)?;
        let exponent = point.checked_sub(i64::try_from(first).ok()?)?;
        Some(Decimal {
            negative,
            digits: all[first..=last].to_vec(),
            exponent,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decimals_are_exact() {
        let d = |s: &str| Decimal::parse(s).unwrap();
        assert_eq!(d("1.50"), d("1.5"));
        assert_eq!(d("1e3"), d("1000"));
        assert_eq!(d("0.001"), d("1E-3"));
        assert_eq!(d("-0"), d("0.000"));
        assert_eq!(d(".5"), d("0.5"));
        assert_ne!(d("9007199254740993"), d("9007199254740992"));
        assert_ne!(d("0.1000000000000000000001"), d("0.1"));
        assert_ne!(d("-1"), d("1"));
        for bad in [
            "",
            "-",
            ".",
            "1e",
            "e5",
            "1.2.3",
            "inf",
            "nan",
            "0x10",
            "1_000",
            "1e99999999999999999999",
        ] {
            assert!(Decimal::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn numbers_match_exactly() {
        assert!(!values_match(
            &json!(9007199254740993u64),
            &json!(9007199254740992u64)
        ));
        assert!(!values_match(
            &json!("1234567890123456789"),
            &json!("1234567890123456788")
        ));
        assert!(!values_match(
            &json!("1234567890123456789"),
            &json!(1234567890123456788u64)
        ));
        assert!(values_match(
            &json!("1234567890123456789"),
            &json!(1234567890123456789u64)
        ));
        assert!(values_match(&json!("1.50"), &json!(1.5)));
        assert!(values_match(&json!(12), &json!("12.0")));
        assert!(values_match(&json!(0.1), &json!("0.1")));
    }

    #[test]
    fn identifiers_with_leading_zeros_are_text() {
        assert!(!values_match(&json!("007"), &json!("7")));
        assert!(!values_match(&json!("007"), &json!(7)));
        assert!(!values_match(&json!("00123"), &json!("0123")));
        assert!(values_match(&json!("007"), &json!(" 007 ")));
        assert!(values_match(&json!("0.5"), &json!(0.5)));
        assert!(values_match(&json!("0"), &json!(0)));
    }
}
