//! One input's JSON `data`, flat or nested, decoded element by element into
//! little-endian tensor bytes, with errors naming the element (`inputs[1].data[4]`).

use std::fmt;

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

use super::{err, stop, OipError};
use crate::tensor::Datatype;

/// Receives the elements of one input's `data`, flattened, as little-endian bytes.
pub(super) struct DataSink {
    input: usize,
    datatype: Datatype,
    bytes: Vec<u8>,
    count: u64,
    depth: usize,
    pub(super) failure: Option<OipError>,
}

/// What a JSON element was, for error messages.
enum Got<'a> {
    Bool(bool),
    Integer(i128),
    Float(f64),
    Text(&'a str),
    Null,
    Object,
}

impl fmt::Display for Got<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Got::Bool(b) => write!(f, "{b}"),
            Got::Integer(n) => write!(f, "{n}"),
            Got::Float(x) => write!(f, "{x}"),
            Got::Text(s) => match s.char_indices().nth(40) {
                Some((cut, _)) => write!(f, "the string {:?}...", &s[..cut]),
                None => write!(f, "the string {s:?}"),
            },
            Got::Null => f.write_str("null"),
            Got::Object => f.write_str("an object"),
        }
    }
}

macro_rules! put_int {
    ($sink:expr, $n:expr, $t:ty) => {
        match <$t>::try_from($n) {
            Ok(v) => {
                $sink.bytes.extend_from_slice(&v.to_le_bytes());
                true
            }
            Err(_) => false,
        }
    };
}

impl DataSink {
    pub(super) fn new(input: usize, datatype: Datatype, count_hint: usize) -> Self {
        let size = datatype.element_size().unwrap_or(0);
        Self {
            input,
            datatype,
            bytes: Vec::with_capacity(count_hint.saturating_mul(size)),
            count: 0,
            depth: 0,
            failure: None,
        }
    }

    fn expected(&self) -> String {
        fn range<T: fmt::Display>(min: T, max: T) -> String {
            format!("an integer from {min} to {max}")
        }
        match self.datatype {
            Datatype::Bool => "true or false".into(),
            Datatype::Int8 => range(i8::MIN, i8::MAX),
            Datatype::Int16 => range(i16::MIN, i16::MAX),
            Datatype::Int32 => range(i32::MIN, i32::MAX),
            Datatype::Int64 => range(i64::MIN, i64::MAX),
            Datatype::Uint8 => range(u8::MIN, u8::MAX),
            Datatype::Uint16 => range(u16::MIN, u16::MAX),
            Datatype::Uint32 => range(u32::MIN, u32::MAX),
            Datatype::Uint64 => range(u64::MIN, u64::MAX),
            Datatype::Fp16 | Datatype::Fp32 | Datatype::Fp64 => "a number".into(),
            Datatype::Bytes => "a string".into(),
        }
    }

    /// Takes one element, or explains why it does not fit the datatype.
    fn push<E: de::Error>(&mut self, got: Got) -> Result<(), E> {
        if self.depth == 0 {
            let message = format!(
                "inputs[{}].data must be an array (flat or nested), got {got}",
                self.input
            );
            return Err(stop(&mut self.failure, OipError::new(message)));
        }
        let fits = match (self.datatype, &got) {
            (Datatype::Bool, Got::Bool(b)) => {
                self.bytes.push(u8::from(*b));
                true
            }
            (Datatype::Int8, Got::Integer(n)) => put_int!(self, *n, i8),
            (Datatype::Int16, Got::Integer(n)) => put_int!(self, *n, i16),
            (Datatype::Int32, Got::Integer(n)) => put_int!(self, *n, i32),
            (Datatype::Int64, Got::Integer(n)) => put_int!(self, *n, i64),
            (Datatype::Uint8, Got::Integer(n)) => put_int!(self, *n, u8),
            (Datatype::Uint16, Got::Integer(n)) => put_int!(self, *n, u16),
            (Datatype::Uint32, Got::Integer(n)) => put_int!(self, *n, u32),
            (Datatype::Uint64, Got::Integer(n)) => put_int!(self, *n, u64),
            (Datatype::Fp16 | Datatype::Fp32 | Datatype::Fp64, Got::Integer(n)) => {
                self.push_float(*n as f64);
                true
            }
            (Datatype::Fp16 | Datatype::Fp32 | Datatype::Fp64, Got::Float(x)) => {
                self.push_float(*x);
                true
            }
            (Datatype::Bytes, Got::Text(s)) => match u32::try_from(s.len()) {
                Ok(len) => {
                    self.bytes.extend_from_slice(&len.to_le_bytes());
                    self.bytes.extend_from_slice(s.as_bytes());
                    true
                }
                Err(_) => false,
            },
            _ => false,
        };
        if !fits {
            let message = format!(
                "inputs[{}].data[{}] is {got}; expected {} for {}",
                self.input,
                self.count,
                self.expected(),
                self.datatype
            );
            return Err(stop(&mut self.failure, OipError::new(message)));
        }
        self.count += 1;
        Ok(())
    }

    fn push_float(&mut self, x: f64) {
        match self.datatype {
            Datatype::Fp16 => self
                .bytes
                .extend_from_slice(&half::f16::from_f64(x).to_le_bytes()),
            Datatype::Fp32 => self.bytes.extend_from_slice(&(x as f32).to_le_bytes()),
            _ => self.bytes.extend_from_slice(&x.to_le_bytes()),
        }
    }

    /// The bytes, once the element count matches the shape.
    pub(super) fn finish(self, shape: &[u64], count: u64) -> Result<Bytes, OipError> {
        if self.count != count {
            return err(format!(
                "inputs[{}].data has {} elements but shape {shape:?} holds {count}",
                self.input, self.count
            ));
        }
        Ok(self.bytes.into())
    }
}

/// Reads (possibly nested) `data` into a [`DataSink`].
pub(super) struct DataSeed<'s>(pub(super) &'s mut DataSink);

impl<'de> DeserializeSeed<'de> for DataSeed<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for DataSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "inputs[{}].data as an array", self.0.input)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.0.depth += 1;
        while seq.next_element_seed(DataSeed(&mut *self.0))?.is_some() {}
        self.0.depth -= 1;
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.0.push(Got::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.0.push(Got::Integer(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.0.push(Got::Integer(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.0.push(Got::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.0.push(Got::Text(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.0.push(Got::Null)
    }

    fn visit_map<A: MapAccess<'de>>(self, _map: A) -> Result<(), A::Error> {
        self.0.push(Got::Object)
    }
}
