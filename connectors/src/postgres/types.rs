//! Arrow → PostgreSQL: the type mapping, and each column sent as one binary array parameter.
//!
//! | Arrow | PostgreSQL |
//! |---|---|
//! | Int8, Int16, UInt8 | int2 |
//! | Int32, UInt16 | int4 |
//! | Int64, UInt32, UInt64 | int8 (a UInt64 above i64::MAX rejects its row) |
//! | Float16, Float32 | float4 |
//! | Float64 | float8 |
//! | Utf8, LargeUtf8, Utf8View | text |
//! | Boolean | bool |
//! | Timestamp(any unit) with a time zone | timestamptz |
//! | Timestamp(any unit) without one | timestamp |
//! | Date32 | date |
//! | Binary, LargeBinary, BinaryView | bytea |
//! | Decimal128(p, s), s ≥ 0 | numeric (exact: the unscaled digits, never a float) |
//! | Struct, List, Map (any nesting) | jsonb (objects, arrays; as the JSONL sink writes them) |
//!
//! Any other type is an error naming the column and the type. A column goes to the server as
//! one array in PostgreSQL's binary format (`$n::int8[]`), whatever the number of rows, and
//! the statement `unnest`s the arrays: values are never spliced into SQL text.

use std::error::Error;
use std::fmt;

use bytes::{BufMut, BytesMut};
use postgres::types::{to_sql_checked, IsNull, Kind, ToSql, Type};
use weir_runtime::arrow::array::{Array, ArrayRef, AsArray, Int32Array, Int64Array};
use weir_runtime::arrow::compute::kernels::cast::{cast_with_options, CastOptions};
use weir_runtime::arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Float32Type, Float64Type, Int16Type, Int32Type,
    Int64Type, TimeUnit, UInt64Type,
};

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01T00:00:00Z).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
/// Days from the Unix epoch to PostgreSQL's.
const PG_EPOCH_DAYS: i32 = 10_957;

/// The PostgreSQL types the sink writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgType {
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Text,
    Bool,
    Timestamp,
    Timestamptz,
    Date,
    Bytea,
    Numeric,
    Jsonb,
}

impl PgType {
    /// The type's SQL name, as in `CREATE TABLE` and casts.
    pub fn name(self) -> &'static str {
        match self {
            PgType::Int2 => "int2",
            PgType::Int4 => "int4",
            PgType::Int8 => "int8",
            PgType::Float4 => "float4",
            PgType::Float8 => "float8",
            PgType::Text => "text",
            PgType::Bool => "bool",
            PgType::Timestamp => "timestamp",
            PgType::Timestamptz => "timestamptz",
            PgType::Date => "date",
            PgType::Bytea => "bytea",
            PgType::Numeric => "numeric",
            PgType::Jsonb => "jsonb",
        }
    }

    /// The element type's OID (pg_type.oid, fixed for built-in types).
    fn oid(self) -> u32 {
        match self {
            PgType::Int2 => 21,
            PgType::Int4 => 23,
            PgType::Int8 => 20,
            PgType::Float4 => 700,
            PgType::Float8 => 701,
            PgType::Text => 25,
            PgType::Bool => 16,
            PgType::Timestamp => 1114,
            PgType::Timestamptz => 1184,
            PgType::Date => 1082,
            PgType::Bytea => 17,
            PgType::Numeric => 1700,
            PgType::Jsonb => 3802,
        }
    }
}

/// The PostgreSQL type of an Arrow type, `None` when the sink cannot store it.
pub fn pg_type(data_type: &DataType) -> Option<PgType> {
    use DataType::*;
    Some(match data_type {
        Int8 | Int16 | UInt8 => PgType::Int2,
        Int32 | UInt16 => PgType::Int4,
        Int64 | UInt32 | UInt64 => PgType::Int8,
        Float16 | Float32 => PgType::Float4,
        Float64 => PgType::Float8,
        Utf8 | LargeUtf8 | Utf8View => PgType::Text,
        Boolean => PgType::Bool,
        Timestamp(_, None) => PgType::Timestamp,
        Timestamp(_, Some(_)) => PgType::Timestamptz,
        Date32 => PgType::Date,
        Binary | LargeBinary | BinaryView => PgType::Bytea,
        Decimal128(_, scale) if *scale >= 0 => PgType::Numeric,
        t if crate::is_nested(t) => PgType::Jsonb,
        _ => return None,
    })
}

