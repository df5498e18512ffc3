//! Base64 with the standard alphabet and `=` padding (RFC 4648 §4): the raw bytes that
//! dead-letter records carry, and the values of `binary` fields in JSON events.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// `bytes` as padded standard base64.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let sextet = |shift: u32| char::from(ALPHABET[((n >> shift) & 63) as usize]);
        out.push(sextet(18));
        out.push(sextet(12));
        out.push(if chunk.len() > 1 { sextet(6) } else { '=' });
        out.push(if chunk.len() > 2 { sextet(0) } else { '=' });
    }
    out
}

fn value(c: u8) -> Option<u32> {
    let v = match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    };
    Some(u32::from(v))
}

/// Decode padded standard base64. Strict: the length must be a multiple of 4, padding only at
/// the end, no white space, and unused trailing bits zero (so every input has one encoding).
pub fn decode(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    decode_into(text, &mut out)?;
    Ok(out)
}

/// [`decode`], appending the bytes to `out`; on an error `out` is left as it was.
pub fn decode_into(text: &str, out: &mut Vec<u8>) -> Result<(), String> {
    let start = out.len();
    let result = append(text, out);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn append(text: &str, out: &mut Vec<u8>) -> Result<(), String> {
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return Err(format!(
            "base64 length {} is not a multiple of 4",
            bytes.len()
        ));
    }
    out.reserve(bytes.len() / 4 * 3);
    let groups = bytes.len() / 4;
    for (g, quad) in bytes.chunks(4).enumerate() {
        let last = g + 1 == groups;
        let pad = quad.iter().rev().take_while(|c| **c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return Err(format!("misplaced '=' padding in group {g}"));
        }
        let mut n = 0u32;
        for (i, c) in quad[..4 - pad].iter().enumerate() {
            let v = value(*c).ok_or_else(|| {
                format!(
                    "invalid base64 character {:?} at position {}",
                    char::from(*c),
                    g * 4 + i
                )
            })?;
            n |= v << (18 - 6 * i);
        }
        let [_, b0, b1, b2] = n.to_be_bytes();
        match pad {
            0 => out.extend_from_slice(&[b0, b1, b2]),
            1 if b2 == 0 => out.extend_from_slice(&[b0, b1]),
            2 if b1 == 0 && b2 == 0 => out.push(b0),
            _ => return Err(format!("non-zero padding bits in the last group {g}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn encodes_the_rfc_4648_test_vectors() {
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in vectors {
            assert_eq!(encode(plain.as_bytes()), encoded);
            assert_eq!(decode(encoded).unwrap(), plain.as_bytes());
        }
        assert_eq!(encode(&[0xff, 0xfe, 0x00]), "//4A");
    }

    #[test]
    fn rejects_malformed_input_with_a_reason() {
        for bad in [
            "Zg=",
            "Zg=a",
            "Z===",
            "Zm9v=Zm9",
            "Zm9v Zg==",
            "Zh==",
            "Zm9=",
            "é===",
        ] {
            assert!(decode(bad).is_err(), "{bad:?} should not decode");
        }
        assert!(decode("Zm*v").unwrap_err().contains("position 2"));
    }

    #[test]
    fn a_failed_decode_into_leaves_the_buffer_as_it_was() {
        let mut out = b"ab".to_vec();
        assert!(decode_into("Zm9vZm9=", &mut out).is_err());
        assert_eq!(out, b"ab");
        decode_into("Zm8=", &mut out).unwrap();
        assert_eq!(out, b"abfo");
    }

    proptest! {
        #[test]
        fn any_bytes_round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let text = encode(&bytes);
            prop_assert_eq!(text.len() % 4, 0);
            prop_assert_eq!(decode(&text).unwrap(), bytes);
        }

        #[test]
        fn decode_never_panics_on_arbitrary_text(text in "\\PC{0,40}") {
            let _ = decode(&text);
        }
    }
}
