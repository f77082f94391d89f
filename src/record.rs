//! A DynamoDB stream record read in place from the JSON text the event
//! source mapping sent, and the DynamoDB-JSON to plain-JSON transcoder.
//!
//! Nothing is copied that need not be: strings borrow from the text, item
//! attributes stay raw JSON until the mapping asks for one, and a payload is
//! transcoded in the order the record holds it (so the same record always
//! gives the same bytes, without sorting), while the record is read when
//! the mapping allows it ([`read_transcoding`]): the text is read as few
//! times as it can be, which is most of the function's CPU per event.
//! Numbers are copied as the decimal text DynamoDB sent, never through a
//! float; binaries stay the base64 text they arrive as.

use std::{borrow::Cow, fmt, ops::Deref};

use serde::{
    Deserialize, Deserializer,
    de::{self, DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor},
};
use serde_json::value::RawValue;

/// A string that borrows from the record text unless it had escapes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Text<'a>(pub Cow<'a, str>);

impl Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// The `eventSource` of the records `forwarder-ops backfill` builds from the
/// table: not a change the stream saw, but an item as it is now.
pub const BACKFILL_SOURCE: &str = "event-forwarder:backfill";

/// The fields of a stream record the forwarder reads.
#[derive(Debug, Deserialize)]
pub struct Record<'a> {
    #[serde(rename = "eventID", borrow, default)]
    pub event_id: Option<Text<'a>>,
    #[serde(rename = "eventName", borrow, default)]
    pub event_name: Option<Text<'a>>,
    /// `aws:dynamodb`, or [`BACKFILL_SOURCE`] for a record a backfill made.
    #[serde(rename = "eventSource", borrow, default)]
    pub event_source: Option<Text<'a>>,
    #[serde(rename = "eventSourceARN", borrow, default)]
    pub event_source_arn: Option<Text<'a>>,
    #[serde(rename = "tableName", borrow, default)]
    pub table_name: Option<Text<'a>>,
    #[serde(rename = "userIdentity", borrow, default)]
    pub user_identity: Option<UserIdentity<'a>>,
    #[serde(borrow)]
    pub dynamodb: Stream<'a>,
}

#[derive(Debug, Deserialize)]
pub struct UserIdentity<'a> {
    #[serde(rename = "principalId", borrow, default)]
    pub principal_id: Option<Text<'a>>,
}

/// The `dynamodb` part of a record.
#[derive(Debug, Deserialize)]
pub struct Stream<'a> {
    /// Epoch seconds, possibly with a fraction.
    #[serde(rename = "ApproximateCreationDateTime", default)]
    pub approximate_creation: Option<f64>,
    #[serde(rename = "Keys", borrow, default)]
    pub keys: Option<Image<'a>>,
    #[serde(rename = "NewImage", borrow, default, deserialize_with = "new_image")]
    pub new_image: Option<Image<'a>>,
    #[serde(rename = "OldImage", borrow, default)]
    pub old_image: Option<Image<'a>>,
    #[serde(rename = "SequenceNumber", borrow, default)]
    pub sequence_number: Option<Text<'a>>,
}

/// An item: attribute names and their raw DynamoDB-JSON values, in the
/// order of the record; and, in a NewImage read by [`read_transcoding`],
/// its payload attribute, transcoded as it was read.
#[derive(Debug, Default)]
pub struct Image<'a>(
    pub Vec<(Text<'a>, &'a RawValue)>,
    pub Option<Transcoded<'a>>,
);

/// The payload attribute of a NewImage read by [`read_transcoding`]. Its
/// entry in the image holds `null`, which no reader takes for an attribute.
#[derive(Debug)]
pub enum Transcoded<'a> {
    /// An `M`: its map as plain JSON, the bytes [`write_nested`] writes.
    Map(Vec<u8>),
    /// Any other attribute value, read as [`Attr::parse`] reads it.
    Other(Attr<'a>),
}

impl<'a> Image<'a> {
    pub fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.0.iter().find(|(n, _)| **n == *name).map(|(_, v)| *v)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Image<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(ImageVisitor { payload: None })
    }
}

struct ImageVisitor<'n> {
    /// The attribute to transcode as it is read, if any.
    payload: Option<&'n str>,
}

impl<'de> Visitor<'de> for ImageVisitor<'_> {
    type Value = Image<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map of attributes")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(map.size_hint().unwrap_or(8));
        let mut payload = None;
        while let Some(name) = map.next_key::<Text<'de>>()? {
            // A repeated name is read as any other attribute: readers take
            // an image's first.
            if payload.is_none() && self.payload.is_some_and(|p| *name == *p) {
                payload = Some(map.next_value_seed(PayloadSeed)?);
                out.push((name, RawValue::NULL));
            } else {
                out.push((name, map.next_value()?));
            }
        }
        Ok(Image(out, payload))
    }
}

thread_local! {
    /// The payload attribute [`read_transcoding`] is reading a record for;
    /// empty the rest of the time. serde's derive passes no state to a
    /// field's deserializer, and the record's other fields keep theirs.
    static TRANSCODING: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Reads a record as its `Deserialize` does, and transcodes its NewImage's
/// attribute `payload` as it goes (the image's [`Transcoded`]): the payload, most
/// of a record's text, is then read once instead of skimmed, then read
/// again to be written. A record the plain read takes may fail here (a
/// payload that does not transcode): read it again the plain way for why.
pub fn read_transcoding<'a>(raw: &'a str, payload: &str) -> serde_json::Result<Record<'a>> {
    struct Clear;
    impl Drop for Clear {
        fn drop(&mut self) {
            TRANSCODING.with_borrow_mut(String::clear);
        }
    }
    TRANSCODING.with_borrow_mut(|name| {
        name.clear();
        name.push_str(payload);
    });
    let _clear = Clear;
    let mut de = serde_json::Deserializer::from_str(raw);
    Record::deserialize(&mut de)
}