/// One batch column, ready to encode: integers widened, floats as f32/f64, timestamps as
/// microseconds since 2000-01-01 and dates as days since then (PostgreSQL's binary forms).
#[derive(Debug, Clone)]
pub struct Column {
    pub pg: PgType,
    array: ArrayRef,
}

/// Converts column `array` (named `name`, for messages) to its PostgreSQL form. A value that
/// has no PostgreSQL form (a UInt64 above i64::MAX, a timestamp or date out of range) adds
/// `(row, reason)` to `rejects`: the row goes to the DLQ, not the batch.
pub fn convert(
    name: &str,
    array: &ArrayRef,
    rejects: &mut Vec<(usize, String)>,
) -> Result<Column, String> {
    let pg = pg_type(array.data_type()).ok_or_else(|| unsupported(name, array.data_type()))?;
    let strict = CastOptions {
        safe: false,
        ..Default::default()
    };
    let cast = |to: &DataType| {
        cast_with_options(array, to, &strict).map_err(|e| {
            format!(
                "column {name:?}: convert {} to {to}: {e}",
                array.data_type()
            )
        })
    };
    let array = match array.data_type() {
        DataType::Int8 | DataType::UInt8 => cast(&DataType::Int16)?,
        DataType::UInt16 => cast(&DataType::Int32)?,
        DataType::UInt32 => cast(&DataType::Int64)?,
        DataType::UInt64 => {
            let values = array.as_primitive::<UInt64Type>();
            let mut out = Vec::with_capacity(values.len());
            for (row, v) in values.iter().enumerate() {
                out.push(v.and_then(|v| match i64::try_from(v) {
                    Ok(v) => Some(v),
                    Err(_) => {
                        rejects.push((
                            row,
                            format!("column {name:?}: {v} does not fit PostgreSQL's int8"),
                        ));
                        None
                    }
                }));
            }
            std::sync::Arc::new(Int64Array::from(out))
        }
        DataType::Float16 => cast(&DataType::Float32)?,
        DataType::Timestamp(unit, _) => {
            let values = cast(&DataType::Int64)?;
            let (mul, div) = match unit {
                TimeUnit::Second => (1_000_000, 1),
                TimeUnit::Millisecond => (1_000, 1),
                TimeUnit::Microsecond => (1, 1),
                TimeUnit::Nanosecond => (1, 1_000),
            };
            let mut out = Vec::with_capacity(values.len());
            for (row, v) in values.as_primitive::<Int64Type>().iter().enumerate() {
                out.push(v.and_then(|v| {
                    let micros = v
                        .checked_mul(mul)
                        .map(|m| m.div_euclid(div))
                        .and_then(|m| m.checked_sub(PG_EPOCH_MICROS));
                    if micros.is_none() {
                        rejects.push((
                            row,
                            format!("column {name:?}: timestamp {v} ({unit:?}) is out of range"),
                        ));
                    }
                    micros
                }));
            }
            std::sync::Arc::new(Int64Array::from(out))
        }
        DataType::Date32 => {
            let mut out = Vec::with_capacity(array.len());
            for (row, v) in array.as_primitive::<Date32Type>().iter().enumerate() {
                out.push(v.and_then(|v| {
                    let days = v.checked_sub(PG_EPOCH_DAYS);
                    if days.is_none() {
                        rejects.push((
                            row,
                            format!("column {name:?}: date {v} (days since 1970) is out of range"),
                        ));
                    }
                    days
                }));
            }
            std::sync::Arc::new(Int32Array::from(out))
        }
        t if crate::is_nested(t) => {
            crate::json_texts(array).map_err(|e| format!("column {name:?}: {e}"))?
        }
        _ => array.clone(),
    };
    Ok(Column { pg, array })
}

