//! Dynamic batching: requests whose inputs agree on names, datatypes and every
//! dimension but the first are joined along axis 0 into one worker call, and the
//! outputs are split back by each request's rows.

use mycel_core::tensor::{self, Tensor};

/// What must agree for two requests to share a batch: each input's name, datatype and
/// shape without its first dimension.
#[derive(Debug, PartialEq, Eq)]
pub struct BatchKey(Vec<(String, tensor::Datatype, Vec<u64>)>);

/// The key and the row count of a request, or `None` when it cannot be batched: no
/// inputs, a scalar input, or inputs that disagree on their first dimension.
pub fn batch_key(inputs: &[Tensor]) -> Option<(BatchKey, u64)> {
    let rows = *inputs.first()?.shape.first()?;
    let mut key = Vec::with_capacity(inputs.len());
    for input in inputs {
        let (&first, rest) = input.shape.split_first()?;
        if first != rows {
            return None;
        }
        key.push((input.name.clone(), input.datatype, rest.to_vec()));
    }
    key.sort_by(|a, b| a.0.cmp(&b.0));
    Some((BatchKey(key), rows))
}

/// The inputs of several requests (each already known to share one [`BatchKey`])
/// joined along axis 0, in the order of the first request's inputs.
pub fn join(requests: &[&[Tensor]]) -> Result<Vec<Tensor>, String> {
    let Some(first) = requests.first() else {
        return Ok(Vec::new());
    };
    first
        .iter()
        .map(|input| {
            let parts = requests
                .iter()
                .map(|inputs| {
                    inputs
                        .iter()
                        .find(|t| t.name == input.name)
                        .ok_or_else(|| format!("input {:?} missing from a request", input.name))
                })
                .collect::<Result<Vec<&Tensor>, String>>()?;
            tensor::concat(&parts).map_err(|e| e.to_string())
        })
        .collect()
}

/// Splits a batch's outputs back into one output list per request, `rows[i]` rows
/// each. Every output must keep axis 0: as many rows as the batch had.
pub fn split(outputs: Vec<Tensor>, rows: &[u64]) -> Result<Vec<Vec<Tensor>>, String> {
    let total: u64 = rows.iter().sum();
    let mut answers: Vec<Vec<Tensor>> = rows.iter().map(|_| Vec::new()).collect();
    for output in outputs {
        if output.shape.first() != Some(&total) {
            return Err(format!(
                "output {:?} has shape {:?}, but the batch had {total} rows; with batching on, \
                 predict must return one row per input row (or set max_batch_size = 1)",
                output.name, output.shape
            ));
        }
        let parts = output.split_rows(rows).map_err(|e| e.to_string())?;
        for (answer, part) in answers.iter_mut().zip(parts) {
            answer.push(part);
        }
    }
    Ok(answers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use mycel_core::tensor::Datatype;

    fn fp32(name: &str, shape: &[u64], values: &[f32]) -> Tensor {
        Tensor {
            name: name.into(),
            datatype: Datatype::Fp32,
            shape: shape.to_vec(),
            data: Bytes::from(
                values
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect::<Vec<u8>>(),
            ),
        }
    }

    #[test]
    fn keys_agree_on_everything_but_rows() {
        let (a, rows_a) = batch_key(&[fp32("x", &[1, 2], &[1.0, 2.0])]).unwrap();
        let (b, rows_b) = batch_key(&[fp32("x", &[3, 2], &[0.0; 6])]).unwrap();
        assert_eq!((a == b, rows_a, rows_b), (true, 1, 3));
        let (c, _) = batch_key(&[fp32("x", &[1, 3], &[0.0; 3])]).unwrap();
        assert_ne!(b, c);
        let (d, _) = batch_key(&[fp32("y", &[1, 2], &[0.0; 2])]).unwrap();
        assert_ne!(a, d);
        // Input order does not matter; disagreeing first dimensions and scalars do.
        let two = [fp32("x", &[1, 1], &[0.0]), fp32("y", &[1], &[0.0])];
        let swapped = [fp32("y", &[1], &[0.0]), fp32("x", &[1, 1], &[0.0])];
        assert_eq!(batch_key(&two).unwrap().0, batch_key(&swapped).unwrap().0);
        assert!(batch_key(&[fp32("x", &[1], &[0.0]), fp32("y", &[2], &[0.0; 2])]).is_none());
        assert!(batch_key(&[fp32("x", &[], &[0.0])]).is_none());
        assert!(batch_key(&[]).is_none());
    }

    #[test]
    fn join_then_split_gives_each_request_its_rows() {
        let a = vec![fp32("x", &[1, 2], &[1.0, 2.0])];
        let b = vec![fp32("x", &[2, 2], &[3.0, 4.0, 5.0, 6.0])];
        let joined = join(&[&a, &b]).unwrap();
        assert_eq!(joined[0].shape, vec![3, 2]);
        let answers = split(joined, &[1, 2]).unwrap();
        assert_eq!(answers, vec![a, b]);
    }

    #[test]
    fn outputs_that_lose_the_batch_axis_are_an_error() {
        let summed = vec![fp32("sum", &[1], &[21.0])];
        let err = split(summed, &[1, 2]).unwrap_err();
        assert!(err.contains("\"sum\"") && err.contains("3 rows"), "{err}");
    }
}
