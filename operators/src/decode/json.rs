//! A JSON reader for one message: the object's keys and values as the decoder needs them.
//!
//! It is our own so that a number reaches the decode rules as the text it was written as
//! (`3.0`, `9007199254740993.0`, `1e3`): whether it fits an integer exactly, and the float it
//! is (correctly rounded by `str::parse`), are decided from that text, never from a float
//! the parser has already rounded. It follows RFC 8259: UTF-8, no trailing commas, no
//! comments, numbers by the JSON grammar, `\u` escapes with surrogate pairs. Nested values
//! are checked and skipped without recursion.

use std::borrow::Cow;

/// Where and why a payload is not JSON (or not the object the decoder reads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub message: String,
}

type Result<T> = std::result::Result<T, SyntaxError>;

/// One value, as far as the decoder looks into it.
#[derive(Debug, Clone, PartialEq)]
pub enum Token<'a> {
    Null,
    Bool(bool),
    /// A number, as written (it follows the JSON number grammar).
    Number(&'a str),
    Str(Cow<'a, str>),
    /// An object, read to its end (it is valid JSON).
    Object,
    /// An array, read to its end (it is valid JSON).
    Array,
}

/// A cursor over one payload.
pub struct Reader<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    /// Open containers while skipping a nested value.
    stack: Vec<u8>,
}

impl<'a> Reader<'a> {
    /// A reader of `payload`, which must be UTF-8.
    pub fn new(payload: &'a [u8]) -> Result<Self> {
        let text = std::str::from_utf8(payload).map_err(|e| SyntaxError {
            message: format!("not UTF-8 at byte {}", e.valid_up_to()),
        })?;
        Ok(Self {
            text,
            bytes: payload,
            pos: 0,
            stack: Vec::new(),
        })
    }

    fn err<T>(&self, what: &str) -> Result<T> {
        let found = match self.bytes.get(self.pos) {
            None => "the end".to_string(),
            Some(b) if b.is_ascii_graphic() => format!("`{}`", *b as char),
            Some(b) => format!("byte 0x{b:02x}"),
        };
        Err(SyntaxError {
            message: format!("expected {what} at byte {}, found {found}", self.pos),
        })
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    /// The first byte of the payload after white space, without consuming it.
    pub fn first(&mut self) -> Option<u8> {
        self.skip_ws();
        self.peek()
    }

    /// `{`, then whether the object is empty (`}` consumed).
    pub fn begin_object(&mut self) -> Result<bool> {
        self.skip_ws();
        if self.peek() != Some(b'{') {
            return self.err("`{`");
        }
        self.pos += 1;
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(true);
        }
        Ok(false)
    }

