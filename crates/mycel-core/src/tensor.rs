//! Tensors as raw bytes: the Open Inference Protocol's datatypes, a tensor's
//! consistency check, and joining and splitting along axis 0 for batching.

use std::fmt;
use std::str::FromStr;

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// An Open Inference Protocol datatype.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Datatype {
    /// One byte, 0 or 1.
    Bool,
    /// Signed integers.
    Int8,
    /// Signed integers.
    Int16,
    /// Signed integers.
    Int32,
    /// Signed integers.
    Int64,
    /// Unsigned integers.
    Uint8,
    /// Unsigned integers.
    Uint16,
    /// Unsigned integers.
    Uint32,
    /// Unsigned integers.
    Uint64,
    /// IEEE half precision.
    Fp16,
    /// IEEE single precision.
    Fp32,
    /// IEEE double precision.
    Fp64,
    /// Byte strings, each as a u32 little-endian length and its bytes.
    Bytes,
}

const ALL: [Datatype; 13] = [
    Datatype::Bool,
    Datatype::Int8,
    Datatype::Int16,
    Datatype::Int32,
    Datatype::Int64,
    Datatype::Uint8,
    Datatype::Uint16,
    Datatype::Uint32,
    Datatype::Uint64,
    Datatype::Fp16,
    Datatype::Fp32,
    Datatype::Fp64,
    Datatype::Bytes,
];

impl Datatype {
    /// The protocol's name, e.g. `FP32`.
    pub fn as_str(self) -> &'static str {
        match self {
            Datatype::Bool => "BOOL",
            Datatype::Int8 => "INT8",
            Datatype::Int16 => "INT16",
            Datatype::Int32 => "INT32",
            Datatype::Int64 => "INT64",
            Datatype::Uint8 => "UINT8",
            Datatype::Uint16 => "UINT16",
            Datatype::Uint32 => "UINT32",
            Datatype::Uint64 => "UINT64",
            Datatype::Fp16 => "FP16",
            Datatype::Fp32 => "FP32",
            Datatype::Fp64 => "FP64",
            Datatype::Bytes => "BYTES",
        }
    }

    /// Bytes per element; `None` for BYTES, whose elements vary.
    pub fn element_size(self) -> Option<usize> {
        Some(match self {
            Datatype::Bool | Datatype::Int8 | Datatype::Uint8 => 1,
            Datatype::Int16 | Datatype::Uint16 | Datatype::Fp16 => 2,
            Datatype::Int32 | Datatype::Uint32 | Datatype::Fp32 => 4,
            Datatype::Int64 | Datatype::Uint64 | Datatype::Fp64 => 8,
            Datatype::Bytes => return None,
        })
    }
}

impl fmt::Display for Datatype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Datatype {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        ALL.into_iter().find(|d| d.as_str() == s).ok_or_else(|| {
            let names: Vec<&str> = ALL.iter().map(|d| d.as_str()).collect();
            format!(
                "unknown datatype {s:?}; expected one of {}",
                names.join(", ")
            )
        })
    }
}

/// A tensor whose bytes do not match its datatype and shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TensorError(pub String);

/// A named tensor: raw little-endian bytes in C order.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Name.
    pub name: String,
    /// Element type.
    pub datatype: Datatype,
    /// Dimensions.
    pub shape: Vec<u64>,
    /// The elements; for BYTES, each is a u32 little-endian length and its bytes.
    pub data: Bytes,
}

impl Tensor {
    /// How many elements the shape holds. A shape whose dimensions could not be indexed
    /// by numpy or torch (signed 64-bit sizes) is an error even when a zero dimension
    /// makes it empty: `[0, 2^32, 2^32]` would get past a byte count and fail inside the
    /// model.
    pub fn element_count(&self) -> Result<u64, TensorError> {
        let addressable = (self.shape.iter().copied())
            .filter(|&d| d != 0)
            .try_fold(1u64, u64::checked_mul)
            .filter(|&n| n <= i64::MAX as u64);
        let Some(addressable) = addressable else {
            return Err(TensorError(format!(
                "tensor {:?}: shape {:?} has dimensions whose product is over 2^63 - 1, \
                 more than numpy or torch can index",
                self.name, self.shape
            )));
        };
        Ok(if self.shape.contains(&0) {
            0
        } else {
            addressable
        })
    }