/// `NewImage`: an image, its payload transcoded while [`read_transcoding`]
/// reads the record.
fn new_image<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Image<'de>>, D::Error> {
    struct Present<'n>(&'n str);
    impl<'de> Visitor<'de> for Present<'_> {
        type Value = Option<Image<'de>>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map of attributes or null")
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(ImageVisitor {
                payload: Some(self.0),
            })
            .map(Some)
        }
    }
    TRANSCODING.with_borrow(|payload| {
        if payload.is_empty() {
            Option::<Image<'de>>::deserialize(d)
        } else {
            d.deserialize_option(Present(payload))
        }
    })
}

/// The payload attribute's value: an `M` transcoded, anything else read.
struct PayloadSeed;

impl<'de> DeserializeSeed<'de> for PayloadSeed {
    type Value = Transcoded<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for PayloadSeed {
    type Value = Transcoded<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a DynamoDB attribute value")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        one_member(map, |tag, map| {
            if tag != "M" {
                return Ok(Transcoded::Other(attr_value(tag, map)?));
            }
            let mut out = Vec::with_capacity(1024);
            let mut failure = None;
            map.next_value_seed(Writer {
                out: &mut out,
                shape: Shape::Map,
                depth: 1,
                failure: &mut failure,
            })?;
            Ok(Transcoded::Map(out))
        })
    }
}

/// One attribute value, its nested contents left raw.
#[derive(Debug, Clone)]
pub enum Attr<'a> {
    S(Text<'a>),
    N(Text<'a>),
    B(Text<'a>),
    /// `BOOL`: its value is checked, never used (a key or payload is never one).
    Bool,
    Null,
    /// `M`, `L`, `SS`, `NS`, `BS`: the inner JSON text. It is not read
    /// here: whoever writes it checks it, and that nothing follows it.
    Nested(&'static str, &'a str),
}

impl Attr<'_> {
    /// The DynamoDB type name, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Attr::S(_) => "S",
            Attr::N(_) => "N",
            Attr::B(_) => "B",
            Attr::Bool => "BOOL",
            Attr::Null => "NULL",
            Attr::Nested(t, _) => t,
        }
    }
}

/// The reason an attribute value is malformed (never its contents).
pub const MALFORMED: &str = "an attribute value is not valid DynamoDB JSON";
/// The reason a number attribute cannot be written as a JSON number.
pub const INVALID_NUMBER: &str = "a number attribute is not a valid decimal number";
/// The reason a number attribute is beyond what DynamoDB can store.
pub const OUT_OF_RANGE: &str =
    "a number attribute is beyond DynamoDB's limits (38 significant digits, 1E-130 to 1E+126)";
/// DynamoDB nests maps and lists at most 32 levels deep.
pub const MAX_NESTING: u32 = 32;
/// The reason a map or list is nested deeper than DynamoDB allows.
pub const TOO_DEEP: &str = "maps and lists are nested more than 32 levels deep";

