//! The decode rules: which JSON value a declared field accepts, and what it becomes.
//!
//! A value is accepted only when it fits the declared type exactly (ARCHITECTURE.md, "Decode
//! rules"); everything else is a [`Fault`] naming the field, its type and the value. These
//! are pure functions of one value, so every rule is tested on its own.

use std::fmt::Write as _;

use datafusion::arrow::array::timezone::Tz;
use datafusion::arrow::compute::kernels::cast_utils::string_to_datetime;
use datafusion::arrow::temporal_conversions::timestamp_ms_to_datetime;
use weir_runtime::dlq::ErrorKind;

use super::json::is_number;
use crate::schema::{EpochUnit, FieldConfig, FieldType, PathStep, PLAUSIBLE_EPOCH_SECS};

/// A string value longer than this (in characters) is cut in messages.
const SHOWN_CHARS: usize = 80;

/// One JSON value as the parser hands it over.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scalar<'s> {
    Null,
    Bool(bool),
    /// A number, as written (it follows the JSON number grammar).
    Number(&'s str),
    Str(&'s str),
    Object,
    Array,
}

/// What an accepted value becomes in its column.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'s> {
    Null,
    Str(&'s str),
    I8(i8),
    I16(i16),
    I32(i32),
    I64(i64),
    U8(u8),
    U16(u16),
    U32(u32),
    U64(u64),
    /// The unscaled value of a decimal at the field's scale.
    Decimal(i128),
    /// A base64 string, decoded (and checked) straight into the column.
    Base64(&'s str),
    /// Bytes as they are (a binary header).
    Bytes(&'s [u8]),
    /// Days since 1970-01-01.
    Date(i32),
    F32(f32),
    F64(f64),
    Bool(bool),
    /// Epoch milliseconds.
    TimestampMs(i64),
}

/// Why a message is dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub kind: ErrorKind,
    pub message: String,
}

impl Fault {
    pub fn new(kind: ErrorKind, message: String) -> Self {
        Self { kind, message }
    }
}

/// One declared field's rules, resolved once per decoder.
#[derive(Debug, Clone)]
pub struct FieldRule {
    pub name: String,
    pub field_type: FieldType,
    pub nullable: bool,
    coerce: bool,
    unit: EpochUnit,
    /// Every epoch number of the unit is accepted, not only the plausible ones.
    any_epoch: bool,
    /// How the type is named in messages, e.g. `int64`, `timestamp, unit ms` or
    /// `decimal(18, 4), at payload.amount` (with the path, when the field has one).
    type_name: String,
    /// The field's path, when it has one.
    path: Option<String>,
    /// Where the field is in the event (its path, or its name).
    steps: Vec<PathStep>,
    utc: Tz,
}

impl FieldRule {
    pub fn new(f: &FieldConfig) -> Self {
        let mut type_name = match f.field_type {
            FieldType::Timestamp => format!("timestamp, unit {}", f.epoch_unit().as_str()),
            _ => f.type_text(),
        };
        if let Some(p) = &f.path {
            let _ = write!(type_name, ", at {p}");
        }
        Self {
            name: f.name.clone(),
            field_type: f.field_type,
            nullable: f.nullable,
            coerce: f.coerce,
            unit: f.epoch_unit(),
            any_epoch: f.any_epoch,
            type_name,
            path: f.path.clone(),
            steps: f
                .steps()
                .unwrap_or_else(|_| vec![PathStep::Key(f.name.clone())]),
            utc: "+00:00"
                .parse()
                .expect("invariant: +00:00 is a valid offset"),
        }
    }

    /// Where the field is in the event: its path, or its name.
    pub fn position(&self) -> Vec<PathStep> {
        self.steps.clone()
    }

    /// How messages name the type (with the path, when the field has one).
    pub fn type_name(&self) -> &str {
        &self.type_name
    }

    /// How this rule's faults begin: `field `<name>` (<type>)`.
    pub fn named(&self) -> String {
        format!("field `{}` ({})", self.name, self.type_name)
    }

    /// The fault of a required field that is absent or null.
    pub fn missing(&self) -> Fault {
        Fault::new(
            ErrorKind::MissingField,
            match &self.path {
                None => format!("required field `{}` is missing or null", self.name),
                Some(p) => format!("required field `{}` (at {p}) is missing or null", self.name),
            },
        )
    }

    /// The fault of a value at `at`, on this field's path, that is not the object or array
    /// (`want`) the path goes through.
    pub fn misshapen(&self, at: &str, value: Scalar<'_>, want: &str) -> Fault {
        Fault::new(
            ErrorKind::WrongType,
            format!(
                "field `{}` ({}): `{at}` is {}, not {want}",
                self.name,
                self.type_name,
                show(value)
            ),
        )
    }

    /// `value` as this field's column value, or why it does not fit.
    pub fn convert<'s>(&self, value: Scalar<'s>) -> Result<Value<'s>, Fault> {
        if value == Scalar::Null {
            return if self.nullable {
                Ok(Value::Null)
            } else {
                Err(self.missing())
            };
        }
        match self.field_type {
            FieldType::String => match value {
                Scalar::Str(s) => Ok(Value::Str(s)),
                other => Err(self.wrong(other, "is not a string")),
            },
            FieldType::Bool => match value {
                Scalar::Bool(b) => Ok(Value::Bool(b)),
                Scalar::Str(s) if self.coerce => match s {
                    "true" => Ok(Value::Bool(true)),
                    "false" => Ok(Value::Bool(false)),
                    _ => Err(self.wrong(value, "is not \"true\" or \"false\"")),
                },
                other => Err(self.wrong(other, "is not a boolean (true or false)")),
            },
            FieldType::Int8
            | FieldType::Int16
            | FieldType::Int32
            | FieldType::Int64
            | FieldType::UInt8
            | FieldType::UInt16
            | FieldType::UInt32
            | FieldType::UInt64 => {
                let n = match whole(self.number(value)?) {
                    Whole::Int(n) => n,
                    Whole::Fraction => return Err(self.wrong(value, "is not a whole number")),
                    Whole::Huge => return Err(self.wrong(value, "is out of range")),
                };
                let out_of_range =
                    || self.wrong(value, &format!("is out of range for {}", self.field_type));
                match self.field_type {
                    FieldType::Int8 => i8::try_from(n).map(Value::I8),
                    FieldType::Int16 => i16::try_from(n).map(Value::I16),
                    FieldType::Int32 => i32::try_from(n).map(Value::I32),
                    FieldType::Int64 => i64::try_from(n).map(Value::I64),
                    FieldType::UInt8 => u8::try_from(n).map(Value::U8),
                    FieldType::UInt16 => u16::try_from(n).map(Value::U16),
                    FieldType::UInt32 => u32::try_from(n).map(Value::U32),
                    _ => u64::try_from(n).map(Value::U64),
                }
                .map_err(|_| out_of_range())
            }
            FieldType::Decimal { precision, scale } => {
                match decimal(self.number(value)?, precision, scale) {
                    Ok(n) => Ok(Value::Decimal(n)),
                    Err(DecimalFit::Fraction) => Err(self.wrong(
                        value,
                        &format!(
                            "has more than {scale} digits after the point (it would have to be \
                             rounded)"
                        ),
                    )),
                    Err(DecimalFit::Precision) => Err(self.wrong(
                        value,
                        &format!(
                            "is out of range: {} holds at most {} digits before the point",
                            self.field_type,
                            precision - scale as u8
                        ),
                    )),
                }
            }
            FieldType::Binary => match value {
                Scalar::Str(s) => Ok(Value::Base64(s)),
                other => Err(self.wrong(other, "is not a base64 string")),
            },
            FieldType::Date => match value {
                Scalar::Str(s) => date(s)
                    .map(Value::Date)
                    .ok_or_else(|| self.wrong(value, "is not a date (YYYY-MM-DD)")),
                other => Err(self.wrong(other, "is not a date string (YYYY-MM-DD)")),
            },
            FieldType::Float64 => {
                let text = self.number(value)?;
                match integer(text) {
                    Some(n) if (n as f64) as i128 == n => Ok(Value::F64(n as f64)),
                    None if !is_integer(text) => match text.parse::<f64>() {
                        Ok(f) if f.is_finite() => Ok(Value::F64(f)),
                        _ => Err(self.wrong(value, "is out of range for float64")),
                    },
                    _ => Err(self.wrong(value, "is an integer that float64 cannot hold exactly")),
                }
            }
            FieldType::Float32 => {
                let text = self.number(value)?;
                match integer(text) {
                    Some(n) if (n as f32) as i128 == n => Ok(Value::F32(n as f32)),
                    None if !is_integer(text) => match text.parse::<f32>() {
                        Ok(f) if f.is_finite() => Ok(Value::F32(f)),
                        _ => Err(self.wrong(value, "is out of range for float32")),
                    },
                    _ => Err(self.wrong(value, "is an integer that float32 cannot hold exactly")),
                }
            }
            FieldType::Timestamp => self.timestamp(value),
            FieldType::Struct | FieldType::List | FieldType::Map => {
                unreachable!("invariant: nested values are read by decode::nested")
            }
        }
    }

    /// The text of a number, or of a numeric string when the field coerces; anything else
    /// is a fault.
    fn number<'s>(&self, value: Scalar<'s>) -> Result<&'s str, Fault> {
        match value {
            Scalar::Number(text) => Ok(text),
            Scalar::Str(s) => match is_number(s) {
                true if self.coerce => Ok(s),
                false if self.coerce => Err(self.wrong(value, "is not a JSON number")),
                true => Err(self.wrong(
                    value,
                    "is a string, not a number (set `coerce = true` on the field to read \
                     numbers written as strings)",
                )),
                false => Err(self.wrong(value, "is not a number")),
            },
            other => Err(self.wrong(other, "is not a number")),
        }
    }

    fn timestamp<'s>(&self, value: Scalar<'s>) -> Result<Value<'s>, Fault> {
        let text = match value {
            Scalar::Number(text) => text,
            Scalar::Str(s) => match is_number(s) {
                true if self.coerce => s,
                true => {
                    return Err(self.wrong(
                        value,
                        "is a string, not an epoch number (set `coerce = true` on the field \
                         to read epoch numbers written as strings)",
                    ))
                }
                false => {
                    return string_to_datetime(&self.utc, s)
                        .map(|t| Value::TimestampMs(t.timestamp_millis()))
                        .map_err(|_| self.wrong(value, "is not an RFC 3339 time"))
                }
            },
            other => {
                return Err(self.wrong(other, "is neither an epoch number nor an RFC 3339 string"))
            }
        };
        let epoch = epoch_of(text);
        if self.any_epoch {
            return any_epoch_to_ms(epoch, self.unit)
                .map(Value::TimestampMs)
                .ok_or_else(|| self.wrong(value, "is beyond the range of timestamps"));
        }
        epoch_to_ms(epoch, self.unit)
            .map(Value::TimestampMs)
            .ok_or_else(|| self.implausible(value, epoch))
    }

    pub fn wrong(&self, value: Scalar<'_>, why: &str) -> Fault {
        Fault::new(
            ErrorKind::WrongType,
            format!(
                "field `{}` ({}): {} {why}",
                self.name,
                self.type_name,
                show(value)
            ),
        )
    }

    /// The fault of an epoch number outside its unit's plausible range, with the unit it
    /// would fit.
    fn implausible(&self, shown: Scalar<'_>, epoch: Num) -> Fault {
        let (lo, hi) = self.unit.plausible_range();
        let mut message = format!(
            "field `{}` ({}): {} is not a plausible epoch time in {}",
            self.name,
            self.type_name,
            show(shown),
            unit_words(self.unit),
        );
        if let Some(at) = as_date(epoch, self.unit) {
            let _ = write!(message, " (it would be {at})");
        }
        let _ = write!(
            message,
            ": epoch {} lie in [{lo}, {hi}), {} to {}",
            unit_words(self.unit),
            date_of_secs(PLAUSIBLE_EPOCH_SECS.0),
            date_of_secs(PLAUSIBLE_EPOCH_SECS.1),
        );
        if let Some(u) = EpochUnit::ALL
            .into_iter()
            .find(|&u| u != self.unit && epoch_to_ms(epoch, u).is_some())
        {
            let _ = write!(
                message,
                "; in {} it would be {}: declare `unit = \"{}\"`",
                unit_words(u),
                as_date(epoch, u).unwrap_or_default(),
                u.as_str()
            );
        }
        Fault::new(ErrorKind::WrongType, message)
    }
}

