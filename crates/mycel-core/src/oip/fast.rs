//! The fast path for the requests whose speed matters most: inputs whose JSON `data` is
//! a (flat or nested) array of numbers or booleans, as images and feature vectors are.
//! A structural scan finds each input's `data`, serde reads the small rest of the JSON,
//! and the numbers are decoded in one tight loop straight into tensor bytes.
//!
//! It never decides what a request means. Anything unusual (an escaped key, a string
//! element, a number the careful parser would read as another type, malformed JSON)
//! gives up with `None`, and the caller parses the request the careful way (header.rs
//! and data.rs), which also names what is wrong. The tests hold the two to the same
//! answers.

use std::ops::Range;

use crate::tensor::Datatype;

/// Each input's `data` value, located in the JSON.
pub(super) struct Located {
    /// The JSON with every located `data` value replaced by `0`: what serde reads.
    pub(super) stripped: Vec<u8>,
    /// Where the values were, in document order.
    pub(super) data: Vec<Range<usize>>,
}

/// Finds the `data` values of the objects in the top-level `inputs` array; `None` when
/// there are none or the JSON has anything the scan does not vouch for.
pub(super) fn locate(json: &[u8]) -> Option<Located> {
    let mut scan = Scanner { json, at: 0 };
    let mut data = Vec::new();
    scan.object(|scan, key| {
        if key != b"inputs" || scan.peek() != Some(b'[') {
            return scan.value();
        }
        scan.array(|scan| {
            if scan.peek() != Some(b'{') {
                return scan.value();
            }
            scan.object(|scan, key| {
                if key != b"data" {
                    return scan.value();
                }
                let start = scan.at;
                scan.data()?;
                data.push(start..scan.at);
                Some(())
            })
        })
    })?;
    scan.skip_whitespace();
    if scan.at != json.len() || data.is_empty() {
        return None;
    }
    let removed: usize = data.iter().map(Range::len).sum();
    let mut stripped = Vec::with_capacity(json.len() - removed + data.len());
    let mut from = 0;
    for range in &data {
        stripped.extend_from_slice(&json[from..range.start]);
        stripped.push(b'0');
        from = range.end;
    }
    stripped.extend_from_slice(&json[from..]);
    Some(Located { stripped, data })
}