impl<'a> Attr<'a> {
    /// Reads one attribute value (`{"S": "..."}`, `{"M": {...}}`, ...).
    pub fn parse(raw: &'a RawValue) -> Result<Self, &'static str> {
        match peel(raw.get()) {
            Some((tag, inner)) => Self::tagged(tag, inner),
            // Escapes in the tag, which DynamoDB never writes: serde reads it.
            None => {
                let mut de = serde_json::Deserializer::from_str(raw.get());
                de.deserialize_map(AttrVisitor).map_err(|_| MALFORMED)
            }
        }
    }

    /// The value of `{tag: inner}`. A nested value's text is kept unread:
    /// the payload is the largest part of a record, and reading it here
    /// would read it twice.
    fn tagged(tag: &str, inner: &'a str) -> Result<Self, &'static str> {
        // The common forms read directly; anything else (escapes, a second
        // member, junk) as serde_json reads it, to the same answer.
        let text = || match unescaped(inner) {
            Some(s) => Ok(Text(Cow::Borrowed(s))),
            None => serde_json::from_str::<Text<'a>>(inner).map_err(|_| MALFORMED),
        };
        let flag = || match inner {
            "true" | "false" => Ok(()),
            _ => serde_json::from_str::<bool>(inner)
                .map(drop)
                .map_err(|_| MALFORMED),
        };
        Ok(match tag {
            "S" => Attr::S(text()?),
            "N" => Attr::N(text()?),
            "B" => Attr::B(text()?),
            "BOOL" => flag().map(|_| Attr::Bool)?,
            "NULL" => flag().map(|_| Attr::Null)?,
            "M" => Attr::Nested("M", inner),
            "L" => Attr::Nested("L", inner),
            "SS" => Attr::Nested("SS", inner),
            "NS" => Attr::Nested("NS", inner),
            "BS" => Attr::Nested("BS", inner),
            _ => return Err(MALFORMED),
        })
    }
}

/// The contents of `text` if it is one JSON string without escapes (what
/// serde_json would borrow): no quote, backslash or control character
/// between its quotes.
fn unescaped(text: &str) -> Option<&str> {
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    inner
        .bytes()
        .all(|b| b >= 0x20 && b != b'"' && b != b'\\')
        .then_some(inner)
}

/// The tag and the rest of `{ "TAG" : rest }`, an object already known to
/// be valid JSON, found without reading `rest`: the text between the colon
/// and the closing brace. That is the tag's value only if the object has
/// one member; a second one (`{"S": "a", "N": "1"}`) is left in `rest`,
/// where the parse of a scalar, or the transcoder's check that nothing
/// follows a nested value, refuses it. `None` for a tag with escapes.
fn peel(raw: &str) -> Option<(&str, &str)> {
    let b = raw.as_bytes();
    let space = |c: u8| matches!(c, b' ' | b'\t' | b'\n' | b'\r');
    let skip = |mut i: usize| {
        while b.get(i).is_some_and(|&c| space(c)) {
            i += 1;
        }
        i
    };
    if b.first() != Some(&b'{') {
        return None;
    }
    let start = skip(1);
    if b.get(start) != Some(&b'"') {
        return None;
    }
    let close = start
        + 1
        + b[start + 1..]
            .iter()
            .position(|&c| c == b'"' || c == b'\\')?;
    if b[close] != b'"' {
        return None;
    }
    let colon = skip(close + 1);
    if b.get(colon) != Some(&b':') {
        return None;
    }
    let value = skip(colon + 1);
    let mut end = b.len().checked_sub(1)?;
    if b[end] != b'}' {
        return None;
    }
    while end > value && space(b[end - 1]) {
        end -= 1;
    }
    Some((raw.get(start + 1..close)?, raw.get(value..end)?))
}

struct AttrVisitor;

impl<'de> Visitor<'de> for AttrVisitor {
    type Value = Attr<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a DynamoDB attribute value")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        one_member(map, attr_value)
    }
}

/// An attribute value's one member, `{tag: value}`: its tag, its value as
/// `read` reads it, and nothing after it.
fn one_member<'de, A: MapAccess<'de>, T>(
    mut map: A,
    read: impl FnOnce(&str, &mut A) -> Result<T, A::Error>,
) -> Result<T, A::Error> {
    let tag: Text<'de> = map.next_key()?.ok_or_else(|| A::Error::custom(MALFORMED))?;
    let value = read(&tag, &mut map)?;
    if map.next_key::<de::IgnoredAny>()?.is_some() {
        return Err(A::Error::custom(MALFORMED));
    }
    Ok(value)
}

/// The value of an attribute whose tag was just read.
fn attr_value<'de, A: MapAccess<'de>>(tag: &str, map: &mut A) -> Result<Attr<'de>, A::Error> {
    Ok(match tag {
        "S" => Attr::S(map.next_value()?),
        "N" => Attr::N(map.next_value()?),
        "B" => Attr::B(map.next_value()?),
        "BOOL" => {
            let _: bool = map.next_value()?;
            Attr::Bool
        }
        "NULL" => {
            map.next_value::<bool>()?;
            Attr::Null
        }
        "M" => Attr::Nested("M", map.next_value::<&RawValue>()?.get()),
        "L" => Attr::Nested("L", map.next_value::<&RawValue>()?.get()),
        "SS" => Attr::Nested("SS", map.next_value::<&RawValue>()?.get()),
        "NS" => Attr::Nested("NS", map.next_value::<&RawValue>()?.get()),
        "BS" => Attr::Nested("BS", map.next_value::<&RawValue>()?.get()),
        _ => return Err(A::Error::custom(MALFORMED)),
    })
}

/// Writes a JSON string.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    // Writing to a Vec cannot fail and a &str is always valid.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Writes a string the transcoder read from the record's JSON text. One
/// that serde_json could borrow had no escapes there, and serde_json
/// refuses raw quotes and control characters inside a string, so it holds
/// nothing [`write_str`] would escape: it is copied as it is. One that had
/// escapes was decoded, and is escaped again.
fn write_read(out: &mut Vec<u8>, s: &Text<'_>) {
    match &s.0 {
        Cow::Borrowed(s) => {
            out.reserve(s.len() + 2);
            out.push(b'"');
            out.extend_from_slice(s.as_bytes());
            out.push(b'"');
        }
        Cow::Owned(s) => write_str(out, s),
    }
}

/// The reason a binary attribute is not base64.
pub const INVALID_BINARY: &str = "a binary attribute is not valid base64";

/// Checks that a binary attribute is standard padded base64 (what DynamoDB
/// sends), then writes it as a JSON string: the payload keeps the text.
pub fn write_binary(out: &mut Vec<u8>, b: &str) -> Result<(), &'static str> {
    use base64::Engine;
    // The standard engine is strict: padding and no leftover bits, as a
    // consumer's decoder will be.
    if base64::engine::general_purpose::STANDARD.decode(b).is_err() {
        return Err(INVALID_BINARY);
    }
    let bytes = b.as_bytes();
    // Base64 needs no escaping.
    out.push(b'"');
    out.extend_from_slice(bytes);
    out.push(b'"');
    Ok(())
}

/// Checks that DynamoDB's number text is a JSON number DynamoDB could have
/// stored, then copies it.
pub fn write_number(out: &mut Vec<u8>, n: &str) -> Result<(), &'static str> {
    check_number(n.as_bytes())?;
    out.extend_from_slice(n.as_bytes());
    Ok(())
}

/// DynamoDB's limits: 38 significant digits, magnitude from 1E-130 to
/// 9.99...E+125 (the leading digit's power of ten from -130 to 125).
const MAX_DIGITS: usize = 38;
const MIN_POWER: i64 = -130;
const MAX_POWER: i64 = 125;