    /// A key and its `:`.
    pub fn key(&mut self) -> Result<Cow<'a, str>> {
        self.skip_ws();
        if self.peek() != Some(b'"') {
            return self.err("a key (a string)");
        }
        let key = self.string()?;
        self.skip_ws();
        if self.peek() != Some(b':') {
            return self.err("`:` after a key");
        }
        self.pos += 1;
        Ok(key)
    }

    /// After a value: true when another key follows (`,` consumed), false at `}`.
    pub fn next_member(&mut self) -> Result<bool> {
        self.skip_ws();
        match self.peek() {
            Some(b',') => {
                self.pos += 1;
                Ok(true)
            }
            Some(b'}') => {
                self.pos += 1;
                Ok(false)
            }
            _ => self.err("`,` or `}` after a value"),
        }
    }

    /// `[`, then whether the array is empty (`]` consumed).
    pub fn begin_array(&mut self) -> Result<bool> {
        self.skip_ws();
        if self.peek() != Some(b'[') {
            return self.err("`[`");
        }
        self.pos += 1;
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(true);
        }
        Ok(false)
    }

    /// After an element: true when another follows (`,` consumed), false at `]`.
    pub fn next_element(&mut self) -> Result<bool> {
        self.skip_ws();
        match self.peek() {
            Some(b',') => {
                self.pos += 1;
                Ok(true)
            }
            Some(b']') => {
                self.pos += 1;
                Ok(false)
            }
            _ => self.err("`,` or `]` after an element"),
        }
    }

    /// Nothing but white space is left.
    pub fn end(&mut self) -> Result<()> {
        self.skip_ws();
        if self.pos < self.bytes.len() {
            return self.err("the end of the payload (one JSON value per message)");
        }
        Ok(())
    }

    /// One value; a nested object or array is read to its end and returned as such.
    pub fn value(&mut self) -> Result<Token<'a>> {
        self.skip_ws();
        match self.peek() {
            Some(b'"') => Ok(Token::Str(self.string()?)),
            Some(b'-' | b'0'..=b'9') => Ok(Token::Number(self.number()?)),
            Some(b't') => self.literal("true", Token::Bool(true)),
            Some(b'f') => self.literal("false", Token::Bool(false)),
            Some(b'n') => self.literal("null", Token::Null),
            Some(b'{') => {
                self.skip_nested()?;
                Ok(Token::Object)
            }
            Some(b'[') => {
                self.skip_nested()?;
                Ok(Token::Array)
            }
            _ => self.err("a value"),
        }
    }

    fn literal(&mut self, word: &str, token: Token<'a>) -> Result<Token<'a>> {
        if self.bytes[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(token)
        } else {
            self.err(&format!("`{word}`"))
        }
    }

    /// A number by the JSON grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn number(&mut self) -> Result<&'a str> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return self.err("a digit"),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return self.err("a digit after `.`");
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return self.err("a digit in the exponent");
            }
            self.digits();
        }
        let text = self.text;
        Ok(&text[start..self.pos])
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
    }

    /// A string (at its `"`), unescaped; borrowed when it has no escapes.
    fn string(&mut self) -> Result<Cow<'a, str>> {
        self.pos += 1;
        let start = self.pos;
        let mut owned: Option<String> = None;
        let mut chunk = start;
        loop {
            match self.peek() {
                None => return self.err("`\"` closing the string"),
                Some(b'"') => {
                    let text = self.text;
                    let tail = &text[chunk..self.pos];
                    self.pos += 1;
                    return Ok(match owned {
                        None => Cow::Borrowed(tail),
                        Some(mut s) => {
                            s.push_str(tail);
                            Cow::Owned(s)
                        }
                    });
                }
                Some(b'\\') => {
                    let s = owned.get_or_insert_with(String::new);
                    s.push_str(&self.text[chunk..self.pos]);
                    self.pos += 1;
                    let c = match self.peek() {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => {
                            self.pos += 1;
                            s.push(self.unicode_escape()?);
                            chunk = self.pos;
                            continue;
                        }
                        _ => return self.err("an escape (one of \"\\/bfnrtu)"),
                    };
                    s.push(c);
                    self.pos += 1;
                    chunk = self.pos;
                }
                Some(0..=0x1f) => return self.err("no control character in a string"),
                Some(_) => self.pos += 1,
            }
        }
    }

    /// The character of `XXXX` (after `\u`), with its low surrogate when it is a high one.
    fn unicode_escape(&mut self) -> Result<char> {
        let high = self.hex4()?;
        let code = match high {
            0xD800..=0xDBFF => {
                if !self.bytes[self.pos..].starts_with(b"\\u") {
                    return self.err("`\\u` with a low surrogate after a high one");
                }
                self.pos += 2;
                let low = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&low) {
                    return self.err("a low surrogate (DC00 to DFFF)");
                }
                0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)
            }
            0xDC00..=0xDFFF => return self.err("a high surrogate before a low one"),
            c => c,
        };
        char::from_u32(code).map_or_else(|| self.err("a Unicode scalar value"), Ok)
    }

    fn hex4(&mut self) -> Result<u32> {
        let digits = self.bytes.get(self.pos..self.pos + 4);
        let value = digits
            .filter(|d| d.iter().all(u8::is_ascii_hexdigit))
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u32::from_str_radix(d, 16).ok());
        match value {
            Some(v) => {
                self.pos += 4;
                Ok(v)
            }
            None => self.err("four hex digits"),
        }
    }

    /// An object or array (at its `{` or `[`), checked to its end, iteratively.
    fn skip_nested(&mut self) -> Result<()> {
        self.stack.clear();
        loop {
            // At the start of a value, or of a container's first member.
            self.skip_ws();
            match self.peek() {
                Some(open @ (b'{' | b'[')) => {
                    self.pos += 1;
                    self.skip_ws();
                    let close = if open == b'{' { b'}' } else { b']' };
                    if self.peek() == Some(close) {
                        self.pos += 1;
                    } else {
                        self.stack.push(close);
                        if close == b'}' {
                            self.key()?;
                        }
                        continue;
                    }
                }
                _ => {
                    self.value()?;
                }
            }
            // After a value: a separator, or the end of containers.
            loop {
                let Some(&close) = self.stack.last() else {
                    return Ok(());
                };
                self.skip_ws();
                match self.peek() {
                    Some(b',') => {
                        self.pos += 1;
                        if close == b'}' {
                            self.key()?;
                        }
                        break;
                    }
                    Some(b) if b == close => {
                        self.pos += 1;
                        self.stack.pop();
                    }
                    _ if close == b'}' => return self.err("`,` or `}` in an object"),
                    _ => return self.err("`,` or `]` in an array"),
                }
            }
        }
    }
}

