//! The positions in an event that declared fields read from, as a tree: the event object at
//! the root, a node per key or array element on a field's path, the field's column at the
//! end. The decoder walks an event and this tree together, so each message is still read
//! once, and only the objects and arrays on a path are entered (everything else is skipped
//! as before).

use crate::schema::{path_text, FieldConfig, PathStep};

/// The root node: the event object.
pub const ROOT: usize = 0;

/// One position.
pub struct Node {
    pub kind: NodeKind,
    /// The stamp of the message that last reached this node through its key: a second
    /// time in one message is a duplicate key.
    pub stamp: u32,
    /// How the position is written (`payload`, `items[0]`; empty for the root), for messages.
    pub at: String,
    /// The first column beneath (the field a misshapen value there is reported for).
    pub first_column: usize,
}

pub enum NodeKind {
    /// The value of a declared field.
    Column(usize),
    /// An object holding declared fields.
    Object {
        /// (key, node), in declaration order.
        children: Vec<(String, usize)>,
        /// The undeclared keys of the object being read, to find duplicates among them.
        unknown: UnknownKeys,
        /// The child the next key most likely names (events usually keep their key order).
        next: usize,
    },
    /// An array holding declared fields.
    Array {
        /// (index, node).
        children: Vec<(usize, usize)>,
    },
}

/// The tree of `fields` (a schema that `SchemaConfig::validate` accepted: its paths parse
/// and do not conflict; a field whose path would conflict anyway is left out and so always
/// absent).
pub fn build(fields: &[FieldConfig]) -> Vec<Node> {
    let mut nodes = vec![Node {
        kind: object(),
        stamp: 0,
        at: String::new(),
        first_column: 0,
    }];
    for (column, f) in fields.iter().enumerate() {
        let steps = f
            .steps()
            .unwrap_or_else(|_| vec![PathStep::Key(f.name.clone())]);
        let mut at = ROOT;
        for (depth, step) in steps.iter().enumerate() {
            let last = depth + 1 == steps.len();
            let kind = if last {
                NodeKind::Column(column)
            } else {
                match steps[depth + 1] {
                    PathStep::Key(_) => object(),
                    PathStep::Index(_) => NodeKind::Array {
                        children: Vec::new(),
                    },
                }
            };
            let existing = match (&nodes[at].kind, step) {
                (NodeKind::Object { children, .. }, PathStep::Key(k)) => {
                    children.iter().find(|(c, _)| c == k).map(|(_, n)| *n)
                }
                (NodeKind::Array { children }, PathStep::Index(i)) => {
                    children.iter().find(|(c, _)| c == i).map(|(_, n)| *n)
                }
                _ => break, // a conflicting path
            };
            let next = match existing {
                Some(n) if !last && !matches!(nodes[n].kind, NodeKind::Column(_)) => n,
                Some(_) => break, // a conflicting path
                None => {
                    let n = nodes.len();
                    nodes.push(Node {
                        kind,
                        stamp: 0,
                        at: path_text(&steps[..=depth]),
                        first_column: column,
                    });
                    match (&mut nodes[at].kind, step) {
                        (NodeKind::Object { children, .. }, PathStep::Key(k)) => {
                            children.push((k.clone(), n))
                        }
                        (NodeKind::Array { children }, PathStep::Index(i)) => {
                            children.push((*i, n))
                        }
                        _ => unreachable!("invariant: the kind was matched above"),
                    }
                    n
                }
            };
            at = next;
        }
    }
    nodes
}

fn object() -> NodeKind {
    NodeKind::Object {
        children: Vec::new(),
        unknown: UnknownKeys::default(),
        next: 0,
    }
}

/// The undeclared keys of one object, in one buffer.
#[derive(Default)]
pub struct UnknownKeys {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl UnknownKeys {
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }

    /// Record `key`; false when the object had it already.
    pub fn insert(&mut self, key: &str) -> bool {
        let mut start = 0;
        for &end in &self.ends {
            if &self.bytes[start..end] == key.as_bytes() {
                return false;
            }
            start = end;
        }
        self.bytes.extend_from_slice(key.as_bytes());
        self.ends.push(self.bytes.len());
        true
    }
}