/// The JSON number grammar, `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`,
/// within DynamoDB's limits. DynamoDB sends numbers in this form (`19.99`,
/// `1E+125`, `-1E-130`); one beyond its limits cannot come from a table,
/// and could not be read by consumers that parse JSON numbers as doubles
/// (`1E+400` is "number out of range" for serde_json and Infinity for
/// JavaScript), so it is refused rather than published.
fn check_number(b: &[u8]) -> Result<(), &'static str> {
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        start..*i
    };
    let mut i = usize::from(b.first() == Some(&b'-'));
    let int = digits(&mut i);
    if int.is_empty() || (b[int.start] == b'0' && int.len() > 1) {
        return Err(INVALID_NUMBER);
    }
    let mut frac = i..i;
    if b.get(i) == Some(&b'.') {
        i += 1;
        frac = digits(&mut i);
        if frac.is_empty() {
            return Err(INVALID_NUMBER);
        }
    }
    let mut exponent: i64 = 0;
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        let negative = b.get(i) == Some(&b'-');
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let exp = digits(&mut i);
        if exp.is_empty() {
            return Err(INVALID_NUMBER);
        }
        // Saturates: anything past a few digits is out of range anyway.
        let magnitude = b[exp].iter().fold(0i64, |acc, d| {
            acc.saturating_mul(10).saturating_add(i64::from(d - b'0'))
        });
        exponent = if negative { -magnitude } else { magnitude };
    }
    if i != b.len() {
        return Err(INVALID_NUMBER);
    }
    // The significant digits run from the first to the last non-zero digit
    // of the integer and fraction parts together.
    let mantissa = || b[int.clone()].iter().chain(&b[frac.clone()]);
    let Some(first) = mantissa().position(|&d| d != b'0') else {
        return Ok(()); // zero, whatever its exponent
    };
    let trailing_zeros = mantissa().rev().position(|&d| d != b'0').unwrap_or(0);
    let significant = int.len() + frac.len() - trailing_zeros - first;
    if significant > MAX_DIGITS {
        return Err(OUT_OF_RANGE);
    }
    let power = (int.len() as i64 - 1 - first as i64).saturating_add(exponent);
    if !(MIN_POWER..=MAX_POWER).contains(&power) {
        return Err(OUT_OF_RANGE);
    }
    Ok(())
}

/// Writes an attribute value (DynamoDB JSON) as plain JSON.
pub fn write_attr(out: &mut Vec<u8>, raw: &RawValue) -> Result<(), &'static str> {
    transcode(out, raw.get(), Shape::Attr)
}

/// Writes the inner JSON of a nested attribute (`M`, `L`, `SS`, ...):
/// one value, nothing after it.
pub fn write_nested(out: &mut Vec<u8>, tag: &str, raw: &str) -> Result<(), &'static str> {
    let shape = match tag {
        "M" => Shape::Map,
        "L" => Shape::List,
        "SS" => Shape::Strings,
        "BS" => Shape::Binaries,
        "NS" => Shape::Numbers,
        _ => return Err(MALFORMED),
    };
    transcode(out, raw, shape)
}

/// Writes an item as a JSON object, attributes in the record's order.
pub fn write_image(out: &mut Vec<u8>, image: &Image<'_>) -> Result<(), &'static str> {
    out.push(b'{');
    for (i, (name, value)) in image.0.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, name);
        out.push(b':');
        write_attr(out, value)?;
    }
    out.push(b'}');
    Ok(())
}

fn transcode(out: &mut Vec<u8>, raw: &str, shape: Shape) -> Result<(), &'static str> {
    let mut de = serde_json::Deserializer::from_str(raw);
    let mut failure = None;
    let seed = Writer {
        out,
        shape,
        // The value of an M or L attribute is its first level.
        depth: u32::from(!matches!(shape, Shape::Attr)),
        failure: &mut failure,
    };
    match seed.deserialize(&mut de).and_then(|()| de.end()) {
        Ok(()) => Ok(()),
        Err(_) => Err(failure.unwrap_or(MALFORMED)),
    }
}

#[derive(Clone, Copy)]
enum Shape {
    /// `{"S": ...}` and the like.
    Attr,
    /// An `M` value: names to attributes.
    Map,
    /// An `L` value: attributes.
    List,
    /// `SS`: strings.
    Strings,
    /// `BS`: base64 strings.
    Binaries,
    /// `NS`: number strings.
    Numbers,
}

/// Deserializes one value of `shape` and writes it as plain JSON. The
/// reason of a failure is kept apart so that serde's message, which may
/// quote the input, is never shown.
/// Only a forged record nests deeper than DynamoDB's 32 levels, and
/// consumers' parsers have limits of their own (.NET's default is 64).
struct Writer<'o, 'f> {
    out: &'o mut Vec<u8>,
    shape: Shape,
    /// Maps and lists this value is inside of, itself included.
    depth: u32,
    failure: &'f mut Option<&'static str>,
}

impl<'o, 'f> Writer<'o, 'f> {
    fn fail<E: de::Error>(&mut self, reason: &'static str) -> E {
        self.failure.get_or_insert(reason);
        E::custom(reason)
    }

    fn nested(&mut self, shape: Shape) -> Writer<'_, '_> {
        Writer {
            out: self.out,
            shape,
            depth: self.depth + u32::from(matches!(shape, Shape::Map | Shape::List)),
            failure: self.failure,
        }
    }
}

impl<'de> DeserializeSeed<'de> for Writer<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(mut self, d: D) -> Result<(), D::Error> {
        if self.depth > MAX_NESTING {
            return Err(self.fail(TOO_DEEP));
        }
        match self.shape {
            Shape::Attr | Shape::Map => d.deserialize_map(self),
            Shape::List | Shape::Strings | Shape::Binaries | Shape::Numbers => {
                d.deserialize_seq(self)
            }
        }
    }
}

