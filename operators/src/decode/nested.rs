//! Struct, list and map columns: a JSON object or array read, in the same single pass as the
//! rest of the message, into Arrow Struct, List and Map arrays (ARCHITECTURE.md, "Decode
//! rules"). A builder per declared type holds the buffered values of every row; the scalar
//! leaves are ordinary [`Column`]s with their [`rules`](super::rules). A value that does not
//! fit is a [`Miss`] that gathers its position on the way out, so that the message names the
//! field, the path inside it and the value; the rows are rolled back by the decoder with
//! [`Builder::truncate`].

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, ListArray, MapArray, StructArray};
use datafusion::arrow::buffer::{NullBuffer, OffsetBuffer, ScalarBuffer};
use datafusion::arrow::datatypes::{DataType, FieldRef, Fields};
use datafusion::arrow::error::ArrowError;
use weir_runtime::dlq::ErrorKind;

use super::json::{self, Reader};
use super::rules::{show, Fault, FieldRule, Scalar, Value};
use super::tree::UnknownKeys;
use super::{scalar, Column};
use crate::schema::{path_text, FieldConfig, FieldType, PathStep};

type Read = std::result::Result<std::result::Result<(), Miss>, json::SyntaxError>;

/// The buffered values of one declared type, at any depth.
pub enum Builder {
    Leaf(Column),
    Struct(StructBuilder),
    List(ListBuilder),
    Map(MapBuilder),
}

pub struct StructBuilder {
    fields: Fields,
    names: Vec<String>,
    children: Vec<Builder>,
    nullable: bool,
    valid: Vec<bool>,
    len: usize,
    type_text: String,
    /// The undeclared keys of the object being read, to find duplicates among them.
    unknown: UnknownKeys,
    /// The child the next key most likely names (events usually keep their key order).
    next: usize,
}

pub struct ListBuilder {
    item_field: FieldRef,
    item: Box<Builder>,
    /// One more than the rows, from 0: where each row's elements end in `item`.
    offsets: Vec<i32>,
    nullable: bool,
    valid: Vec<bool>,
    type_text: String,
}

pub struct MapBuilder {
    entries_field: FieldRef,
    keys: Column,
    values: Box<Builder>,
    offsets: Vec<i32>,
    nullable: bool,
    valid: Vec<bool>,
    type_text: String,
    /// The keys of the object being read, to find duplicates.
    seen: UnknownKeys,
}

/// Why a nested value does not fit, and where (the steps from the column inward, gathered
/// innermost first on the way out).
pub struct Miss {
    kind: MissKind,
    steps: Vec<PathStep>,
}

enum MissKind {
    /// A required value is null or absent.
    Missing,
    /// A scalar's fault, as its rule wrote it (naming the leaf as `field `<leaf>` (<type>)`).
    Leaf {
        fault: Fault,
        named: String,
        type_name: String,
    },
    /// Not the object or array the type is.
    Shape {
        type_text: String,
        shown: String,
        want: &'static str,
    },
    /// A key twice in one object.
    Duplicate(String),
}

impl Miss {
    fn new(kind: MissKind) -> Self {
        Self {
            kind,
            steps: Vec::new(),
        }
    }

    fn within(mut self, step: PathStep) -> Self {
        self.steps.push(step);
        self
    }

    /// The fault of column `rule`'s message: the field, the position inside it and why.
    pub fn into_fault(mut self, rule: &FieldRule) -> Fault {
        self.steps.reverse();
        let mut at = rule.position();
        at.extend(self.steps.iter().cloned());
        let at = path_text(&at);
        let inside = !self.steps.is_empty();
        match self.kind {
            MissKind::Missing if !inside => rule.missing(),
            MissKind::Missing => Fault::new(
                ErrorKind::MissingField,
                format!(
                    "field `{}`: the required value at `{at}` is missing or null",
                    rule.name
                ),
            ),
            MissKind::Leaf {
                fault,
                named,
                type_name,
            } => Fault::new(
                fault.kind,
                fault.message.replacen(
                    &named,
                    &format!("field `{}` at `{at}` ({type_name})", rule.name),
                    1,
                ),
            ),
            MissKind::Shape { shown, want, .. } if !inside => Fault::new(
                ErrorKind::WrongType,
                format!(
                    "field `{}` ({}): {shown} is not {want}",
                    rule.name,
                    rule.type_name()
                ),
            ),
            MissKind::Shape {
                type_text,
                shown,
                want,
            } => Fault::new(
                ErrorKind::WrongType,
                format!(
                    "field `{}` at `{at}` ({type_text}): {shown} is not {want}",
                    rule.name
                ),
            ),
            MissKind::Duplicate(key) => Fault::new(
                ErrorKind::InvalidJson,
                format!("duplicate key `{key}` in `{at}`"),
            ),
        }
    }
}