/// An epoch number: an integer, or a float when written with a fraction or an exponent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Num {
    Int(i128),
    Float(f64),
}

/// The epoch number `text` (a JSON number) holds; an integer beyond i128 is infinite.
fn epoch_of(text: &str) -> Num {
    match integer(text) {
        Some(n) => Num::Int(n),
        None if is_integer(text) => Num::Float(f64::INFINITY),
        None => Num::Float(text.parse::<f64>().unwrap_or(f64::NAN)),
    }
}

/// `value` in `unit` as epoch milliseconds (floored), when it lies in the unit's plausible
/// range.
pub fn epoch_to_ms(value: Num, unit: EpochUnit) -> Option<i64> {
    let (lo, hi) = unit.plausible_range();
    let per = i128::from(unit.per_second());
    match value {
        Num::Int(n) if (lo..hi).contains(&n) => i64::try_from((n * 1000).div_euclid(per)).ok(),
        Num::Float(f) if f >= lo as f64 && f < hi as f64 => {
            Some((f * 1000.0 / per as f64).floor() as i64)
        }
        _ => None,
    }
}

/// `value` in `unit` as epoch milliseconds (floored), whatever its magnitude, when the
/// milliseconds fit an i64.
fn any_epoch_to_ms(value: Num, unit: EpochUnit) -> Option<i64> {
    let per = i128::from(unit.per_second());
    match value {
        Num::Int(n) => n
            .checked_mul(1000)
            .and_then(|ms| i64::try_from(ms.div_euclid(per)).ok()),
        Num::Float(f) => {
            let ms = (f * 1000.0 / per as f64).floor();
            (ms.is_finite() && ms.abs() < i64::MAX as f64).then_some(ms as i64)
        }
    }
}

