//! The records of an invocation's body, found without reading them.
//!
//! serde_json hands a record over as a raw slice only after skimming it
//! whole, and the mapping then reads it again: that skim was a fifth of
//! the function's instructions per event. Here only the body's outer
//! object is read; each record's extent is found from its strings and
//! brackets (matched by kind), and the mapping's read of the record checks
//! the rest of its grammar. A body with anything unexpected in its outer
//! object (an escaped or repeated key, junk between records, text after
//! it) is left to serde_json, which says why it is not a batch; so is a
//! body with a value nested deeper than 64 levels, which serde_json reads
//! alike.

/// The batch's parts, as slices of the body.
#[derive(Debug, PartialEq)]
pub(crate) struct Split<'a> {
    pub records: Vec<&'a str>,
    /// The `target` value's text, when there is one.
    pub target: Option<&'a str>,
}

/// The parts of `body`, a JSON object with a `Records` array, or `None`
/// for a body this reading does not take.
pub(crate) fn split(body: &str) -> Option<Split<'_>> {
    let mut scan = Scan { text: body, at: 0 };
    scan.eat(b'{')?;
    let (mut records, mut target) = (None, None);
    scan.space();
    if scan.peek()? == b'}' {
        return None; // no Records
    }
    loop {
        let key = scan.plain_string()?;
        scan.eat(b':')?;
        match key {
            "Records" if records.is_none() => records = Some(scan.records()?),
            "target" if target.is_none() => target = Some(scan.value()?),
            "Records" | "target" => return None,
            _ => {
                scan.value()?;
            }
        }
        scan.space();
        match scan.peek()? {
            b',' => scan.at += 1,
            b'}' => {
                scan.at += 1;
                break;
            }
            _ => return None,
        }
    }
    scan.space();
    (scan.at == body.len()).then_some(())?;
    Some(Split {
        records: records?,
        target,
    })
}

struct Scan<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Scan<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            self.at += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        self.space();
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// A string without escapes (a key of the outer object), its contents.
    fn plain_string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.at;
        // At a backslash, the quote expected next is missing.
        self.at = string_stop(self.text.as_bytes(), start)?;
        let end = self.at;
        self.eat(b'"')?;
        self.text.get(start..end)
    }

    /// Past the string whose opening quote is at `self.at`.
    fn skip_string(&mut self) -> Option<()> {
        self.at = string_end(self.text.as_bytes(), self.at + 1)?;
        Some(())
    }

    /// The `Records` array's values.
    fn records(&mut self) -> Option<Vec<&'a str>> {
        self.eat(b'[')?;
        let mut records = Vec::new();
        self.space();
        if self.peek()? == b']' {
            self.at += 1;
            return Some(records);
        }
        loop {
            records.push(self.value()?);
            self.space();
            match self.peek()? {
                b',' => self.at += 1,
                b']' => {
                    self.at += 1;
                    return Some(records);
                }
                _ => return None,
            }
        }
    }

    /// The text of the value that starts here (after whitespace).
    fn value(&mut self) -> Option<&'a str> {
        self.space();
        let start = self.at;
        let bytes = self.text.as_bytes();
        match self.peek()? {
            b'"' => self.skip_string()?,
            b'{' | b'[' => self.at = nested_end(bytes, self.at)?,
            _ => {
                // A number or a literal; the record's read checks which.
                while self
                    .peek()
                    .is_some_and(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
                {
                    self.at += 1;
                }
                (self.at > start).then_some(())?;
            }
        }
        self.text.get(start..self.at)
    }
}