fn offsets_end(len: usize) -> Option<i32> {
    i32::try_from(len).ok()
}

/// The rest of the object whose member was just read, for syntax only.
fn rest_of_object(r: &mut Reader<'_>) -> std::result::Result<(), json::SyntaxError> {
    while r.next_member()? {
        r.key()?;
        r.value()?;
    }
    Ok(())
}

/// The rest of the array whose element was just read, for syntax only.
fn rest_of_array(r: &mut Reader<'_>) -> std::result::Result<(), json::SyntaxError> {
    while r.next_element()? {
        r.value()?;
    }
    Ok(())
}

fn nulls(valid: &mut Vec<bool>) -> Option<NullBuffer> {
    let valid = std::mem::take(valid);
    valid.iter().any(|v| !v).then(|| NullBuffer::from(valid))
}

impl Builder {
    /// The builder of field `f` (a struct, list or map field, or a scalar inside one).
    pub fn new(f: &FieldConfig) -> Self {
        let field = f.arrow_field();
        match (f.field_type, field.data_type()) {
            (FieldType::Struct, DataType::Struct(fields)) => Builder::Struct(StructBuilder {
                fields: fields.clone(),
                names: f.fields.iter().map(|c| c.name.clone()).collect(),
                children: f.fields.iter().map(Builder::new).collect(),
                nullable: f.nullable,
                valid: Vec::new(),
                len: 0,
                type_text: f.type_text(),
                unknown: UnknownKeys::default(),
                next: 0,
            }),
            (FieldType::List, DataType::List(item_field)) => {
                let item = f
                    .item
                    .as_deref()
                    .expect("invariant: validate requires `item`");
                Builder::List(ListBuilder {
                    item_field: item_field.clone(),
                    item: Box::new(Builder::new(item)),
                    offsets: vec![0],
                    nullable: f.nullable,
                    valid: Vec::new(),
                    type_text: f.type_text(),
                })
            }
            (FieldType::Map, DataType::Map(entries_field, _)) => {
                let value = f
                    .value
                    .as_deref()
                    .expect("invariant: validate requires `value`");
                Builder::Map(MapBuilder {
                    entries_field: entries_field.clone(),
                    keys: Column::new(FieldRule::new(&FieldConfig::new("keys", FieldType::String))),
                    values: Box::new(Builder::new(value)),
                    offsets: vec![0],
                    nullable: f.nullable,
                    valid: Vec::new(),
                    type_text: f.type_text(),
                    seen: UnknownKeys::default(),
                })
            }
            _ => Builder::Leaf(Column::new(FieldRule::new(f))),
        }
    }

    fn nullable(&self) -> bool {
        match self {
            Builder::Leaf(c) => c.rule.nullable,
            Builder::Struct(s) => s.nullable,
            Builder::List(l) => l.nullable,
            Builder::Map(m) => m.nullable,
        }
    }

    /// The values (rows, or elements inside a list) buffered.
    pub fn len(&self) -> usize {
        match self {
            Builder::Leaf(c) => c.len(),
            Builder::Struct(s) => s.len,
            Builder::List(l) => l.offsets.len() - 1,
            Builder::Map(m) => m.offsets.len() - 1,
        }
    }

    /// Append a null (a placeholder when the type is not nullable: a struct's fields under
    /// a null struct).
    pub fn push_null(&mut self) {
        match self {
            Builder::Leaf(c) => {
                c.push(Value::Null)
                    .expect("invariant: a null always fits a column");
            }
            Builder::Struct(s) => {
                for c in &mut s.children {
                    c.push_null();
                }
                if s.nullable {
                    s.valid.push(false);
                }
                s.len += 1;
            }
            Builder::List(l) => {
                let end = *l.offsets.last().expect("invariant: offsets start with 0");
                l.offsets.push(end);
                if l.nullable {
                    l.valid.push(false);
                }
            }
            Builder::Map(m) => {
                let end = *m.offsets.last().expect("invariant: offsets start with 0");
                m.offsets.push(end);
                if m.nullable {
                    m.valid.push(false);
                }
            }
        }
    }

