//! Writes PyTorch checkpoints without PyTorch: the pickle opcodes that
//! `torch.save` emits for `{'state_dict': OrderedDict(name -> tensor)}`, in
//! the zip format (torch ≥ 1.6) and the legacy one.

use ofa::nn::TensorMap;
use std::io::Write;

struct Pickler(Vec<u8>);

impl Pickler {
    fn op(&mut self, b: u8) {
        self.0.push(b);
    }
    fn global(&mut self, module: &str, name: &str) {
        self.op(b'c');
        self.0
            .extend_from_slice(format!("{module}\n{name}\n").as_bytes());
    }
    fn text(&mut self, s: &str) {
        self.op(b'X');
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }
    fn int(&mut self, i: i64) {
        self.op(b'J');
        self.0.extend_from_slice(&(i as i32).to_le_bytes());
    }
    fn ints_tuple(&mut self, v: &[usize]) {
        self.op(b'(');
        for &x in v {
            self.int(x as i64);
        }
        self.op(b't');
    }
    fn ordered_dict(&mut self) {
        self.global("collections", "OrderedDict");
        self.op(b')');
        self.op(b'R');
    }
    /// `torch._utils._rebuild_tensor_v2(storage, 0, size, stride, False, OrderedDict())`.
    fn tensor(&mut self, key: &str, shape: &[usize], long: bool, legacy: bool) {
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.op(b'(');
        self.op(b'(');
        self.text("storage");
        self.global("torch", if long { "LongStorage" } else { "FloatStorage" });
        self.text(key);
        self.text("cpu");
        self.int(shape.iter().product::<usize>().max(1) as i64);
        if legacy {
            self.op(b'N');
        }
        self.op(b't');
        self.op(b'Q');
        self.int(0);
        let mut stride = vec![1usize; shape.len()];
        for i in (0..shape.len().saturating_sub(1)).rev() {
            stride[i] = stride[i + 1] * shape[i + 1];
        }
        self.ints_tuple(shape);
        self.ints_tuple(&stride);
        self.op(0x89);
        self.ordered_dict();
        self.op(b't');
        self.op(b'R');
    }
}

/// One tensor to save: name, shape, values; `long` tensors hold i64 (BN
/// counters).
pub struct Entry {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
    pub long: bool,
}

impl Entry {
    fn bytes(&self) -> Vec<u8> {
        if self.long {
            self.values
                .iter()
                .flat_map(|v| (*v as i64).to_le_bytes())
                .collect()
        } else {
            self.values.iter().flat_map(|v| v.to_le_bytes()).collect()
        }
    }
}

/// Entries of a supernet map, with `num_batches_tracked` counters as a real
/// checkpoint has them.
pub fn entries(map: &TensorMap) -> Vec<Entry> {
    let mut out = Vec::new();
    for (k, t) in map {
        out.push(Entry {
            name: k.clone(),
            shape: t.shape.clone(),
            values: t.data.clone(),
            long: false,
        });
        if let Some(p) = k.strip_suffix(".running_var") {
            out.push(Entry {
                name: format!("{p}.num_batches_tracked"),
                shape: vec![],
                values: vec![7.0],
                long: true,
            });
        }
    }
    out
}

fn state_dict_pickle(entries: &[Entry], legacy: bool) -> Vec<u8> {
    let mut p = Pickler(vec![0x80, 0x02]);
    p.op(b'}');
    p.text("state_dict");
    p.ordered_dict();
    p.op(b'(');
    for (i, e) in entries.iter().enumerate() {
        p.text(&e.name);
        p.tensor(&i.to_string(), &e.shape, e.long, legacy);
    }
    p.op(b'u');
    p.op(b's');
    p.op(b'.');
    p.0
}

/// The zip format of `torch.save` (PyTorch ≥ 1.6).
pub fn write_zip(path: &std::path::Path, entries: &[Entry]) {
    let f = std::fs::File::create(path).unwrap();
    let mut z = zip::ZipWriter::new(f);
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.start_file("archive/data.pkl", opts).unwrap();
    z.write_all(&state_dict_pickle(entries, false)).unwrap();
    for (i, e) in entries.iter().enumerate() {
        z.start_file(format!("archive/data/{i}"), opts).unwrap();
        z.write_all(&e.bytes()).unwrap();
    }
    z.start_file("archive/version", opts).unwrap();
    z.write_all(b"3\n").unwrap();
    z.finish().unwrap();
}

/// The legacy (pre-1.6) format: magic, protocol, system info, the object,
/// the storage keys, then each storage as a u64 count and its bytes.
pub fn write_legacy(path: &std::path::Path, entries: &[Entry]) {
    let mut out = vec![
        0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, b'.',
    ];
    out.extend_from_slice(&[0x80, 0x02, b'M', 0xe9, 0x03, b'.']);
    let mut p = Pickler(vec![0x80, 0x02]);
    p.op(b'}');
    p.op(b'(');
    p.text("protocol_version");
    p.int(1001);
    p.text("little_endian");
    p.op(0x88);
    p.text("type_sizes");
    p.op(b'}');
    p.op(b'(');
    for (k, v) in [("short", 2), ("int", 4), ("long", 4)] {
        p.text(k);
        p.int(v);
    }
    p.op(b'u');
    p.op(b'u');
    p.op(b'.');
    out.extend(p.0);
    out.extend(state_dict_pickle(entries, true));
    let mut keys = Pickler(vec![0x80, 0x02]);
    keys.op(b']');
    keys.op(b'(');
    for i in 0..entries.len() {
        keys.text(&i.to_string());
    }
    keys.op(b'e');
    keys.op(b'.');
    out.extend(keys.0);
    for e in entries {
        out.extend_from_slice(&(e.values.len().max(1) as u64).to_le_bytes());
        out.extend(e.bytes());
    }
    std::fs::write(path, out).unwrap();
}
