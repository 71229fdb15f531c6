//! Reading and writing float32 arrays in NumPy's `.npy` format (version
//! 1.0/2.0, little-endian, C order).

use anyhow::Context;
use std::path::Path;

/// A dense array: shape and row-major values.
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

fn parse_header(h: &str) -> Option<(String, bool, Vec<usize>)> {
    let field = |key: &str| -> Option<&str> {
        let at = h.find(&format!("'{key}'"))? + key.len() + 2;
        let rest = h[at..].trim_start().strip_prefix(':')?.trim_start();
        Some(rest)
    };
    let descr = field("descr")?;
    let descr = descr.strip_prefix('\'')?.split('\'').next()?.to_string();
    let fortran = field("fortran_order")?.starts_with("True");
    let shape = field("shape")?.strip_prefix('(')?.split(')').next()?;
    let dims = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().ok())
        .collect::<Option<Vec<usize>>>()?;
    Some((descr, fortran, dims))
}

/// Reads a `.npy` file of float32 (or float64, converted) values.
pub fn read(path: &Path) -> anyhow::Result<Array> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let bad = |why: &str| anyhow::anyhow!("{}: not a valid .npy file: {why}", path.display());
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("missing magic string"));
    }
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(bad(&format!("unsupported version {v}"))),
    };
    let header = bytes
        .get(start..start + len)
        .ok_or_else(|| bad("truncated header"))?;
    let header = std::str::from_utf8(header).map_err(|_| bad("header is not text"))?;
    let (descr, fortran, shape) = parse_header(header).ok_or_else(|| bad("unreadable header"))?;
    if fortran {
        return Err(bad(
            "Fortran order is not supported; save with np.ascontiguousarray",
        ));
    }
    let n: usize = shape.iter().product();
    let body = &bytes[start + len..];
    let data: Vec<f32> = match descr.as_str() {
        "<f4" | "|f4" => {
            if body.len() != n * 4 {
                return Err(bad(&format!(
                    "{} data bytes for shape {shape:?}, expected {}",
                    body.len(),
                    n * 4
                )));
            }
            body.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        }
        "<f8" => {
            if body.len() != n * 8 {
                return Err(bad(&format!(
                    "{} data bytes for shape {shape:?}, expected {}",
                    body.len(),
                    n * 8
                )));
            }
            body.chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                .collect()
        }
        other => return Err(bad(&format!("dtype '{other}' is not float32 or float64"))),
    };
    Ok(Array { shape, data })
}

/// Writes float32 values as a version 1.0 `.npy` file (atomically).
pub fn write(path: &Path, a: &Array) -> anyhow::Result<()> {
    let shape = match a.shape.len() {
        1 => format!("({},)", a.shape[0]),
        _ => format!(
            "({})",
            a.shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    // Pad so that the data starts on a 64-byte boundary, ending in '\n'.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + a.data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in &a.data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    crate::util::write_atomic(path, &out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        let a = Array {
            shape: vec![2, 3],
            data: vec![1.0, -2.0, 3.5, 0.0, 1e-3, 7.0],
        };
        write(&p, &a).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        assert_eq!(read(&p).unwrap(), a);
        std::fs::write(&p, b"not numpy").unwrap();
        assert!(read(&p).unwrap_err().to_string().contains("magic"));
        let mut v = bytes.clone();
        v.truncate(v.len() - 4);
        std::fs::write(&p, &v).unwrap();
        assert!(read(&p).unwrap_err().to_string().contains("data bytes"));
    }
}