/// Whether the JSON number `text` is written without fraction and exponent.
fn is_integer(text: &str) -> bool {
    !text.bytes().any(|b| matches!(b, b'.' | b'e' | b'E'))
}

/// The JSON number `text` as an integer, when written as one and within i128.
fn integer(text: &str) -> Option<i128> {
    if is_integer(text) {
        text.parse().ok()
    } else {
        None
    }
}

/// What a JSON number is as an integer, from its decimal text (no float in between).
#[derive(Debug, PartialEq, Eq)]
enum Whole {
    Int(i128),
    /// It has a non-zero fractional part.
    Fraction,
    /// A whole number beyond i128.
    Huge,
}

/// `text` (the JSON number grammar) as an exact integer: `3.0`, `30e-1` and `1e3` are whole,
/// `3.7` and `1e-400` are not.
fn whole(text: &str) -> Whole {
    if is_integer(text) {
        return text.parse().map_or(Whole::Huge, Whole::Int);
    }
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(i) => (&unsigned[..i], &unsigned[i + 1..]),
        None => (unsigned, "0"),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    // An exponent too long for i64 is far beyond any i128 either way.
    let exponent: i64 = match exponent.parse() {
        Ok(e) => e,
        Err(_) if exponent.starts_with('-') => i64::MIN / 2,
        Err(_) => i64::MAX / 2,
    };
    let digits: String = format!("{int_part}{frac_part}");
    let digits = digits.trim_start_matches('0');
    let significant = digits.trim_end_matches('0');
    if significant.is_empty() {
        return Whole::Int(0);
    }
    // value = significant * 10^scale
    let scale = exponent - frac_part.len() as i64 + (digits.len() - significant.len()) as i64;
    if scale < 0 {
        return Whole::Fraction;
    }
    if significant.len() as i64 + scale > 39 {
        return Whole::Huge;
    }
    let mut n: i128 = match significant.parse() {
        Ok(n) => n,
        Err(_) => return Whole::Huge,
    };
    for _ in 0..scale {
        n = match n.checked_mul(10) {
            Some(n) => n,
            None => return Whole::Huge,
        };
    }
    Whole::Int(if negative { -n } else { n })
}