/// The error for a column the sink cannot store.
pub fn unsupported(name: &str, data_type: &DataType) -> String {
    format!(
        "column {name:?} has type {data_type}, which the PostgreSQL sink cannot store \
         (supported: integers, floats, strings, booleans, timestamps, Date32, binary, \
         Decimal128 with a scale of 0 or more, and structs, lists and maps as jsonb)"
    )
}

/// The values of `column` at `rows`, as a one-dimensional PostgreSQL array parameter.
pub struct ArrayParam<'a> {
    pub column: &'a Column,
    pub rows: &'a [u32],
}

/// The row numbers themselves, as an `int4[]` parameter (the statement keeps the last row of
/// each key by them).
pub struct RowsParam<'a>(pub &'a [u32]);

impl fmt::Debug for ArrayParam<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{} rows]", self.column.pg.name(), self.rows.len())
    }
}

impl fmt::Debug for RowsParam<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rows[{}]", self.0.len())
    }
}

type BoxError = Box<dyn Error + Sync + Send>;

/// The array header of PostgreSQL's binary format: one dimension of `len` elements.
fn array_header(
    out: &mut BytesMut,
    element_oid: u32,
    len: usize,
    has_nulls: bool,
) -> Result<(), BoxError> {
    out.put_i32(1);
    out.put_i32(i32::from(has_nulls));
    out.put_u32(element_oid);
    out.put_i32(i32::try_from(len)?);
    out.put_i32(1);
    Ok(())
}

fn put_bytes(out: &mut BytesMut, bytes: &[u8]) -> Result<(), BoxError> {
    out.put_i32(i32::try_from(bytes.len())?);
    out.put_slice(bytes);
    Ok(())
}

/// The unscaled decimal `value` at `scale` in PostgreSQL's binary `numeric` form: digit
/// count, weight (of the first base-10000 digit), sign, display scale, then the base-10000
/// digits, with leading and trailing zero digits left out.
fn put_numeric(out: &mut BytesMut, value: i128, scale: u16) -> Result<(), BoxError> {
    let text = value.unsigned_abs().to_string();
    let scale = usize::from(scale);
    // The decimal digits, left-padded so that there is at least one before the point.
    let padded = format!("{text:0>width$}", width = scale + 1);
    let (int_part, frac_part) = padded.split_at(padded.len() - scale);
    let group = |g: &str| g.bytes().fold(0i16, |n, d| n * 10 + i16::from(d - b'0'));
    let int_pad = (4 - int_part.len() % 4) % 4;
    let int_digits = format!("{}{int_part}", "0".repeat(int_pad));
    let frac_pad = (4 - frac_part.len() % 4) % 4;
    let frac_digits = format!("{frac_part}{}", "0".repeat(frac_pad));
    let mut digits: Vec<i16> = int_digits
        .as_bytes()
        .chunks(4)
        .chain(frac_digits.as_bytes().chunks(4))
        .map(|c| group(std::str::from_utf8(c).expect("invariant: ASCII digits")))
        .collect();
    let mut weight = i16::try_from(int_digits.len() / 4)? - 1;
    let leading = digits.iter().take_while(|d| **d == 0).count();
    digits.drain(..leading);
    weight -= i16::try_from(leading)?;
    while digits.last() == Some(&0) {
        digits.pop();
    }
    if digits.is_empty() {
        weight = 0;
    }
    out.put_i32(i32::try_from(8 + 2 * digits.len())?);
    out.put_i16(i16::try_from(digits.len())?);
    out.put_i16(weight);
    out.put_u16(if value < 0 { 0x4000 } else { 0 });
    out.put_u16(u16::try_from(scale)?);
    for d in digits {
        out.put_i16(d);
    }
    Ok(())
}

/// The element type the statement declared for an array parameter.
fn element_type(ty: &Type) -> Result<&Type, BoxError> {
    match ty.kind() {
        Kind::Array(member) => Ok(member),
        _ => Err(format!("expected an array parameter, the statement has {ty}").into()),
    }
}