/// Where the object or array opening at `bytes[at]` ends: strings
/// skipped, brackets matched by kind. The kinds of the open brackets are a
/// stack of bits in a word (1 for `[`), so nothing is stored per level;
/// deeper than [`MAX_DEPTH`] is left to serde_json (`None`), as is anything
/// unmatched. One tight loop: this is a pass over every byte of the body.
fn nested_end(bytes: &[u8], mut at: usize) -> Option<usize> {
    let (mut kinds, mut depth) = (0u64, 0u32);
    loop {
        let byte = *bytes.get(at)?;
        at += 1;
        match byte {
            b'"' => at = string_end(bytes, at)?,
            b'{' | b'[' => {
                if depth == MAX_DEPTH {
                    return None;
                }
                kinds = kinds << 1 | u64::from(byte == b'[');
                depth += 1;
            }
            b'}' | b']' => {
                // Underflow cannot happen: the first byte opens.
                if kinds & 1 != u64::from(byte == b']') {
                    return None;
                }
                kinds >>= 1;
                depth -= 1;
                if depth == 0 {
                    return Some(at);
                }
            }
            _ => {}
        }
    }
}

/// Past the string whose contents start at `bytes[at]`.
fn string_end(bytes: &[u8], mut at: usize) -> Option<usize> {
    loop {
        at = string_stop(bytes, at)?;
        if bytes[at] == b'"' {
            return Some(at + 1);
        }
        at += 2; // the backslash and the byte it escapes
    }
}