/// Why a JSON number does not fit a decimal.
#[derive(Debug, PartialEq, Eq)]
enum DecimalFit {
    /// It has non-zero digits beyond the scale.
    Fraction,
    /// It has more digits before the point than precision - scale.
    Precision,
}

/// `text` (the JSON number grammar) as the unscaled value of a `decimal(precision, scale)`,
/// read exactly from its digits, never through a float: `12.5` at scale 2 is 1250, `1.50`
/// fits scale 1 (the dropped digit is a zero), `1.55` does not, `1e2` is 100.
fn decimal(text: &str, precision: u8, scale: i8) -> Result<i128, DecimalFit> {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(i) => (&unsigned[..i], &unsigned[i + 1..]),
        None => (unsigned, "0"),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    // An exponent too long for i64 is far beyond any precision either way.
    let exponent: i64 = match exponent.parse() {
        Ok(e) => e,
        Err(_) if exponent.starts_with('-') => i64::MIN / 2,
        Err(_) => i64::MAX / 2,
    };
    // value = digits * 10^(exponent - frac_part.len()); unscaled = value * 10^scale.
    let digits = int_part.bytes().chain(frac_part.bytes());
    let leading = digits.clone().take_while(|&d| d == b'0').count();
    let len = int_part.len() + frac_part.len() - leading;
    if len == 0 {
        return Ok(0);
    }
    let shift = exponent - frac_part.len() as i64 + i64::from(scale);
    let kept = if shift < 0 {
        let dropped = shift.unsigned_abs().min(len as u64) as usize;
        if digits
            .clone()
            .skip(leading + len - dropped)
            .any(|d| d != b'0')
        {
            return Err(DecimalFit::Fraction);
        }
        len - dropped
    } else {
        len
    };
    if kept == 0 {
        return Ok(0);
    }
    let zeros = shift.max(0);
    if kept as i64 + zeros > i64::from(precision) {
        return Err(DecimalFit::Precision);
    }
    let mut n: i128 = 0;
    for d in digits.skip(leading).take(kept) {
        n = n * 10 + i128::from(d - b'0');
    }
    for _ in 0..zeros {
        n *= 10;
    }
    Ok(if negative { -n } else { n })
}

