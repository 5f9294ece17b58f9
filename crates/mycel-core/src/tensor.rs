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
    /// How many elements the shape holds.
    pub fn element_count(&self) -> Result<u64, TensorError> {
        self.shape
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d))
            .ok_or_else(|| {
                TensorError(format!(
                    "tensor {:?}: shape {:?} holds more elements than fit in 64 bits",
                    self.name, self.shape
                ))
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
                        expected.map_or("too many".into(), |n| n.to_string()),
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
        let Some((&total, inner)) = self.shape.split_first() else {
            return Err(TensorError(format!(
                "tensor {:?} is a scalar; it has no rows to split",
                self.name
            )));
        };
        if rows.iter().sum::<u64>() != total {
            return Err(TensorError(format!(
                "tensor {:?} has {total} rows, not {}",
                self.name,
                rows.iter().sum::<u64>()
            )));
        }
        let per_row: u64 = inner.iter().product();
        let part = |n: u64, data: Bytes| {
            let mut shape = self.shape.clone();
            shape[0] = n;
            Tensor {
                name: self.name.clone(),
                datatype: self.datatype,
                shape,
                data,
            }
        };
        let mut parts = Vec::with_capacity(rows.len());
        match self.datatype.element_size() {
            Some(size) => {
                let row_bytes = per_row as usize * size;
                let mut at = 0;
                for &n in rows {
                    let end = at + n as usize * row_bytes;
                    if end > self.data.len() {
                        return Err(TensorError(format!(
                            "tensor {:?} is shorter than its shape",
                            self.name
                        )));
                    }
                    parts.push(part(n, self.data.slice(at..end)));
                    at = end;
                }
            }
            None => {
                let ends = bytes_elements(&self.data)
                    .map_err(|e| TensorError(format!("tensor {:?}: {e}", self.name)))?;
                let mut element = 0usize;
                let mut at = 0usize;
                for &n in rows {
                    element += (n * per_row) as usize;
                    let end = if element == 0 {
                        0
                    } else {
                        *ends.get(element - 1).ok_or_else(|| {
                            TensorError(format!("tensor {:?} has too few elements", self.name))
                        })?
                    };
                    parts.push(part(n, self.data.slice(at..end)));
                    at = end;
                }
            }
        }
        Ok(parts)
    }
}

/// The end offset of each u32-length-prefixed element of BYTES data.
fn bytes_elements(data: &[u8]) -> Result<Vec<usize>, String> {
    let mut ends = Vec::new();
    let mut at = 0usize;
    while at < data.len() {
        let prefix = data
            .get(at..at + 4)
            .ok_or_else(|| format!("BYTES element at byte {at} has a truncated length"))?;
        let len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
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
/// dimension.
pub fn concat(parts: &[&Tensor]) -> Result<Tensor, TensorError> {
    let first = parts
        .first()
        .ok_or_else(|| TensorError("nothing to join".into()))?;
    let (_, inner) = first
        .shape
        .split_first()
        .ok_or_else(|| TensorError(format!("tensor {:?} is a scalar; cannot join", first.name)))?;
    let mut rows = 0u64;
    let mut data = BytesMut::with_capacity(parts.iter().map(|p| p.data.len()).sum());
    for part in parts {
        if part.name != first.name
            || part.datatype != first.datatype
            || part.shape.get(1..) != Some(inner)
        {
            return Err(TensorError(format!(
                "cannot join {:?} {} {:?} with {:?} {} {:?}",
                first.name, first.datatype, first.shape, part.name, part.datatype, part.shape
            )));
        }
        rows += part.shape[0];
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
            assert_eq!(serde_json::to_string(&d).unwrap(), format!("\"{d}\""));
        }
        let err = "FLOAT".parse::<Datatype>().unwrap_err();
        assert!(err.contains("FP32") && err.contains("BYTES"), "{err}");
    }

    #[test]
    fn check_compares_bytes_with_shape() {
        tensor(Datatype::Fp32, &[2, 3], &[0; 24]).check().unwrap();
        let err = tensor(Datatype::Fp32, &[2, 3], &[0; 20])
            .check()
            .unwrap_err();
        assert!(err.0.contains("needs 24 bytes, got 20"), "{err}");
        assert!(tensor(Datatype::Bool, &[2], &[0, 2]).check().is_err());
        assert!(tensor(Datatype::Uint8, &[u64::MAX, 3], &[])
            .check()
            .is_err());
        tensor(Datatype::Bytes, &[2], &strings(&["ab", ""]))
            .check()
            .unwrap();
        assert!(tensor(Datatype::Bytes, &[3], &strings(&["ab", ""]))
            .check()
            .is_err());
        assert!(tensor(Datatype::Bytes, &[1], &[9, 0, 0, 0, 1])
            .check()
            .is_err());
    }

    #[test]
    fn concat_and_split_round_trip() {
        let a = tensor(Datatype::Int16, &[1, 2], &[1, 0, 2, 0]);
        let b = tensor(Datatype::Int16, &[2, 2], &[3, 0, 4, 0, 5, 0, 6, 0]);
        let joined = concat(&[&a, &b]).unwrap();
        assert_eq!(joined.shape, vec![3, 2]);
        assert_eq!(joined.split_rows(&[1, 2]).unwrap(), vec![a.clone(), b]);
        let c = tensor(Datatype::Int16, &[1, 3], &[0; 6]);
        assert!(concat(&[&a, &c]).is_err());

        let s = tensor(Datatype::Bytes, &[1], &strings(&["hello"]));
        let t = tensor(Datatype::Bytes, &[2], &strings(&["", "world"]));
        let joined = concat(&[&s, &t]).unwrap();
        joined.check().unwrap();
        assert_eq!(joined.split_rows(&[1, 2]).unwrap(), vec![s, t]);
        assert!(joined.split_rows(&[1, 1]).is_err());
    }
}