/// The first quote or backslash at or after `at`: eight bytes at a time
/// (a string's contents are most of a body), then one at a time.
fn string_stop(bytes: &[u8], mut at: usize) -> Option<usize> {
    const ONES: u64 = u64::MAX / 255;
    const HIGH: u64 = ONES << 7;
    // The top bit of each byte of `word` equal to `byte`, exactly.
    let equal = |word: u64, byte: u8| {
        let x = word ^ (ONES * u64::from(byte));
        !(((x & !HIGH) + !HIGH) | x) & HIGH
    };
    while let Some(chunk) = bytes.get(at..).and_then(<[u8]>::first_chunk::<8>) {
        let word = u64::from_le_bytes(*chunk);
        let stops = equal(word, b'"') | equal(word, b'\\');
        if stops != 0 {
            return Some(at + stops.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    // Fewer than eight bytes left.
    let rest = bytes.get(at..)?;
    Some(at + rest.iter().position(|&b| b == b'"' || b == b'\\')?)
}

/// How deep [`nested_end`] follows a value: the bits of its stack.
const MAX_DEPTH: u32 = u64::BITS;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    /// What serde_json makes of a body: its records' raw slices and the
    /// target's, or nothing when it is not a batch.
    fn by_serde(body: &str) -> Option<Split<'_>> {
        #[derive(serde::Deserialize)]
        struct Batch<'a> {
            #[serde(rename = "Records", borrow)]
            records: Vec<&'a RawValue>,
            #[serde(borrow)]
            target: Option<&'a RawValue>,
        }
        let batch: Batch<'_> = serde_json::from_str(body).ok()?;
        Some(Split {
            records: batch.records.into_iter().map(RawValue::get).collect(),
            target: batch.target.map(RawValue::get),
        })
    }

    #[test]
    fn a_body_splits_as_serde_json_splits_it_or_is_left_to_it() {
        let bodies = [
            r#"{"Records":[]}"#,
            " { \"Records\" : [ {\"a\":1} ,\n\t[2, {\"b\":\"]}\\\"[\"}], \"x\", 3.5e1, true, null ] } ",
            r#"{"target":{"queue":"q"},"Records":[{"s":"\\"},{"t":"\\\"}"}]}"#,
            r#"{"other":{"Records":[1]},"Records":[{"k":[{}]}],"more":[]}"#,
            r#"{"Records":[{"é😀":"\u00e9"}]}"#,
        ];
        let taken_alike = |body: &str| {
            let split = split(body);
            assert!(split.is_some(), "{body}");
            assert_eq!(split, by_serde(body), "{body}");
        };
        for body in bodies {
            taken_alike(body);
        }
        // An escaped quote or backslash at every offset of a string, in
        // its first word of eight bytes and past it.
        for pad in 0..40 {
            let x = "x".repeat(pad);
            for body in [
                format!(r#"{{"Records":[{{"k":"{x}\"]}}"}},{{"{x}\\":["\\\""]}}]}}"#),
                format!(r#"{{"Records":[["{x}\\","\"{x}"],"{x}\""]}}"#),
            ] {
                taken_alike(&body);
            }
        }
        // Left to serde_json, which refuses each.
        for body in [
            "",
            "[]",
            r#""Records""#,
            r#"{}"#,
            r#"{"Records":[],"Records":[]}"#,
            r#"{"Records":[{"a":[1}]}"#,
            r#"{"Records":[[1}],"x":[{]]}"#,
            r#"{"Records":[{"a":"}]}"#,
            r#"{"Records":[1 2]}"#,
            r#"{"Records":[,]}"#,
            r#"{"Records":[]} x"#,
            r#"{"Records":"s"}"#,
            r#"{"Records":[]"#,
        ] {
            assert_eq!(split(body), None, "{body}");
            assert_eq!(by_serde(body), None, "{body}");
        }
        // Nested as deep as the split follows, and deeper: left to
        // serde_json, which takes it.
        let nested = |depth: usize| {
            format!(
                r#"{{"Records":[{}1{}]}}"#,
                "[".repeat(depth),
                "]".repeat(depth)
            )
        };
        assert_eq!(split(&nested(64)), by_serde(&nested(64)));
        assert!(split(&nested(64)).is_some());
        assert_eq!(split(&nested(65)), None);
        assert!(by_serde(&nested(65)).is_some());
        // 65 levels closed by the wrong kind at the bottom, which a stack
        // of 64 bits would have lost.
        let lost = format!(
            r#"{{"Records":[[{}1{}}}]}}"#,
            "[".repeat(64),
            "]".repeat(64)
        );
        assert_eq!(split(&lost), None);
        assert_eq!(by_serde(&lost), None);
        // Left to serde_json, which takes it: an escaped key.
        let body = r#"{"Rec\u006frds":[{"a":1}]}"#;
        assert_eq!(split(body), None);
        assert!(by_serde(body).is_some());
    }

    /// Generated bodies of records full of what could mislead a bracket
    /// counter (brackets, quotes and backslashes inside strings, escapes,
    /// deep nesting, non-ASCII) split exactly as serde_json splits them.
    /// Seeded (`EF_SEED`); a failure prints the seed and the body.
    #[test]
    fn generated_bodies_split_as_serde_json_splits_them() {
        fn value(rng: &mut fastrand::Rng, depth: u32) -> serde_json::Value {
            use serde_json::{Value, json};
            const PIECES: &[&str] = &["]", "}", "[", "{", "\"", "\\", "\\\"", "é", "😀", ",", ":"];
            match rng.u8(..8) {
                _ if depth > 6 => json!(null),
                0 => json!(rng.f64() * 1e6),
                1 => json!(rng.bool()),
                2 | 3 => Value::String(
                    (0..rng.usize(..6))
                        .map(|_| PIECES[rng.usize(..PIECES.len())])
                        .collect(),
                ),
                4 | 5 => Value::Array((0..rng.usize(..4)).map(|_| value(rng, depth + 1)).collect()),
                _ => Value::Object(
                    (0..rng.usize(..4))
                        .map(|i| (format!("k{i}]}}\""), value(rng, depth + 1)))
                        .collect(),
                ),
            }
        }
        let (seed, mut rng) = crate::test_rng();
        for _ in 0..500 {
            let records: Vec<serde_json::Value> =
                (0..rng.usize(..6)).map(|_| value(&mut rng, 0)).collect();
            let batch = serde_json::json!({"x": value(&mut rng, 3), "Records": records});
            let body = if rng.bool() {
                serde_json::to_string_pretty(&batch).unwrap()
            } else {
                serde_json::to_string(&batch).unwrap()
            };
            assert_eq!(split(&body), by_serde(&body), "EF_SEED={seed}: {body}");
        }
    }
}