impl ToSql for ArrayParam<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        let member = element_type(ty)?;
        let pg = self.column.pg;
        if member.oid() != pg.oid() {
            return Err(
                format!("a {} column cannot fill a {member}[] parameter", pg.name()).into(),
            );
        }
        let array = &self.column.array;
        let rows = self.rows.iter().map(|r| *r as usize);
        let has_nulls = array.null_count() > 0 && rows.clone().any(|r| array.is_null(r));
        array_header(out, pg.oid(), self.rows.len(), has_nulls)?;
        macro_rules! each {
            (|$row:ident| $put:expr) => {
                for $row in rows {
                    if array.is_null($row) {
                        out.put_i32(-1);
                    } else {
                        $put;
                    }
                }
            };
        }
        match array.data_type() {
            DataType::Int16 => {
                let a = array.as_primitive::<Int16Type>();
                each!(|r| {
                    out.put_i32(2);
                    out.put_i16(a.value(r));
                })
            }
            DataType::Int32 => {
                // Dates are here as days since 2000-01-01 already (see `convert`).
                let a = array.as_primitive::<Int32Type>();
                each!(|r| {
                    out.put_i32(4);
                    out.put_i32(a.value(r));
                })
            }
            DataType::Int64 => {
                let a = array.as_primitive::<Int64Type>();
                each!(|r| {
                    out.put_i32(8);
                    out.put_i64(a.value(r));
                })
            }
            DataType::Float32 => {
                let a = array.as_primitive::<Float32Type>();
                each!(|r| {
                    out.put_i32(4);
                    out.put_f32(a.value(r));
                })
            }
            DataType::Float64 => {
                let a = array.as_primitive::<Float64Type>();
                each!(|r| {
                    out.put_i32(8);
                    out.put_f64(a.value(r));
                })
            }
            DataType::Boolean => {
                let a = array.as_boolean();
                each!(|r| {
                    out.put_i32(1);
                    out.put_u8(u8::from(a.value(r)));
                })
            }
            DataType::Utf8 if pg == PgType::Jsonb => {
                // jsonb's binary form: version 1, then the JSON text.
                let a = array.as_string::<i32>();
                each!(|r| {
                    let text = a.value(r).as_bytes();
                    out.put_i32(i32::try_from(text.len() + 1)?);
                    out.put_u8(1);
                    out.put_slice(text);
                })
            }
            DataType::Utf8 => {
                let a = array.as_string::<i32>();
                each!(|r| put_bytes(out, a.value(r).as_bytes())?)
            }
            DataType::LargeUtf8 => {
                let a = array.as_string::<i64>();
                each!(|r| put_bytes(out, a.value(r).as_bytes())?)
            }
            DataType::Utf8View => {
                let a = array.as_string_view();
                each!(|r| put_bytes(out, a.value(r).as_bytes())?)
            }
            DataType::Binary => {
                let a = array.as_binary::<i32>();
                each!(|r| put_bytes(out, a.value(r))?)
            }
            DataType::LargeBinary => {
                let a = array.as_binary::<i64>();
                each!(|r| put_bytes(out, a.value(r))?)
            }
            DataType::BinaryView => {
                let a = array.as_binary_view();
                each!(|r| put_bytes(out, a.value(r))?)
            }
            DataType::Decimal128(_, scale) => {
                let a = array.as_primitive::<Decimal128Type>();
                let scale = u16::try_from(*scale)?;
                each!(|r| put_numeric(out, a.value(r), scale)?)
            }
            other => {
                return Err(format!("invariant: no encoding for converted type {other}").into())
            }
        }
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        matches!(ty.kind(), Kind::Array(_))
    }

    to_sql_checked!();
}