/// Whether `s` is a whole JSON number, nothing around it.
pub fn is_number(s: &str) -> bool {
    let mut r = Reader {
        text: s,
        bytes: s.as_bytes(),
        pos: 0,
        stack: Vec::new(),
    };
    matches!(r.peek(), Some(b'-' | b'0'..=b'9')) && r.number().is_ok() && r.pos == s.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Whether the whole payload is one valid JSON value, by this reader.
    fn valid(payload: &[u8]) -> bool {
        let Ok(mut r) = Reader::new(payload) else {
            return false;
        };
        r.value().is_ok() && r.end().is_ok()
    }

    #[test]
    fn strings_are_unescaped_and_borrowed_without_escapes() {
        let mut r = Reader::new(br#""abc" "a\"b\\c\/\n\u00e9\ud83d\ude00""#).unwrap();
        assert_eq!(r.value().unwrap(), Token::Str(Cow::Borrowed("abc")));
        assert_eq!(
            r.value().unwrap(),
            Token::Str(Cow::Owned("a\"b\\c/\n\u{e9}\u{1f600}".into()))
        );
    }

    #[test]
    fn numbers_keep_their_text() {
        let mut r = Reader::new(b"[-0.50e+3, 9007199254740993.0]").unwrap();
        assert_eq!(r.value().unwrap(), Token::Array);
        for n in ["-0.50e+3", "9007199254740993.0", "0", "-12"] {
            assert_eq!(
                Reader::new(n.as_bytes()).unwrap().value().unwrap(),
                Token::Number(n)
            );
        }
    }

    #[test]
    fn what_rfc_8259_refuses_is_refused() {
        for bad in [
            "01",
            "1.",
            ".5",
            "-",
            "1e",
            "+1",
            "[1,]",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "{1:2}",
            "\"\\x\"",
            "\"\\ud800\"",
            "\"\\udc00\"",
            "\"a\u{1}\"",
            "tru",
            "nul",
            "[1 2]",
            "{\"a\":[}",
            "NaN",
            "Infinity",
            "[",
            "\"abc",
        ] {
            assert!(!valid(bad.as_bytes()), "{bad:?} accepted");
        }
        assert!(!valid(b"\"\xff\""));
    }

    /// serde_json's verdict, made as strict as ours about UTF-8 (it does not check the bytes
    /// of a string it skips) and as lenient about numbers beyond f64 (their range is the
    /// decode rules' business, not syntax).
    fn serde_oracle(bytes: &[u8]) -> bool {
        std::str::from_utf8(bytes).is_ok()
            && serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(|n| n.into()),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| f.into()),
            ".*".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
                proptest::collection::btree_map(".{0,4}", inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn agrees_with_serde_json_on_what_is_valid_json(bytes in proptest::collection::vec(any::<u8>(), 0..24)) {
            let ours = valid(&bytes);
            let theirs = serde_oracle(&bytes);
            prop_assert_eq!(ours, theirs, "{:?}", String::from_utf8_lossy(&bytes));
        }

        #[test]
        fn agrees_with_serde_json_on_mutated_json(v in json_value(), cut in any::<prop::sample::Index>(), insert in proptest::sample::select(vec!["", ",", "]", "}", "\"", "\\", ":", "1", "-", "e", " "])) {
            let text = serde_json::to_string(&v).unwrap();
            prop_assert!(valid(text.as_bytes()), "{}", text);
            let mut mutated = text.into_bytes();
            let at = cut.index(mutated.len() + 1);
            mutated.splice(at..at, insert.bytes());
            let ours = valid(&mutated);
            let theirs = serde_oracle(&mutated);
            prop_assert_eq!(ours, theirs, "{:?}", String::from_utf8_lossy(&mutated));
        }

        #[test]
        fn strings_read_back_as_serde_json_writes_them(s in ".*") {
            let text = serde_json::to_string(&s).unwrap();
            let mut r = Reader::new(text.as_bytes()).unwrap();
            prop_assert_eq!(r.value().unwrap(), Token::Str(Cow::Owned(s)));
        }
    }
}