/// `YYYY-MM-DD` (exactly that, a real calendar day) as days since 1970-01-01.
fn date(s: &str) -> Option<i32> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        b[r].iter().try_fold(0i64, |n, d| {
            d.is_ascii_digit().then(|| n * 10 + i64::from(d - b'0'))
        })
    };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days_in_month = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if d < 1 || d > days_in_month {
        return None;
    }
    // Days from civil (H. Hinnant): March-based years, so February ends the year.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    i32::try_from(era * 146_097 + doe - 719_468).ok()
}

/// The value as a message shows it: JSON text (strings quoted and cut), or what it is.
pub fn show(value: Scalar<'_>) -> String {
    match value {
        Scalar::Null => "null".into(),
        Scalar::Bool(b) => b.to_string(),
        Scalar::Number(text) => cut(text),
        Scalar::Str(s) => serde_json::to_string(&cut(s)).unwrap_or_default(),
        Scalar::Object => "an object".into(),
        Scalar::Array => "an array".into(),
    }
}

/// `s`, cut to [`SHOWN_CHARS`] characters (marked with `...`).
fn cut(s: &str) -> String {
    let mut out: String = s.chars().take(SHOWN_CHARS).collect();
    if out.len() < s.len() {
        out.push_str("...");
    }
    out
}