    /// Back to the first `len` values.
    pub fn truncate(&mut self, len: usize) {
        match self {
            Builder::Leaf(c) => c.truncate(len),
            Builder::Struct(s) => {
                s.len = s.len.min(len);
                s.valid.truncate(len);
                for c in &mut s.children {
                    c.truncate(len);
                }
            }
            Builder::List(l) => {
                l.offsets.truncate(len + 1);
                l.valid.truncate(len);
                let end = l.offsets[l.offsets.len() - 1] as usize;
                l.item.truncate(end);
            }
            Builder::Map(m) => {
                m.offsets.truncate(len + 1);
                m.valid.truncate(len);
                let end = m.offsets[m.offsets.len() - 1] as usize;
                m.keys.truncate(end);
                m.values.truncate(end);
            }
        }
    }

    /// The value at the reader appended, or why it does not fit (the value is then read to
    /// its end, and the builder is left for the decoder to truncate).
    pub fn read(&mut self, r: &mut Reader<'_>) -> Read {
        let (want, open) = match self {
            Builder::Leaf(c) => {
                let token = r.value()?;
                let value = scalar(&token);
                if value == Scalar::Null && !c.rule.nullable {
                    return Ok(Err(Miss::new(MissKind::Missing)));
                }
                return Ok(c
                    .rule
                    .convert(value)
                    .and_then(|v| c.push(v))
                    .map_err(|fault| {
                        Miss::new(MissKind::Leaf {
                            fault,
                            named: c.rule.named(),
                            type_name: c.rule.type_name().to_string(),
                        })
                    }));
            }
            Builder::Struct(_) | Builder::Map(_) => ("an object", b'{'),
            Builder::List(_) => ("an array", b'['),
        };
        if r.first() == Some(open) {
            return match self {
                Builder::Struct(s) => s.read(r),
                Builder::List(l) => l.read(r),
                Builder::Map(m) => m.read(r),
                Builder::Leaf(_) => unreachable!("invariant: leaves returned above"),
            };
        }
        let token = r.value()?;
        let value = scalar(&token);
        if value == Scalar::Null {
            if !self.nullable() {
                return Ok(Err(Miss::new(MissKind::Missing)));
            }
            self.push_null();
            return Ok(Ok(()));
        }
        let type_text = match self {
            Builder::Struct(s) => s.type_text.clone(),
            Builder::List(l) => l.type_text.clone(),
            Builder::Map(m) => m.type_text.clone(),
            Builder::Leaf(_) => unreachable!("invariant: leaves returned above"),
        };
        Ok(Err(Miss::new(MissKind::Shape {
            type_text,
            shown: show(value),
            want,
        })))
    }

    /// The buffered values as an array, emptying the buffers.
    pub fn finish(&mut self) -> std::result::Result<ArrayRef, ArrowError> {
        Ok(match self {
            Builder::Leaf(c) => c.finish()?,
            Builder::Struct(s) => {
                let children = s
                    .children
                    .iter_mut()
                    .map(Builder::finish)
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                s.len = 0;
                Arc::new(StructArray::try_new(
                    s.fields.clone(),
                    children,
                    nulls(&mut s.valid),
                )?)
            }
            Builder::List(l) => {
                let offsets = std::mem::replace(&mut l.offsets, vec![0]);
                let values = l.item.finish()?;
                Arc::new(ListArray::try_new(
                    l.item_field.clone(),
                    OffsetBuffer::new(ScalarBuffer::from(offsets)),
                    values,
                    nulls(&mut l.valid),
                )?)
            }
            Builder::Map(m) => {
                let offsets = std::mem::replace(&mut m.offsets, vec![0]);
                let DataType::Struct(fields) = m.entries_field.data_type() else {
                    unreachable!("invariant: a map's entries are a struct")
                };
                let entries = StructArray::try_new(
                    fields.clone(),
                    vec![m.keys.finish()?, m.values.finish()?],
                    None,
                )?;
                Arc::new(MapArray::try_new(
                    m.entries_field.clone(),
                    OffsetBuffer::new(ScalarBuffer::from(offsets)),
                    entries,
                    nulls(&mut m.valid),
                    false,
                )?)
            }
        })
    }
}