impl<'de> Visitor<'de> for Writer<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DynamoDB JSON")
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        match self.shape {
            Shape::Attr => {
                let Some(tag) = map.next_key::<Text<'de>>()? else {
                    return Err(self.fail(MALFORMED));
                };
                match &*tag {
                    "S" => {
                        let s: Text<'de> = map.next_value()?;
                        write_read(self.out, &s);
                    }
                    "B" => {
                        let b: Text<'de> = map.next_value()?;
                        if let Err(reason) = write_binary(self.out, &b) {
                            return Err(self.fail(reason));
                        }
                    }
                    "N" => {
                        let n: Text<'de> = map.next_value()?;
                        if let Err(reason) = write_number(self.out, &n) {
                            return Err(self.fail(reason));
                        }
                    }
                    "BOOL" => {
                        let b: bool = map.next_value()?;
                        self.out
                            .extend_from_slice(if b { b"true" } else { b"false" });
                    }
                    "NULL" => {
                        map.next_value::<bool>()?;
                        self.out.extend_from_slice(b"null");
                    }
                    "M" => map.next_value_seed(self.nested(Shape::Map))?,
                    "L" => map.next_value_seed(self.nested(Shape::List))?,
                    "SS" => map.next_value_seed(self.nested(Shape::Strings))?,
                    "BS" => map.next_value_seed(self.nested(Shape::Binaries))?,
                    "NS" => map.next_value_seed(self.nested(Shape::Numbers))?,
                    _ => return Err(self.fail(MALFORMED)),
                }
                if map.next_key::<de::IgnoredAny>()?.is_some() {
                    return Err(self.fail(MALFORMED));
                }
                Ok(())
            }
            Shape::Map => {
                self.out.push(b'{');
                let mut first = true;
                while let Some(name) = map.next_key::<Text<'de>>()? {
                    if !first {
                        self.out.push(b',');
                    }
                    first = false;
                    write_read(self.out, &name);
                    self.out.push(b':');
                    map.next_value_seed(self.nested(Shape::Attr))?;
                }
                self.out.push(b'}');
                Ok(())
            }
            _ => Err(self.fail(MALFORMED)),
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        self.out.push(b'[');
        let mut first = true;
        loop {
            let more = match self.shape {
                Shape::List => {
                    let mark = self.out.len();
                    if !first {
                        self.out.push(b',');
                    }
                    let more = seq.next_element_seed(self.nested(Shape::Attr))?.is_some();
                    if !more {
                        self.out.truncate(mark);
                    }
                    more
                }
                Shape::Strings | Shape::Binaries | Shape::Numbers => {
                    match seq.next_element::<Text<'de>>()? {
                        Some(s) => {
                            if !first {
                                self.out.push(b',');
                            }
                            let written = match self.shape {
                                Shape::Numbers => write_number(self.out, &s),
                                Shape::Binaries => write_binary(self.out, &s),
                                _ => {
                                    write_read(self.out, &s);
                                    Ok(())
                                }
                            };
                            if let Err(reason) = written {
                                return Err(self.fail(reason));
                            }
                            true
                        }
                        None => false,
                    }
                }
                _ => return Err(self.fail(MALFORMED)),
            };
            if !more {
                break;
            }
            first = false;
        }
        self.out.push(b']');
        Ok(())
    }
}

/// What kind of error a JSON parse met, for messages that must not quote
/// the input (serde's own message may).
pub fn json_error_kind(e: &serde_json::Error) -> &'static str {
    use serde_json::error::Category;
    match e.classify() {
        Category::Io => "read",
        Category::Syntax => "syntax",
        Category::Data => "data",
        Category::Eof => "truncated",
    }
}

/// What identifies a record, read from its JSON text trusting nothing else
/// in it: a record the mapping refuses (a number beyond f64, nesting past
/// serde_json's limit, a lone surrogate in a name, a field of the wrong
/// type) still names its sequence number and event id. Each field is read
/// on its own and everything else is skipped unparsed, so even a large
/// record costs no allocation beyond the fields; a record cut short keeps
/// the fields that came before the cut.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Identity {
    pub sequence_number: Option<String>,
    pub event_id: Option<String>,
    pub event_source_arn: Option<String>,
    /// ApproximateCreationDateTime, epoch seconds.
    pub created: Option<f64>,
}

impl Identity {
    pub fn read(raw: &str) -> Self {
        let [event_id, arn, stream] = pick(raw, ["eventID", "eventSourceARN", "dynamodb"]);
        let [seq, created] = stream.map_or([None, None], |s| {
            pick(s.get(), ["SequenceNumber", "ApproximateCreationDateTime"])
        });
        let text = |v: Option<&RawValue>| v.and_then(|v| serde_json::from_str(v.get()).ok());
        Self {
            sequence_number: text(seq),
            event_id: text(event_id),
            event_source_arn: text(arn),
            created: created.and_then(|v| serde_json::from_str(v.get()).ok()),
        }
    }
}

/// What names a record in a dead letter too large to carry the record:
/// its event name, keys and size as the record gave them (raw JSON), never
/// its images. Read field by field, so a record that does not parse as a
/// whole still gives what it has.
#[derive(Debug, Default)]
pub struct Reference<'a> {
    pub event_name: Option<&'a RawValue>,
    pub keys: Option<&'a RawValue>,
    pub size_bytes: Option<&'a RawValue>,
}

impl<'a> Reference<'a> {
    pub fn read(raw: &'a str) -> Self {
        let [event_name, stream] = pick(raw, ["eventName", "dynamodb"]);
        let [keys, size_bytes] =
            stream.map_or([None, None], |s| pick(s.get(), ["Keys", "SizeBytes"]));
        Self {
            event_name,
            keys,
            size_bytes,
        }
    }
}