impl ToSql for RowsParam<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        let member = element_type(ty)?;
        if member.oid() != PgType::Int4.oid() {
            return Err(format!("row numbers fill an int4[] parameter, not {member}[]").into());
        }
        array_header(out, PgType::Int4.oid(), self.0.len(), false)?;
        for row in self.0 {
            out.put_i32(4);
            out.put_i32(i32::try_from(*row)?);
        }
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        matches!(ty.kind(), Kind::Array(_))
    }

    to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use weir_runtime::arrow::array::{
        Date32Array, Float32Array, TimestampMillisecondArray, TimestampNanosecondArray,
        TimestampSecondArray, UInt64Array, UInt8Array,
    };

    #[test]
    fn every_arrow_type_maps_as_documented() {
        use DataType::*;
        let cases = [
            (Int8, Some(PgType::Int2)),
            (Int16, Some(PgType::Int2)),
            (UInt8, Some(PgType::Int2)),
            (Int32, Some(PgType::Int4)),
            (UInt16, Some(PgType::Int4)),
            (Int64, Some(PgType::Int8)),
            (UInt32, Some(PgType::Int8)),
            (UInt64, Some(PgType::Int8)),
            (Float16, Some(PgType::Float4)),
            (Float32, Some(PgType::Float4)),
            (Float64, Some(PgType::Float8)),
            (Utf8, Some(PgType::Text)),
            (LargeUtf8, Some(PgType::Text)),
            (Utf8View, Some(PgType::Text)),
            (Boolean, Some(PgType::Bool)),
            (Timestamp(TimeUnit::Second, None), Some(PgType::Timestamp)),
            (
                Timestamp(TimeUnit::Nanosecond, Some("+02:00".into())),
                Some(PgType::Timestamptz),
            ),
            (Date32, Some(PgType::Date)),
            (Binary, Some(PgType::Bytea)),
            (LargeBinary, Some(PgType::Bytea)),
            (BinaryView, Some(PgType::Bytea)),
            (Date64, None),
            (Null, None),
            (Decimal128(10, 2), Some(PgType::Numeric)),
            (Decimal128(10, -2), None),
            (Time64(TimeUnit::Microsecond), None),
            (Duration(TimeUnit::Second), None),
            (
                List(Arc::new(weir_runtime::arrow::datatypes::Field::new(
                    "x", Int64, true,
                ))),
                Some(PgType::Jsonb),
            ),
            (
                Struct(vec![weir_runtime::arrow::datatypes::Field::new("a", Utf8, true)].into()),
                Some(PgType::Jsonb),
            ),
            (Dictionary(Box::new(Int32), Box::new(Utf8)), None),
        ];
        for (arrow, pg) in cases {
            assert_eq!(pg_type(&arrow), pg, "{arrow}");
        }
        let err = unsupported("price", &Decimal128(10, -2));
        assert!(
            err.contains("\"price\"") && err.contains("Decimal128(10, -2)"),
            "{err}"
        );
    }

    #[test]
    fn values_without_a_postgres_form_reject_their_row_only() {
        let mut rejects = Vec::new();
        let u: ArrayRef = Arc::new(UInt64Array::from(vec![Some(1), Some(u64::MAX), None]));
        let c = convert("u", &u, &mut rejects).unwrap();
        assert_eq!(c.pg, PgType::Int8);
        assert_eq!(c.array.as_primitive::<Int64Type>().value(0), 1);
        assert!(c.array.is_null(2));
        assert_eq!(rejects.len(), 1);
        assert_eq!(rejects[0].0, 1);
        assert!(rejects[0].1.contains("18446744073709551615"), "{rejects:?}");

        let mut rejects = Vec::new();
        let ts: ArrayRef = Arc::new(TimestampSecondArray::from(vec![0, i64::MAX, -1]));
        let c = convert("ts", &ts, &mut rejects).unwrap();
        let micros = c.array.as_primitive::<Int64Type>();
        assert_eq!(micros.value(0), -PG_EPOCH_MICROS);
        assert_eq!(micros.value(2), -PG_EPOCH_MICROS - 1_000_000);
        assert_eq!(rejects.iter().map(|r| r.0).collect::<Vec<_>>(), [1]);

        let mut rejects = Vec::new();
        let d: ArrayRef = Arc::new(Date32Array::from(vec![10_957, i32::MIN]));
        let c = convert("d", &d, &mut rejects).unwrap();
        assert_eq!(c.array.as_primitive::<Int32Type>().value(0), 0);
        assert_eq!(rejects.iter().map(|r| r.0).collect::<Vec<_>>(), [1]);
    }

    #[test]
    fn timestamps_of_every_unit_become_postgres_microseconds() {
        let mut rejects = Vec::new();
        let ms: ArrayRef = Arc::new(TimestampMillisecondArray::from(vec![946_684_800_001]));
        let c = convert("t", &ms, &mut rejects).unwrap();
        assert_eq!(c.array.as_primitive::<Int64Type>().value(0), 1_000);
        // Nanoseconds round toward the past, also before 1970.
        let ns: ArrayRef = Arc::new(TimestampNanosecondArray::from(vec![-1]));
        let c = convert("t", &ns, &mut rejects).unwrap();
        assert_eq!(
            c.array.as_primitive::<Int64Type>().value(0),
            -PG_EPOCH_MICROS - 1
        );
        assert!(rejects.is_empty());
    }

    /// `value` at `scale` as PostgreSQL's binary numeric: (digits, weight, sign, dscale).
    fn numeric(value: i128, scale: u16) -> (Vec<i16>, i16, u16, u16) {
        let mut out = BytesMut::new();
        put_numeric(&mut out, value, scale).unwrap();
        let word = |i: usize| i16::from_be_bytes([out[4 + 2 * i], out[5 + 2 * i]]);
        let n = word(0) as usize;
        assert_eq!(
            i32::from_be_bytes([out[0], out[1], out[2], out[3]]) as usize,
            8 + 2 * n
        );
        let digits = (0..n).map(|i| word(4 + i)).collect();
        (digits, word(1), word(2) as u16, word(3) as u16)
    }

    #[test]
    fn decimals_encode_as_exact_postgres_numerics() {
        // 178.5500 = 178 + 5500/10^4
        assert_eq!(numeric(1_785_500, 4), (vec![178, 5500], 0, 0, 4));
        // -0.0001 = -1/10^4
        assert_eq!(numeric(-1, 4), (vec![1], -1, 0x4000, 4));
        // 123456789.12 = 1*10^8 + 2345*10^4 + 6789 + 1200/10^4
        assert_eq!(
            numeric(12_345_678_912, 2),
            (vec![1, 2345, 6789, 1200], 2, 0, 2)
        );
        // 10000 = 1 * 10000^1
        assert_eq!(numeric(10_000, 0), (vec![1], 1, 0, 0));
        assert_eq!(numeric(0, 3), (vec![], 0, 0, 3));
        // 38 nines at scale 0: 10 base-10000 digits, the first of two decimal digits.
        let (digits, weight, _, _) = numeric(10i128.pow(38) - 1, 0);
        assert_eq!(digits.len(), 10);
        assert_eq!((digits[0], weight), (99, 9));
        assert!(digits[1..].iter().all(|d| *d == 9999));
    }

    #[test]
    fn arrays_encode_in_postgres_binary_format() {
        let mut rejects = Vec::new();
        let a: ArrayRef = Arc::new(UInt8Array::from(vec![Some(7), None, Some(255)]));
        let column = convert("a", &a, &mut rejects).unwrap();
        let mut out = BytesMut::new();
        let param = ArrayParam {
            column: &column,
            rows: &[2, 1],
        };
        param.to_sql(&Type::INT2_ARRAY, &mut out).unwrap();
        let expected: Vec<u8> = [
            &1i32.to_be_bytes()[..], // dimensions
            &1i32.to_be_bytes(),     // has nulls
            &21u32.to_be_bytes(),    // int2
            &2i32.to_be_bytes(),     // length
            &1i32.to_be_bytes(),     // lower bound
            &2i32.to_be_bytes(),     // element length
            &255i16.to_be_bytes(),   // row 2
            &(-1i32).to_be_bytes(),  // row 1: null
        ]
        .concat();
        assert_eq!(&out[..], &expected[..]);
        let Err(err) = param.to_sql(&Type::INT8_ARRAY, &mut BytesMut::new()) else {
            panic!("an int2 column filled an int8[] parameter");
        };
        assert!(err.to_string().contains("int2"), "{err}");

        let f32s: ArrayRef = Arc::new(Float32Array::from(vec![1.0f32]));
        let f =
            weir_runtime::arrow::compute::kernels::cast::cast(&f32s, &DataType::Float16).unwrap();
        let column = convert("f", &f, &mut rejects).unwrap();
        let mut out = BytesMut::new();
        ArrayParam {
            column: &column,
            rows: &[0],
        }
        .to_sql(&Type::FLOAT4_ARRAY, &mut out)
        .unwrap();
        assert_eq!(&out[out.len() - 4..], &1.0f32.to_be_bytes());
    }
}