impl StructBuilder {
    /// The object at the reader: its declared keys into the fields, the others skipped.
    fn read(&mut self, r: &mut Reader<'_>) -> Read {
        let start = self.len;
        self.unknown.clear();
        if !r.begin_object()? {
            loop {
                let key = r.key()?;
                let n = self.names.len();
                let hint = self.next;
                let found = (0..n)
                    .map(|i| (hint + i) % n)
                    .find(|&i| self.names[i] == key);
                let miss = match found {
                    Some(c) if self.children[c].len() > start => {
                        r.value()?;
                        Some(Miss::new(MissKind::Duplicate(key.into_owned())))
                    }
                    Some(c) => {
                        self.next = c + 1;
                        self.children[c]
                            .read(r)?
                            .err()
                            .map(|m| m.within(PathStep::Key(self.names[c].clone())))
                    }
                    None => {
                        r.value()?;
                        (!self.unknown.insert(&key))
                            .then(|| Miss::new(MissKind::Duplicate(key.into_owned())))
                    }
                };
                if let Some(miss) = miss {
                    rest_of_object(r)?;
                    return Ok(Err(miss));
                }
                if !r.next_member()? {
                    break;
                }
            }
        }
        for (c, name) in self.children.iter_mut().zip(&self.names) {
            if c.len() == start {
                if !c.nullable() {
                    return Ok(Err(
                        Miss::new(MissKind::Missing).within(PathStep::Key(name.clone()))
                    ));
                }
                c.push_null();
            }
        }
        if self.nullable {
            self.valid.push(true);
        }
        self.len += 1;
        Ok(Ok(()))
    }
}

impl ListBuilder {
    /// The array at the reader: each element into the item builder.
    fn read(&mut self, r: &mut Reader<'_>) -> Read {
        if !r.begin_array()? {
            let mut index = 0;
            loop {
                if let Err(miss) = self.item.read(r)? {
                    rest_of_array(r)?;
                    return Ok(Err(miss.within(PathStep::Index(index))));
                }
                index += 1;
                if !r.next_element()? {
                    break;
                }
            }
        }
        let Some(end) = offsets_end(self.item.len()) else {
            return Ok(Err(Miss::new(MissKind::Shape {
                type_text: self.type_text.clone(),
                shown: "a list".into(),
                want: "within the 2^31 elements a batch holds",
            })));
        };
        self.offsets.push(end);
        if self.nullable {
            self.valid.push(true);
        }
        Ok(Ok(()))
    }
}

impl MapBuilder {
    /// The object at the reader: each key and its value.
    fn read(&mut self, r: &mut Reader<'_>) -> Read {
        self.seen.clear();
        if !r.begin_object()? {
            loop {
                let key = r.key()?;
                let miss = if !self.seen.insert(&key) {
                    r.value()?;
                    Some(Miss::new(MissKind::Duplicate(key.into_owned())))
                } else {
                    match self.values.read(r)? {
                        Err(m) => Some(m.within(PathStep::Key(key.into_owned()))),
                        Ok(()) => self.keys.push(Value::Str(&key)).err().map(|fault| {
                            Miss::new(MissKind::Leaf {
                                fault,
                                named: self.keys.rule.named(),
                                type_name: self.keys.rule.type_name().to_string(),
                            })
                        }),
                    }
                };
                if let Some(miss) = miss {
                    rest_of_object(r)?;
                    return Ok(Err(miss));
                }
                if !r.next_member()? {
                    break;
                }
            }
        }
        let Some(end) = offsets_end(self.keys.len()) else {
            return Ok(Err(Miss::new(MissKind::Shape {
                type_text: self.type_text.clone(),
                shown: "a map".into(),
                want: "within the 2^31 entries a batch holds",
            })));
        };
        self.offsets.push(end);
        if self.nullable {
            self.valid.push(true);
        }
        Ok(Ok(()))
    }
}
