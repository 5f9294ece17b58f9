//! Reading NumPy `.npy` files (format versions 1 to 3) into tensors, for `mycel
//! predict --input name=file.npy`.

use bytes::Bytes;
use mycel_core::tensor::{Datatype, Tensor};

const MAGIC: &[u8] = b"\x93NUMPY";

/// The tensor stored in a `.npy` file's bytes.
pub fn parse(name: &str, bytes: &[u8]) -> Result<Tensor, String> {
    let rest = bytes
        .strip_prefix(MAGIC)
        .ok_or("not a .npy file (no \\x93NUMPY magic)")?;
    let (&major, rest) = rest.split_first().ok_or("truncated .npy header")?;
    let rest = rest.get(1..).ok_or("truncated .npy header")?;
    let (header_len, rest) = match major {
        1 => {
            let len = rest.get(..2).ok_or("truncated .npy header")?;
            (u16::from_le_bytes([len[0], len[1]]) as usize, &rest[2..])
        }
        2 | 3 => {
            let len = rest.get(..4).ok_or("truncated .npy header")?;
            (
                u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize,
                &rest[4..],
            )
        }
        v => {
            return Err(format!(
                ".npy format version {v} is not supported (1 to 3 are)"
            ))
        }
    };
    let header = rest.get(..header_len).ok_or("truncated .npy header")?;
    let header = std::str::from_utf8(header).map_err(|_| ".npy header is not text")?;
    let data = &rest[header_len..];

    let descr = field(header, "descr")?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    let datatype = datatype_of(descr)?;
    if field(header, "fortran_order")? != "False" {
        return Err(
            "Fortran-ordered arrays are not supported; save with np.ascontiguousarray".into(),
        );
    }
    let shape = field(header, "shape")?;
    let shape: Vec<u64> = shape
        .trim_start_matches('(')
        .trim_end_matches(')')
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| {
            d.parse::<u64>()
                .map_err(|_| format!("bad dimension {d:?} in .npy shape"))
        })
        .collect::<Result<_, _>>()?;
    let tensor = Tensor {
        name: name.to_owned(),
        datatype,
        shape,
        data: Bytes::copy_from_slice(data),
    };
    tensor.check().map_err(|e| e.to_string())?;
    Ok(tensor)
}

/// The value of `key` in the header's Python dict literal, as text.
fn field<'a>(header: &'a str, key: &str) -> Result<&'a str, String> {
    let quoted = [format!("'{key}'"), format!("\"{key}\"")];
    let start = quoted
        .iter()
        .find_map(|k| header.find(k.as_str()).map(|at| at + k.len()))
        .ok_or_else(|| format!(".npy header has no {key:?}"))?;
    let value = header[start..]
        .trim_start()
        .strip_prefix(':')
        .ok_or("bad .npy header")?;
    let value = value.trim_start();
    // The shape is a tuple holding commas; every other value ends at the next comma.
    let end = if value.starts_with('(') {
        value.find(')').map(|i| i + 1)
    } else {
        value.find([',', '}'])
    }
    .ok_or("bad .npy header")?;
    Ok(value[..end].trim())
}

fn datatype_of(descr: &str) -> Result<Datatype, String> {
    // '|' means byte order does not apply; '<' is little-endian, '=' native (x86 and
    // ARM are little-endian).
    let (order, code) = descr.split_at(descr.len().min(1));
    if !matches!(order, "<" | "|" | "=") {
        return Err(format!(
            "dtype {descr:?} is big-endian; save the array as little-endian (arr.astype(arr.dtype.newbyteorder('<')))"
        ));
    }
    Ok(match code {
        "b1" => Datatype::Bool,
        "i1" => Datatype::Int8,
        "i2" => Datatype::Int16,
        "i4" => Datatype::Int32,
        "i8" => Datatype::Int64,
        "u1" => Datatype::Uint8,
        "u2" => Datatype::Uint16,
        "u4" => Datatype::Uint32,
        "u8" => Datatype::Uint64,
        "f2" => Datatype::Fp16,
        "f4" => Datatype::Fp32,
        "f8" => Datatype::Fp64,
        _ => {
            return Err(format!(
                "dtype {descr:?} has no Open Inference Protocol datatype"
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(header: &str, data: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend([1, 0]);
        out.extend((header.len() as u16).to_le_bytes());
        out.extend(header.as_bytes());
        out.extend(data);
        out
    }

    #[test]
    fn reads_what_numpy_writes() {
        // np.save of np.arange(6, dtype=np.float32).reshape(2, 3)
        let data: Vec<u8> = (0..6).flat_map(|v| (v as f32).to_le_bytes()).collect();
        let file = npy(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }          \n",
            &data,
        );
        let t = parse("x", &file).unwrap();
        assert_eq!((t.datatype, t.shape.clone()), (Datatype::Fp32, vec![2, 3]));
        assert_eq!(&t.data[..], &data[..]);

        let scalar = npy(
            "{'descr': '|u1', 'fortran_order': False, 'shape': (), }\n",
            &[7],
        );
        assert_eq!(parse("s", &scalar).unwrap().shape, Vec::<u64>::new());
        let vector = npy(
            "{'descr': '<i8', 'fortran_order': False, 'shape': (1,), }\n",
            &[0; 8],
        );
        assert_eq!(parse("v", &vector).unwrap().shape, vec![1]);
    }

    #[test]
    fn refuses_what_it_cannot_read_faithfully() {
        let err = |header: &str, data: &[u8]| parse("x", &npy(header, data)).unwrap_err();
        assert!(err(
            "{'descr': '>f4', 'fortran_order': False, 'shape': (1,), }",
            &[0; 4]
        )
        .contains("big-endian"));
        assert!(err(
            "{'descr': '<f4', 'fortran_order': True, 'shape': (1,), }",
            &[0; 4]
        )
        .contains("Fortran"));
        assert!(err(
            "{'descr': '<c8', 'fortran_order': False, 'shape': (1,), }",
            &[0; 8]
        )
        .contains("no Open Inference"));
        assert!(!err(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }",
            &[0; 4]
        )
        .is_empty());
        assert!(parse("x", b"PK\x03\x04").unwrap_err().contains("magic"));
        assert!(parse("x", &MAGIC[..3]).is_err());
    }
}