fn unit_words(u: EpochUnit) -> &'static str {
    match u {
        EpochUnit::Seconds => "seconds",
        EpochUnit::Millis => "milliseconds",
        EpochUnit::Micros => "microseconds",
        EpochUnit::Nanos => "nanoseconds",
    }
}

/// The UTC time an epoch number in `unit` denotes, whatever its range (`None` beyond what
/// milliseconds in an i64 hold).
fn as_date(epoch: Num, unit: EpochUnit) -> Option<String> {
    let per = unit.per_second() as f64;
    let ms = match epoch {
        Num::Int(n) => n as f64 * 1000.0 / per,
        Num::Float(f) => f * 1000.0 / per,
    };
    if !ms.is_finite() || ms.abs() >= i64::MAX as f64 {
        return None;
    }
    timestamp_ms_to_datetime(ms.floor() as i64).map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
}

fn date_of_secs(secs: i64) -> String {
    as_date(Num::Int(i128::from(secs)), EpochUnit::Seconds).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers_are_read_from_their_decimal_text() {
        for (text, want) in [
            ("3", Whole::Int(3)),
            ("-3", Whole::Int(-3)),
            ("3.0", Whole::Int(3)),
            ("3.000", Whole::Int(3)),
            ("30e-1", Whole::Int(3)),
            ("1e3", Whole::Int(1000)),
            ("1E+3", Whole::Int(1000)),
            ("-0.0", Whole::Int(0)),
            ("0e999999999999999999999", Whole::Int(0)),
            ("9007199254740993.0", Whole::Int(9_007_199_254_740_993)),
            ("3.7", Whole::Fraction),
            ("3.0000000000000001", Whole::Fraction),
            ("1e-400", Whole::Fraction),
            ("1e39", Whole::Huge),
            ("1e999999999999999999999", Whole::Huge),
            ("1000000000000000000000000000000000000000", Whole::Huge),
        ] {
            assert_eq!(whole(text), want, "{text}");
        }
    }

    #[test]
    fn the_plausible_bands_of_the_units_never_overlap_and_each_spans_two_decades() {
        for (i, a) in EpochUnit::ALL.iter().enumerate() {
            let (lo, hi) = a.plausible_range();
            assert_eq!(hi, lo * 100, "{a:?}");
            for b in &EpochUnit::ALL[i + 1..] {
                let (lo_b, _) = b.plausible_range();
                assert!(hi < lo_b, "{a:?} and {b:?} overlap");
            }
        }
        // ns still fits i64 milliseconds once converted, and its band's top is past i64.
        assert!(EpochUnit::Nanos.plausible_range().1 > i128::from(i64::MAX));
    }

    #[test]
    fn epochs_convert_to_milliseconds_by_flooring() {
        let t = 1_767_624_000_000i64;
        assert_eq!(
            epoch_to_ms(Num::Int(1_767_624_000), EpochUnit::Seconds),
            Some(t)
        );
        assert_eq!(
            epoch_to_ms(Num::Int(i128::from(t) * 1000 + 999), EpochUnit::Micros),
            Some(t)
        );
        assert_eq!(
            epoch_to_ms(Num::Float(1_767_624_000.5), EpochUnit::Seconds),
            Some(t + 500)
        );
        assert_eq!(
            epoch_to_ms(Num::Int(1_767_624_000), EpochUnit::Millis),
            None
        );
        assert_eq!(epoch_to_ms(Num::Float(f64::NAN), EpochUnit::Millis), None);
        assert_eq!(
            epoch_to_ms(Num::Float(f64::INFINITY), EpochUnit::Millis),
            None
        );
    }
}