/// The raw values of the named fields of the JSON object `raw`, the last
/// one when a name repeats. Names are compared as bytes after unescaping,
/// so a name that is not valid UTF-16 is skipped rather than fatal.
fn pick<'a, const N: usize>(raw: &'a str, names: [&str; N]) -> [Option<&'a RawValue>; N] {
    struct Fields<'n, 'f, 'de, const N: usize> {
        names: &'n [&'n str; N],
        found: &'f mut [Option<&'de RawValue>; N],
    }
    impl<'de, const N: usize> Visitor<'de> for Fields<'_, '_, 'de, N> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(key) = map.next_key_seed(Name(self.names))? {
                match key {
                    Some(i) => self.found[i] = Some(map.next_value()?),
                    None => {
                        map.next_value::<de::IgnoredAny>()?;
                    }
                }
            }
            Ok(())
        }
    }
    /// A key, as the index of the name it matches.
    struct Name<'n, const N: usize>(&'n [&'n str; N]);
    impl<'de, const N: usize> DeserializeSeed<'de> for Name<'_, N> {
        type Value = Option<usize>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
            // Bytes, not str: serde_json then accepts lone surrogates.
            d.deserialize_bytes(self)
        }
    }
    impl<'de, const N: usize> Visitor<'de> for Name<'_, N> {
        type Value = Option<usize>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a name")
        }
        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Option<usize>, E> {
            Ok(self.0.iter().position(|n| n.as_bytes() == v))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<usize>, E> {
            self.visit_bytes(v.as_bytes())
        }
    }
    let mut found = [None; N];
    let mut de = serde_json::Deserializer::from_str(raw);
    // An error keeps what was found before it.
    let _ = serde::Deserializer::deserialize_map(
        &mut de,
        Fields {
            names: &names,
            found: &mut found,
        },
    );
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr_json(attr: &str) -> Result<String, &'static str> {
        let raw: Box<RawValue> = serde_json::from_str(attr).unwrap();
        let mut out = Vec::new();
        write_attr(&mut out, &raw)?;
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn every_dynamodb_type_maps_to_natural_json_in_record_order() {
        let json = attr_json(
            r#"{"M": {
            "s": {"S": "text"}, "n": {"N": "42"}, "t": {"BOOL": true}, "z": {"NULL": true},
            "b": {"B": "AAEC/w=="}, "l": {"L": [{"S": "a"}, {"N": "1"}, {"L": []}]},
            "m": {"M": {"y": {"S": "Y"}, "x": {"N": "-1.5"}}}, "e": {"M": {}},
            "ss": {"SS": ["a", "b"]}, "ns": {"NS": ["1", "2.5"]}, "bs": {"BS": ["AQ==", "Ag=="]}
        }}"#,
        )
        .unwrap();
        assert_eq!(
            json,
            r#"{"s":"text","n":42,"t":true,"z":null,"b":"AAEC/w==","l":["a",1,[]],"m":{"y":"Y","x":-1.5},"e":{},"ss":["a","b"],"ns":[1,2.5],"bs":["AQ==","Ag=="]}"#
        );
        serde_json::from_str::<serde_json::Value>(&json).unwrap();
    }

    #[test]
    fn numbers_keep_every_digit() {
        let json = attr_json(
            r#"{"M": {"price": {"N": "19.99"}, "big": {"N": "12345678901234567890123456789012345678"},
                "huge": {"N": "1E+125"}, "tiny": {"N": "-1E-130"}, "frac": {"N": "12345678901234567890.5"}, "zero": {"N": "0"}}}"#,
        )
        .unwrap();
        assert_eq!(
            json,
            r#"{"price":19.99,"big":12345678901234567890123456789012345678,"huge":1E+125,"tiny":-1E-130,"frac":12345678901234567890.5,"zero":0}"#
        );
    }

    #[test]
    fn a_malformed_number_is_an_error_not_a_guess() {
        for bad in [
            "abc", "", "1.2.3", "+5", "NaN", "1e", "[1]", " 1", "01", "1.", ".5", "--1",
        ] {
            let err = attr_json(&format!(r#"{{"N": "{bad}"}}"#)).unwrap_err();
            assert_eq!(err, INVALID_NUMBER, "{bad}");
            let err = attr_json(&format!(r#"{{"NS": ["1", "{bad}"]}}"#)).unwrap_err();
            assert_eq!(err, INVALID_NUMBER, "{bad}");
        }
    }

    #[test]
    fn numbers_beyond_dynamodbs_limits_are_refused() {
        for good in [
            "99999999999999999999999999999999999999",
            "-9.9999999999999999999999999999999999999E+125",
            "1E-130",
            "0.1E-129",
            "100000000000000000000000000000000000000000000000000",
            "1.00000000000000000000000000000000000000000000",
            "0.00000000000000000000000000000000000001",
            "0E+999999999999999999999999",
            "-0",
        ] {
            assert!(
                attr_json(&format!(r#"{{"N": "{good}"}}"#)).is_ok(),
                "{good}"
            );
        }
        for bad in [
            "999999999999999999999999999999999999999",
            "1.000000000000000000000000000000000000001",
            "1E+126",
            "10E+125",
            "1E-131",
            "0.01E-129",
            "1e99999999999999999999999999",
            "-1e-99999999999999999999999999",
            "12345678901234567890123454444444400000000000e0000000006789012345678",
        ] {
            let err = attr_json(&format!(r#"{{"N": "{bad}"}}"#)).unwrap_err();
            assert_eq!(err, OUT_OF_RANGE, "{bad}");
            let err = attr_json(&format!(r#"{{"NS": ["1", "{bad}"]}}"#)).unwrap_err();
            assert_eq!(err, OUT_OF_RANGE, "{bad}");
        }
    }

    #[test]
    fn binaries_must_be_base64() {
        for good in ["", "AA==", "AAE=", "AAEC", "q83vEjRWeJAS+w=="] {
            let json = attr_json(&format!(r#"{{"B": "{good}"}}"#));
            assert_eq!(json, Ok(format!(r#""{good}""#)), "{good}");
        }
        for bad in [
            "!!",
            "AAE",
            "A===",
            "AA=A",
            "AA AA",
            r"\u0000AAA",
            "AB==",
            "AAB=",
        ] {
            assert_eq!(
                attr_json(&format!(r#"{{"B": "{bad}"}}"#)),
                Err(INVALID_BINARY),
                "{bad}"
            );
            assert_eq!(
                attr_json(&format!(r#"{{"BS": ["AA==", "{bad}"]}}"#)),
                Err(INVALID_BINARY),
                "{bad}"
            );
        }
    }

    #[test]
    fn malformed_attribute_values_are_refused() {
        for bad in [
            r#"{}"#,
            r#"{"X": "1"}"#,
            r#"{"S": 1}"#,
            r#"{"S": "a", "N": "1"}"#,
            r#"{"M": [1]}"#,
            r#"{"L": [{"Q": 1}]}"#,
            r#""plain""#,
            r#"{"SS": [1]}"#,
        ] {
            assert_eq!(attr_json(bad), Err(MALFORMED), "{bad}");
        }
    }

    #[test]
    fn strings_are_escaped_and_escaped_input_is_read() {
        let json = attr_json(r#"{"S": "quote \" slash \\ tab \t é \u00e9 \ud83d\ude00"}"#).unwrap();
        assert_eq!(
            serde_json::from_str::<String>(&json).unwrap(),
            "quote \" slash \\ tab \t é é 😀"
        );
    }

    #[test]
    fn a_record_is_read_in_place() {
        let raw = r#"{"eventID":"e1","eventName":"INSERT","eventSourceARN":"arn:aws:dynamodb:r:1:table/T/stream/x",
            "userIdentity":{"type":"Service","principalId":"dynamodb.amazonaws.com"},
            "dynamodb":{"ApproximateCreationDateTime":1.5,"Keys":{"id":{"S":"a"}},"NewImage":{"id":{"S":"a"},"n":{"N":"1"}},
            "SequenceNumber":"100","SizeBytes":5,"StreamViewType":"NEW_IMAGE"}}"#;
        let r: Record = serde_json::from_str(raw).unwrap();
        assert_eq!(r.event_id.as_deref(), Some("e1"));
        assert!(matches!(
            r.event_name.as_ref().map(|t| &t.0),
            Some(Cow::Borrowed("INSERT"))
        ));
        assert_eq!(r.dynamodb.approximate_creation, Some(1.5));
        let image = r.dynamodb.new_image.unwrap();
        assert_eq!(image.0.len(), 2);
        assert!(matches!(Attr::parse(image.get("n").unwrap()), Ok(Attr::N(n)) if &*n == "1"));
        assert!(r.dynamodb.old_image.is_none());
        let r: Record =
            serde_json::from_str(r#"{"dynamodb":{"NewImage":null,"Keys":null}}"#).unwrap();
        assert!(r.dynamodb.new_image.is_none());
    }

    #[test]
    fn deep_nesting_is_handled_or_refused_without_crashing() {
        let mut attr = r#"{"S": "leaf"}"#.to_string();
        for _ in 0..32 {
            attr = format!(r#"{{"M": {{"k": {attr}}}}}"#);
        }
        assert!(attr_json(&attr).unwrap().contains("leaf"));
    }

    #[test]
    fn maps_and_lists_nest_at_most_32_levels() {
        let nested = |levels: usize, tag: &str| {
            let (open, close) = if tag == "M" {
                (r#"{"M":{"n":"#, "}}")
            } else {
                (r#"{"L":["#, "]}")
            };
            format!(
                r#"{}{{"S":"x"}}{}"#,
                open.repeat(levels),
                close.repeat(levels)
            )
        };
        for tag in ["M", "L"] {
            let out = attr_json(&nested(32, tag)).unwrap();
            let value: serde_json::Value = serde_json::from_str(&out).unwrap();
            let mut inner = &value;
            for _ in 0..32 {
                inner = if tag == "M" { &inner["n"] } else { &inner[0] };
            }
            assert_eq!(inner, "x", "{tag}");
            assert_eq!(attr_json(&nested(33, tag)), Err(TOO_DEEP), "{tag}");
        }
        // A set is not a level: a 32-level item may end in one.
        let set_at_the_bottom = format!(
            r#"{}{{"SS":["x"]}}{}"#,
            r#"{"M":{"n":"#.repeat(32),
            "}}".repeat(32)
        );
        assert!(attr_json(&set_at_the_bottom).is_ok());
        // The value of an M attribute written on its own is level 1.
        let raw: Box<RawValue> = serde_json::from_str(&nested(32, "M")).unwrap();
        let inner = &raw.get()[5..raw.get().len() - 1];
        let inner: Box<RawValue> = serde_json::from_str(inner).unwrap();
        let mut out = Vec::new();
        assert_eq!(write_nested(&mut out, "M", inner.get()), Ok(()));
        let raw: Box<RawValue> = serde_json::from_str(&nested(33, "M")).unwrap();
        let inner: Box<RawValue> =
            serde_json::from_str(&raw.get()[5..raw.get().len() - 1]).unwrap();
        assert_eq!(
            write_nested(&mut Vec::new(), "M", inner.get()),
            Err(TOO_DEEP)
        );
    }

    #[test]
    fn a_records_identity_survives_whatever_else_it_holds() {
        let deep = format!("{}1{}", "[".repeat(1000), "]".repeat(1000));
        let raw = format!(
            r#"{{"eventID":"ev-1","x\ud800":1e400,"eventSourceARN":"arn:t","deep":{deep},
               "dynamodb":{{"NewImage":{{"\udfff":{{"N":1e999}}}},"SequenceNumber":"42",
               "ApproximateCreationDateTime":1795348800.5}}}}"#
        );
        assert!(serde_json::from_str::<serde_json::Value>(&raw).is_err());
        assert_eq!(
            Identity::read(&raw),
            Identity {
                sequence_number: Some("42".into()),
                event_id: Some("ev-1".into()),
                event_source_arn: Some("arn:t".into()),
                created: Some(1_795_348_800.5),
            }
        );
    }

    #[test]
    fn each_identity_field_stands_alone() {
        // A wrong type loses that field only; a repeated name keeps the
        // last; escapes in names are decoded.
        let raw = r#"{"eventID":7,"dynamodb":{"SequenceNumber":"1","Sequence\u004eumber":"2"},
                      "eventSourceARN":"a","eventSourceARN":"b"}"#;
        let id = Identity::read(raw);
        assert_eq!(id.event_id, None);
        assert_eq!(id.sequence_number.as_deref(), Some("2"));
        assert_eq!(id.event_source_arn.as_deref(), Some("b"));
        // Cut short: what came before the cut is kept.
        let id = Identity::read(r#"{"eventID":"ev-9","dynamodb":{"SequenceNumber":"9"},"x":[1,"#);
        assert_eq!(id.event_id.as_deref(), Some("ev-9"));
        assert_eq!(id.sequence_number.as_deref(), Some("9"));
        for not_a_record in ["", "[1]", "\"eventID\"", "{\"dynamodb\":[]}"] {
            assert_eq!(Identity::read(not_a_record), Identity::default());
        }
    }

    /// Strings in any spelling JSON allows (escaped or not, `\u` escapes,
    /// surrogate pairs, raw non-ASCII) come out of the transcoder exactly
    /// as serde_json writes the decoded string: names and values, copied or
    /// escaped again. Seeded; a failure prints the seed and the input.
    #[test]
    fn generated_strings_are_written_as_serde_json_writes_them() {
        const POOL: &[char] = &[
            'a',
            'Z',
            '0',
            ' ',
            '"',
            '\\',
            '/',
            '\u{0}',
            '\u{1f}',
            '\n',
            '\t',
            '\u{7f}',
            'é',
            '€',
            '\u{2028}',
            '😀',
            '\u{10ffff}',
        ];
        // One JSON spelling of `c`, chosen by `pick`.
        fn spell(c: char, pick: u32, out: &mut String) {
            let plain = !matches!(c, '"' | '\\') && c >= ' ';
            match pick % 3 {
                0 if plain => out.push(c),
                1 => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{unit:04x}"));
                    }
                }
                _ => {
                    let json = serde_json::to_string(&c.to_string()).unwrap();
                    let escaped = &json[1..json.len() - 1];
                    out.push_str(&escaped.replace('/', if pick % 2 == 0 { "\\/" } else { "/" }));
                }
            }
        }
        let (seed, mut rng) = crate::test_rng();
        for _ in 0..2_000 {
            let strings: Vec<String> = (0..rng.usize(1..4))
                .map(|_| {
                    (0..rng.usize(0..6))
                        .map(|_| POOL[rng.usize(..POOL.len())])
                        .collect()
                })
                .collect();
            let spelled: Vec<String> = strings
                .iter()
                .map(|s| {
                    let mut out = String::new();
                    for c in s.chars() {
                        spell(c, rng.u32(..), &mut out);
                    }
                    out
                })
                .collect();
            let values: Vec<String> = spelled
                .iter()
                .map(|s| format!(r#"{{"S":"{s}"}}"#))
                .collect();
            let input = format!(
                r#"{{"M":{{"{}":{{"L":[{}]}}}}}}"#,
                spelled[0],
                values.join(",")
            );
            let expected = format!(
                "{{{}:{}}}",
                serde_json::to_string(&strings[0]).unwrap(),
                serde_json::to_string(&strings).unwrap()
            );
            assert_eq!(
                attr_json(&input).as_deref(),
                Ok(expected.as_str()),
                "EF_SEED={seed}: {input}"
            );
        }
    }

    /// Reading an attribute without reading its nested value gives what
    /// serde's full read of it gives; an object with more than one member
    /// is refused either there or, for a nested value, when it is written.
    #[test]
    fn an_attribute_is_read_alike_without_reading_its_nested_value() {
        let cases = [
            r#"{"S":"a"}"#,
            r#"{ "S" : "a\"b" }"#,
            "{\n\t\"N\":\"1.5\"\r}",
            r#"{"B":"AQ=="}"#,
            r#"{"BOOL":false}"#,
            r#"{"NULL":true}"#,
            r#"{"M":{"x":{"S":"y"}}}"#,
            r#"{ "L" : [ {"S":"a"} ] }"#,
            r#"{"SS":["a"]}"#,
            r#"{"NS":["1"]}"#,
            r#"{"BS":["AQ=="]}"#,
            r#"{"S":""}"#,
            r#"{"S":"é😀 \u00e9"}"#,
            r#"{"S":"a\\"}"#,
            "{\"S\":\"\u{7f}\"}",
            r#"{"N":"1" }"#,
            r#"{"BOOL": true }"#,
            r#"{"\u0053":"escaped tag"}"#,
            r#"{"S":"a","N":"1"}"#,
            r#"{"N":"1","S":"a"}"#,
            r#"{"BOOL":true,"BOOL":true}"#,
            r#"{"M":{},"S":"a"}"#,
            r#"{"L":[] , "L":[]}"#,
            r#"{"M":{"x":{"S":"y"}},"M":{}}"#,
            r#"{}"#,
            r#"{"X":1}"#,
            r#"{"S":1}"#,
            r#"{"BOOL":"true"}"#,
            r#"{"M":[]}"#,
            r#"[]"#,
            r#""S""#,
        ];
        for case in cases {
            let raw: Box<RawValue> = serde_json::from_str(case).unwrap();
            let mut de = serde_json::Deserializer::from_str(raw.get());
            let full = de.deserialize_map(AttrVisitor).map_err(|_| MALFORMED);
            match (Attr::parse(&raw), full) {
                (Ok(Attr::Nested(tag, inner)), Err(_)) => assert_eq!(
                    write_nested(&mut Vec::new(), tag, inner),
                    Err(MALFORMED),
                    "{case}"
                ),
                (fast, full) => assert_eq!(format!("{fast:?}"), format!("{full:?}"), "{case}"),
            }
        }
    }
}