/// Walks JSON structure without decoding it.
struct Scanner<'a> {
    json: &'a [u8],
    at: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.json.get(self.at).copied()
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// Consumes `byte` after any whitespace, then any whitespace after it.
    fn eat(&mut self, byte: u8) -> Option<()> {
        self.skip_whitespace();
        (self.peek() == Some(byte)).then(|| {
            self.at += 1;
            self.skip_whitespace();
        })
    }

    /// A key as written; `None` if it has escapes, so that a key is only ever compared
    /// as serde would decode it.
    fn key(&mut self) -> Option<&'a [u8]> {
        self.eat(b'"')?;
        let rest = &self.json[self.at..];
        let len = rest.iter().position(|&b| b == b'"' || b == b'\\')?;
        if rest[len] != b'"' {
            return None;
        }
        self.at += len + 1;
        Some(&rest[..len])
    }

    /// `{ key: value, ... }`, handing each member's key to `member`, which must consume
    /// the value.
    fn object(&mut self, mut member: impl FnMut(&mut Self, &'a [u8]) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        if self.eat(b'}').is_some() {
            return Some(());
        }
        loop {
            let key = self.key()?;
            self.eat(b':')?;
            member(self, key)?;
            if self.eat(b'}').is_some() {
                return Some(());
            }
            self.eat(b',')?;
        }
    }

    /// `[ value, ... ]`, calling `element` to consume each value.
    fn array(&mut self, mut element: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.eat(b'[')?;
        if self.eat(b']').is_some() {
            return Some(());
        }
        loop {
            element(self)?;
            if self.eat(b']').is_some() {
                return Some(());
            }
            self.eat(b',')?;
        }
    }

    /// Skips one value. Only its extent is checked; serde or [`decode`] reads it.
    fn value(&mut self) -> Option<()> {
        self.skip_whitespace();
        match self.peek()? {
            b'"' => self.string(),
            b'[' | b'{' => {
                let mut depth = 0usize;
                loop {
                    let rest = &self.json[self.at..];
                    let skip = rest
                        .iter()
                        .position(|&b| matches!(b, b'[' | b']' | b'{' | b'}' | b'"'))?;
                    self.at += skip;
                    match rest[skip] {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'[' | b'{' => depth += 1,
                        _ => depth -= 1,
                    }
                    self.at += 1;
                    if depth == 0 {
                        return Some(());
                    }
                }
            }
            _ => {
                let rest = &self.json[self.at..];
                let len = rest
                    .iter()
                    .position(|&b| matches!(b, b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r'))
                    .unwrap_or(rest.len());
                (len > 0).then(|| self.at += len)
            }
        }
    }

    /// Skips a `data` value, which is worth the fast path only as nested arrays without
    /// strings: then its extent is where its brackets balance, found at memchr's speed
    /// (any object inside is decode's to refuse).
    fn data(&mut self) -> Option<()> {
        if self.peek() != Some(b'[') {
            return None;
        }
        let rest = &self.json[self.at..];
        let mut depth = 0usize;
        for at in memchr::memchr3_iter(b'[', b']', b'"', rest) {
            match rest[at] {
                b'[' => depth += 1,
                b']' => depth -= 1,
                _ => return None,
            }
            if depth == 0 {
                self.at += at + 1;
                return Some(());
            }
        }
        None
    }

    /// Skips a string, escapes and all.
    fn string(&mut self) -> Option<()> {
        self.at += 1;
        loop {
            let rest = &self.json[self.at..];
            let len = rest.iter().position(|&b| b == b'"' || b == b'\\')?;
            self.at += len + 1;
            if rest[len] == b'"' {
                return Some(());
            }
            // The escaped byte, so that `\"` does not end the string.
            self.at += 1;
        }
    }
}

/// A JSON number as serde_json reads it.
#[derive(Clone, Copy)]
enum Number {
    /// A non-negative integer.
    Unsigned(u64),
    /// A negative integer, by its magnitude (1 to 2^63).
    Negative(u64),
    Float(f64),
}

impl Number {
    fn as_i64(self) -> Option<i64> {
        match self {
            Number::Unsigned(n) => i64::try_from(n).ok(),
            Number::Negative(n) => 0i64.checked_sub_unsigned(n),
            Number::Float(_) => None,
        }
    }

    /// As serde_json's visitor hands it on and data.rs converts it.
    fn as_f64(self) -> f64 {
        match self {
            Number::Unsigned(n) => n as f64,
            Number::Negative(n) => -(n as f64),
            Number::Float(x) => x,
        }
    }
}

/// An element of `data`.
enum Element {
    Bool(bool),
    Number(Number),
}

/// Decodes a `data` value, nested arrays of numbers (or of booleans, for BOOL), into
/// `count` little-endian elements of `datatype`: the bytes the careful parser would
/// produce, or `None` wherever it might not produce them.
pub(super) fn decode(text: &[u8], datatype: Datatype, count: u64) -> Option<Vec<u8>> {
    let size = datatype.element_size()?;
    // The shape is the client's word; the text bounds what can really arrive.
    let capacity = (count.min(text.len() as u64 / 2 + 1) as usize).saturating_mul(size);
    let mut out = Vec::with_capacity(capacity);
    macro_rules! integers {
        ($t:ty) => {
            elements(text, &mut out, |out, element| {
                let Element::Number(number) = element else {
                    return None;
                };
                let n = match number {
                    Number::Unsigned(n) => <$t>::try_from(n).ok()?,
                    other => <$t>::try_from(other.as_i64()?).ok()?,
                };
                out.extend_from_slice(&n.to_le_bytes());
                Some(())
            })
        };
    }
    macro_rules! floats {
        ($convert:expr) => {
            elements(text, &mut out, |out, element| {
                let Element::Number(number) = element else {
                    return None;
                };
                out.extend_from_slice(&$convert(number.as_f64()).to_le_bytes());
                Some(())
            })
        };
    }
    let got = match datatype {
        Datatype::Bool => elements(text, &mut out, |out, element| match element {
            Element::Bool(b) => {
                out.push(u8::from(b));
                Some(())
            }
            Element::Number(_) => None,
        }),
        Datatype::Int8 => integers!(i8),
        Datatype::Int16 => integers!(i16),
        Datatype::Int32 => integers!(i32),
        Datatype::Int64 => integers!(i64),
        Datatype::Uint8 => integers!(u8),
        Datatype::Uint16 => integers!(u16),
        Datatype::Uint32 => integers!(u32),
        Datatype::Uint64 => integers!(u64),
        Datatype::Fp16 => floats!(half::f16::from_f64),
        Datatype::Fp32 => floats!(|x: f64| x as f32),
        Datatype::Fp64 => floats!(|x: f64| x),
        Datatype::Bytes => None,
    }?;
    (got == count).then_some(out)
}

fn is_whitespace(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

/// Walks nested arrays, handing each element to `put`; the number of elements, or
/// `None` if the text is anything but nested arrays of numbers and booleans.
fn elements(
    text: &[u8],
    out: &mut Vec<u8>,
    mut put: impl FnMut(&mut Vec<u8>, Element) -> Option<()>,
) -> Option<u64> {
    let mut at = 0;
    let mut depth = 0usize;
    let mut count = 0u64;
    // After `[` or `,` a value comes; `]` may close an empty array only after `[`.
    let mut value_next = true;
    let mut may_close = false;
    loop {
        let mut byte = *text.get(at)?;
        while is_whitespace(byte) {
            at += 1;
            byte = *text.get(at)?;
        }
        if value_next {
            let element = match byte {
                b'0'..=b'9' | b'-' if depth > 0 => {
                    let (number, len) = number(&text[at..])?;
                    at += len;
                    Element::Number(number)
                }
                b'[' => {
                    depth += 1;
                    at += 1;
                    may_close = true;
                    continue;
                }
                b't' if depth > 0 && text[at..].starts_with(b"true") => {
                    at += 4;
                    Element::Bool(true)
                }
                b'f' if depth > 0 && text[at..].starts_with(b"false") => {
                    at += 5;
                    Element::Bool(false)
                }
                b']' if may_close => {
                    value_next = false;
                    continue;
                }
                _ => return None,
            };
            put(out, element)?;
            count += 1;
            value_next = false;
            may_close = false;
            continue;
        }
        match byte {
            b',' => value_next = true,
            b']' => {
                depth -= 1;
                if depth == 0 {
                    return (at + 1 == text.len()).then_some(count);
                }
            }
            _ => return None,
        }
        at += 1;
    }
}

/// One JSON number at the start of `text` (which is not empty) and its length; `None`
/// if there is none, or where serde_json would read it as another kind of number than
/// [`Number`] says (`-0` and integers past 64 bits are floats there) or reject it (out
/// of range).
#[inline(always)]
fn number(text: &[u8]) -> Option<(Number, usize)> {
    let negative = text[0] == b'-';
    let start = usize::from(negative);
    // An error for no digits and for past u64.
    let (magnitude, digits) = atoi_simd::parse_prefix_pos::<u64, false>(&text[start..]).ok()?;
    // A leading zero stands alone in JSON.
    if text[start] == b'0' && digits > 1 {
        return None;
    }
    let at = start + digits;
    if matches!(text.get(at), Some(b'.' | b'e' | b'E')) {
        return float(text, at);
    }
    let number = match (negative, magnitude) {
        (false, n) => Number::Unsigned(n),
        (true, n @ 1..=0x8000_0000_0000_0000) => Number::Negative(n),
        (true, _) => return None,
    };
    Some((number, at))
}

/// The rest of a number with a fraction or exponent, from `at`, where its integer part
/// ends.
fn float(text: &[u8], mut at: usize) -> Option<(Number, usize)> {
    let digits = |from: usize| {
        text[from..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count()
    };
    if text.get(at) == Some(&b'.') {
        let len = digits(at + 1);
        if len == 0 {
            return None;
        }
        at += 1 + len;
    }
    if matches!(text.get(at), Some(b'e' | b'E')) {
        at += 1;
        if matches!(text.get(at), Some(b'+' | b'-')) {
            at += 1;
        }
        let len = digits(at);
        if len == 0 {
            return None;
        }
        at += len;
    }
    let x: f64 = fast_float2::parse(&text[..at]).ok()?;
    x.is_finite().then_some((Number::Float(x), at))
}

#[cfg(test)]
mod tests;