    /// Checks that the bytes are exactly what the datatype and shape describe.
    pub fn check(&self) -> Result<(), TensorError> {
        let count = self.element_count()?;
        match self.datatype.element_size() {
            Some(size) => {
                let expected = count.checked_mul(size as u64);
                if expected != Some(self.data.len() as u64) {
                    return Err(TensorError(format!(
                        "tensor {:?}: shape {:?} of {} needs {} bytes, got {}",
                        self.name,
                        self.shape,
                        self.datatype,
                        expected.map_or("more than 2^64".into(), |n| n.to_string()),
                        self.data.len()
                    )));
                }
                if self.datatype == Datatype::Bool {
                    if let Some(at) = self.data.iter().position(|&b| b > 1) {
                        return Err(TensorError(format!(
                            "tensor {:?}: BOOL element {at} is {}, expected 0 or 1",
                            self.name, self.data[at]
                        )));
                    }
                }
            }
            None => {
                let found = bytes_elements(&self.data)
                    .map_err(|e| TensorError(format!("tensor {:?}: {e}", self.name)))?;
                if found.len() as u64 != count {
                    return Err(TensorError(format!(
                        "tensor {:?}: shape {:?} needs {count} BYTES elements, got {}",
                        self.name,
                        self.shape,
                        found.len()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Splits along axis 0 into parts of `rows[i]` rows; `rows` must sum to `shape[0]`.
    /// The parts share this tensor's bytes.
    pub fn split_rows(&self, rows: &[u64]) -> Result<Vec<Tensor>, TensorError> {
        let fail = |what: String| TensorError(format!("tensor {:?}: {what}", self.name));
        let Some((&total, inner)) = self.shape.split_first() else {
            return Err(fail("a scalar has no rows to split".into()));
        };
        let sum = rows.iter().try_fold(0u64, |sum, &n| sum.checked_add(n));
        if sum != Some(total) {
            return Err(fail(format!(
                "cannot split {total} rows into parts of {rows:?} rows"
            )));
        }
        let per_row = product(inner).ok_or_else(|| fail("shape overflows 64 bits".into()))?;
        let too_short = || {
            fail(format!(
                "{} bytes do not hold shape {:?} of {}",
                self.data.len(),
                self.shape,
                self.datatype
            ))
        };
        // Where element `n` starts: a multiple of the element size, or read off the
        // BYTES length prefixes.
        enum Elements {
            Fixed(u64),
            Prefixed(Vec<usize>),
        }
        let elements = match self.datatype.element_size() {
            Some(size) => Elements::Fixed(size as u64),
            None => Elements::Prefixed(bytes_elements(&self.data).map_err(fail)?),
        };
        let byte_at = |element: u64| -> Option<usize> {
            match &elements {
                Elements::Fixed(size) => element
                    .checked_mul(*size)
                    .and_then(|n| usize::try_from(n).ok())
                    .filter(|&n| n <= self.data.len()),
                Elements::Prefixed(_) if element == 0 => Some(0),
                Elements::Prefixed(ends) => ends.get(usize::try_from(element - 1).ok()?).copied(),
            }
        };
        let mut parts = Vec::with_capacity(rows.len());
        let (mut row, mut start) = (0u64, 0usize);
        for &n in rows {
            row += n; // cannot overflow: the sum was checked above
            let end = row
                .checked_mul(per_row)
                .and_then(byte_at)
                .ok_or_else(too_short)?;
            let mut shape = self.shape.clone();
            shape[0] = n;
            parts.push(Tensor {
                name: self.name.clone(),
                datatype: self.datatype,
                shape,
                data: self.data.slice(start..end),
            });
            start = end;
        }
        if start != self.data.len() {
            return Err(too_short());
        }
        Ok(parts)
    }
}

/// The product of dimensions, or `None` on overflow.
fn product(shape: &[u64]) -> Option<u64> {
    shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d))
}

/// The end offset of each u32-length-prefixed element of BYTES data.
fn bytes_elements(data: &[u8]) -> Result<Vec<usize>, String> {
    let mut ends = Vec::new();
    let mut at = 0usize;
    while at < data.len() {
        let Some(&[a, b, c, d]) = data.get(at..at + 4) else {
            return Err(format!("BYTES element at byte {at} has a truncated length"));
        };
        let len = u32::from_le_bytes([a, b, c, d]) as usize;
        let end = at + 4 + len;
        if end > data.len() {
            return Err(format!(
                "BYTES element at byte {at} says {len} bytes but only {} remain",
                data.len() - at - 4
            ));
        }
        ends.push(end);
        at = end;
    }
    Ok(ends)
}

/// Joins tensors along axis 0. They must share name, datatype and every other
/// dimension. One part is returned as it is, without copying.
pub fn concat(parts: &[&Tensor]) -> Result<Tensor, TensorError> {
    let first = parts
        .first()
        .ok_or_else(|| TensorError("nothing to join".into()))?;
    let (_, inner) = first
        .shape
        .split_first()
        .ok_or_else(|| TensorError(format!("tensor {:?} is a scalar; cannot join", first.name)))?;
    let mut rows = 0u64;
    for part in parts {
        let same_kind = part.name == first.name
            && part.datatype == first.datatype
            && part.shape.get(1..) == Some(inner);
        if !same_kind {
            return Err(TensorError(format!(
                "cannot join {:?} {} {:?} with {:?} {} {:?}",
                first.name, first.datatype, first.shape, part.name, part.datatype, part.shape
            )));
        }
        rows = rows.checked_add(part.shape[0]).ok_or_else(|| {
            TensorError(format!(
                "tensor {:?}: joined rows overflow 64 bits",
                first.name
            ))
        })?;
    }
    if let [only] = parts {
        return Ok((*only).clone());
    }
    let mut data = BytesMut::with_capacity(parts.iter().map(|p| p.data.len()).sum());
    for part in parts {
        data.extend_from_slice(&part.data);
    }
    let mut shape = first.shape.clone();
    shape[0] = rows;
    Ok(Tensor {
        name: first.name.clone(),
        datatype: first.datatype,
        shape,
        data: data.freeze(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(datatype: Datatype, shape: &[u64], data: &[u8]) -> Tensor {
        Tensor {
            name: "x".into(),
            datatype,
            shape: shape.to_vec(),
            data: Bytes::copy_from_slice(data),
        }
    }

    fn strings(items: &[&str]) -> Vec<u8> {
        items
            .iter()
            .flat_map(|s| {
                let mut e = (s.len() as u32).to_le_bytes().to_vec();
                e.extend(s.as_bytes());
                e
            })
            .collect()
    }

    #[test]
    fn names_round_trip_and_unknown_ones_list_the_choices() {
        for d in ALL {
            assert_eq!(d.as_str().parse::<Datatype>().unwrap(), d);
            assert_eq!(d.to_string(), d.as_str());
            assert_eq!(serde_json::to_string(&d).unwrap(), format!("\"{d}\""));
            assert_eq!(
                serde_json::from_str::<Datatype>(&format!("\"{d}\"")).unwrap(),
                d
            );
        }
        let err = "FLOAT".parse::<Datatype>().unwrap_err();
        assert_eq!(
            err,
            "unknown datatype \"FLOAT\"; expected one of BOOL, INT8, INT16, INT32, INT64, \
             UINT8, UINT16, UINT32, UINT64, FP16, FP32, FP64, BYTES"
        );
        assert!("fp32".parse::<Datatype>().is_err());
        let sizes: Vec<Option<usize>> = ALL.iter().map(|d| d.element_size()).collect();
        let one = Some(1);
        assert_eq!(
            sizes,
            [
                one,
                one,
                Some(2),
                Some(4),
                Some(8),
                one,
                Some(2),
                Some(4),
                Some(8),
                Some(2),
                Some(4),
                Some(8),
                None
            ]
        );
    }

    #[test]
    fn check_compares_bytes_with_shape() {
        tensor(Datatype::Fp32, &[2, 3], &[0; 24]).check().unwrap();
        tensor(Datatype::Fp32, &[], &[0; 4]).check().unwrap();
        tensor(Datatype::Fp32, &[0, 5], &[]).check().unwrap();
        let err = tensor(Datatype::Fp32, &[0, 1 << 32, 1 << 32], &[])
            .check()
            .unwrap_err();
        assert!(err.0.contains("[0, 4294967296, 4294967296]"), "{err}");
        let err = tensor(Datatype::Fp32, &[2, 3], &[0; 20])
            .check()
            .unwrap_err();
        assert_eq!(
            err.0,
            "tensor \"x\": shape [2, 3] of FP32 needs 24 bytes, got 20"
        );
        let err = tensor(Datatype::Bool, &[2], &[0, 2]).check().unwrap_err();
        assert_eq!(err.0, "tensor \"x\": BOOL element 1 is 2, expected 0 or 1");
        let err = tensor(Datatype::Uint8, &[u64::MAX, 3], &[])
            .check()
            .unwrap_err();
        assert!(err.0.contains("over 2^63 - 1"), "{err}");
        let err = tensor(Datatype::Fp64, &[u64::MAX / 4], &[])
            .check()
            .unwrap_err();
        assert!(err.0.contains("needs more than 2^64 bytes"), "{err}");
        tensor(Datatype::Bytes, &[2], &strings(&["ab", ""]))
            .check()
            .unwrap();
        let err = tensor(Datatype::Bytes, &[3], &strings(&["ab", ""]))
            .check()
            .unwrap_err();
        assert!(err.0.contains("needs 3 BYTES elements, got 2"), "{err}");
        let err = tensor(Datatype::Bytes, &[1], &[9, 0, 0, 0, 1])
            .check()
            .unwrap_err();
        assert!(err.0.contains("says 9 bytes but only 1 remain"), "{err}");
        let err = tensor(Datatype::Bytes, &[1], &[1, 0]).check().unwrap_err();
        assert!(err.0.contains("truncated length"), "{err}");
    }

    #[test]
    fn concat_and_split_round_trip() {
        let a = tensor(Datatype::Int16, &[1, 2], &[1, 0, 2, 0]);
        let b = tensor(Datatype::Int16, &[2, 2], &[3, 0, 4, 0, 5, 0, 6, 0]);
        let empty = tensor(Datatype::Int16, &[0, 2], &[]);
        let joined = concat(&[&a, &empty, &b]).unwrap();
        assert_eq!(joined.shape, vec![3, 2]);
        joined.check().unwrap();
        assert_eq!(
            joined.split_rows(&[1, 0, 2]).unwrap(),
            vec![a.clone(), empty, b.clone()]
        );

        let s = tensor(Datatype::Bytes, &[1, 2], &strings(&["hello", "é"]));
        let t = tensor(Datatype::Bytes, &[2, 2], &strings(&["", "world", "a", ""]));
        let joined = concat(&[&s, &t]).unwrap();
        joined.check().unwrap();
        assert_eq!(joined.shape, vec![3, 2]);
        assert_eq!(joined.split_rows(&[1, 2]).unwrap(), vec![s.clone(), t]);
        assert_eq!(joined.split_rows(&[3]).unwrap(), vec![joined.clone()]);
    }

    #[test]
    fn split_parts_share_the_bytes_and_one_part_joins_without_copying() {
        let t = tensor(Datatype::Uint8, &[4], &[1, 2, 3, 4]);
        let parts = t.split_rows(&[1, 3]).unwrap();
        assert_eq!(parts[1].data.as_ptr(), t.data[1..].as_ptr());
        let joined = concat(&[&t]).unwrap();
        assert_eq!(joined.data.as_ptr(), t.data.as_ptr());
    }

    #[test]
    fn joining_unlike_tensors_is_an_error() {
        let a = tensor(Datatype::Int16, &[1, 2], &[0; 4]);
        for other in [
            tensor(Datatype::Int16, &[1, 3], &[0; 6]),
            tensor(Datatype::Uint16, &[1, 2], &[0; 4]),
            tensor(Datatype::Int16, &[2], &[0; 4]),
            Tensor {
                name: "y".into(),
                ..a.clone()
            },
        ] {
            let err = concat(&[&a, &other]).unwrap_err();
            assert!(
                err.0.starts_with("cannot join \"x\" INT16 [1, 2] with"),
                "{err}"
            );
        }
        assert!(concat(&[]).is_err());
        let scalar = tensor(Datatype::Int16, &[], &[0; 2]);
        assert!(concat(&[&scalar, &scalar])
            .unwrap_err()
            .0
            .contains("scalar"));
        let huge = tensor(Datatype::Int16, &[u64::MAX, 0], &[]);
        let err = concat(&[&huge, &huge]).unwrap_err();
        assert!(err.0.contains("overflow"), "{err}");
    }

    #[test]
    fn splitting_wrong_rows_or_wrong_bytes_is_an_error() {
        let t = tensor(Datatype::Fp32, &[3, 1], &[0; 12]);
        let err = t.split_rows(&[1, 1]).unwrap_err();
        assert_eq!(
            err.0,
            "tensor \"x\": cannot split 3 rows into parts of [1, 1] rows"
        );
        assert!(t.split_rows(&[u64::MAX, 4]).is_err());
        assert!(tensor(Datatype::Fp32, &[], &[0; 4])
            .split_rows(&[1])
            .unwrap_err()
            .0
            .contains("scalar"));
        // Bytes that disagree with the shape (the tensor was never checked).
        for bad in [
            tensor(Datatype::Fp32, &[3, 1], &[0; 8]),
            tensor(Datatype::Fp32, &[3, 1], &[0; 16]),
            tensor(Datatype::Fp32, &[2, u64::MAX, 2], &[0; 16]),
            tensor(Datatype::Fp32, &[2, 0], &[0; 4]),
            tensor(Datatype::Bytes, &[2], &strings(&["a"])),
            tensor(Datatype::Bytes, &[2], &strings(&["a", "b", "c"])),
            tensor(Datatype::Bytes, &[2], &[1, 0, 0, 0]),
        ] {
            let rows = [1, bad.shape[0] - 1];
            let err = bad.split_rows(&rows).unwrap_err();
            assert!(err.0.starts_with("tensor \"x\": "), "{err}");
        }
    }
}
