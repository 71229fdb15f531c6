//! Named weights: the supernet as a map from reference checkpoint keys
//! (`blocks.3.conv.depth_conv.conv.7to5_matrix`, …) to host tensors, and
//! safetensors files of such maps.
//!
//! This is the one table between our modules and the reference names; the
//! PyTorch importer, channel sorting, checkpoints and exports all go
//! through it.

use super::OfaBackend;
use super::layers::{ElasticBn, ElasticConv, ElasticDepthwise, ElasticSe, Linear};
use super::subnet::Subnet;
use super::supernet::{ConvBn, ConvBnAct, MbConv, Supernet, SupernetConfig};
use crate::space::{Arch, Space};
use burn::module::{Param, ParamId, RunningState};
use burn::tensor::{Tensor, TensorData, backend::Backend};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

/// A dense f32 tensor in host memory, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub fn from_tensor<B: Backend, const D: usize>(t: Tensor<B, D>) -> Self {
        let shape = t.dims().to_vec();
        let data = t
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .expect("f32 tensor data");
        HostTensor { shape, data }
    }

    pub fn to_tensor<B: Backend, const D: usize>(&self, device: &B::Device) -> Tensor<B, D> {
        let shape: [usize; D] = self
            .shape
            .clone()
            .try_into()
            .expect("rank checked by caller");
        Tensor::from_data(TensorData::new(self.data.clone(), shape), device)
    }

    /// Reorders the entries along `axis` so that new index `i` holds old
    /// index `perm[i]` (like `torch.index_select`).
    pub fn select(&self, axis: usize, perm: &[usize]) -> HostTensor {
        let outer: usize = self.shape[..axis].iter().product();
        let n = self.shape[axis];
        let inner: usize = self.shape[axis + 1..].iter().product();
        assert_eq!(perm.len(), n, "permutation length");
        let mut data = Vec::with_capacity(self.data.len());
        for o in 0..outer {
            for &p in perm {
                let start = (o * n + p) * inner;
                data.extend_from_slice(&self.data[start..start + inner]);
            }
        }
        HostTensor {
            shape: self.shape.clone(),
            data,
        }
    }
}

/// Named host tensors with reference keys.
pub type TensorMap = BTreeMap<String, HostTensor>;

/// A weight file or map that does not fit the network.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("missing tensor '{0}'")]
    Missing(String),
    #[error("tensor '{key}' has shape {got:?}, the network needs {expected:?}")]
    Shape {
        key: String,
        got: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("unexpected tensor(s) not used by the network: {0}")]
    Extra(String),
    #[error("{path}: {problem}")]
    File { path: String, problem: String },
}

/// Walks the module tree with reference keys, collecting values, parameter
/// ids, or both.
struct Exporter {
    values: Option<TensorMap>,
    ids: Option<HashMap<ParamId, String>>,
}

impl Exporter {
    fn param<B: OfaBackend, const D: usize>(&mut self, key: String, p: &Param<Tensor<B, D>>) {
        if let Some(ids) = &mut self.ids {
            ids.insert(p.id, key.clone());
        }
        if let Some(out) = &mut self.values {
            out.insert(key, HostTensor::from_tensor(p.val()));
        }
    }
    fn running<B: OfaBackend>(&mut self, key: String, s: &RunningState<Tensor<B, 1>>) {
        if let Some(out) = &mut self.values {
            out.insert(key, HostTensor::from_tensor(s.value_sync()));
        }
    }
}

/// Takes tensors out of a map, checking shapes, and remembers what it used.
struct Importer<'a> {
    src: &'a TensorMap,
    used: BTreeSet<String>,
}

impl Importer<'_> {
    fn take(&mut self, key: &str, expected: &[usize]) -> Result<&HostTensor, StateError> {
        let t = self
            .src
            .get(key)
            .ok_or_else(|| StateError::Missing(key.to_string()))?;
        if t.shape != expected {
            return Err(StateError::Shape {
                key: key.to_string(),
                got: t.shape.clone(),
                expected: expected.to_vec(),
            });
        }
        self.used.insert(key.to_string());
        Ok(t)
    }

    fn param<B: OfaBackend, const D: usize>(
        &mut self,
        key: String,
        p: Param<Tensor<B, D>>,
    ) -> Result<Param<Tensor<B, D>>, StateError> {
        let dims = p.dims();
        let t = self.take(&key, &dims)?.clone();
        // `map` keeps the parameter id, so optimizer state stays attached.
        Ok(p.map(|old| {
            let require_grad = old.is_require_grad();
            t.to_tensor(&old.device()).set_require_grad(require_grad)
        }))
    }

    fn running<B: OfaBackend>(
        &mut self,
        key: String,
        s: RunningState<Tensor<B, 1>>,
    ) -> Result<RunningState<Tensor<B, 1>>, StateError> {
        let old = s.value_sync();
        let t = self.take(&key, &old.dims())?;
        Ok(RunningState::new(t.to_tensor(&old.device())))
    }
}

impl<B: OfaBackend> ElasticConv<B> {
    fn export(&self, p: &str, e: &mut Exporter) {
        e.param(format!("{p}.weight"), &self.weight);
        if let Some(b) = &self.bias {
            e.param(format!("{p}.bias"), b);
        }
    }
    fn import(mut self, p: &str, i: &mut Importer) -> Result<Self, StateError> {
        self.weight = i.param(format!("{p}.weight"), self.weight)?;
        if let Some(b) = self.bias.take() {
            self.bias = Some(i.param(format!("{p}.bias"), b)?);
        }
        Ok(self)
    }
}

impl<B: OfaBackend> ElasticBn<B> {
    fn export(&self, p: &str, e: &mut Exporter) {
        e.param(format!("{p}.weight"), &self.gamma);
        e.param(format!("{p}.bias"), &self.beta);
        e.running(format!("{p}.running_mean"), &self.running_mean);
        e.running(format!("{p}.running_var"), &self.running_var);
    }
    fn import(mut self, p: &str, i: &mut Importer) -> Result<Self, StateError> {
        self.gamma = i.param(format!("{p}.weight"), self.gamma)?;
        self.beta = i.param(format!("{p}.bias"), self.beta)?;
        self.running_mean = i.running(format!("{p}.running_mean"), self.running_mean)?;
        self.running_var = i.running(format!("{p}.running_var"), self.running_var)?;
        Ok(self)
    }
}

impl<B: OfaBackend> ElasticDepthwise<B> {
    /// Elastic kernels are named `{p}.conv.weight` + `{p}.7to5_matrix`…;
    /// a fixed kernel is a plain conv, `{p}.weight`.
    fn keys(&self, p: &str) -> (String, Vec<String>) {
        if self.transforms.is_empty() {
            return (format!("{p}.weight"), vec![]);
        }
        let mats = (0..self.transforms.len())
            .map(|i| format!("{p}.{}to{}_matrix", self.kernels[i + 1], self.kernels[i]))
            .collect();
        (format!("{p}.conv.weight"), mats)
    }
    fn export(&self, p: &str, e: &mut Exporter) {
        let (w, mats) = self.keys(p);
        e.param(w, &self.weight);
        for (k, m) in mats.into_iter().zip(&self.transforms) {
            e.param(k, m);
        }
    }
    fn import(mut self, p: &str, i: &mut Importer) -> Result<Self, StateError> {
        let (w, mats) = self.keys(p);
        self.weight = i.param(w, self.weight)?;
        self.transforms = mats
            .into_iter()
            .zip(std::mem::take(&mut self.transforms))
            .map(|(k, m)| i.param(k, m))
            .collect::<Result<_, _>>()?;
        Ok(self)
    }
}

impl<B: OfaBackend> ElasticSe<B> {
    fn export(&self, p: &str, e: &mut Exporter) {
        e.param(format!("{p}.fc.reduce.weight"), &self.reduce_weight);
        e.param(format!("{p}.fc.reduce.bias"), &self.reduce_bias);
        e.param(format!("{p}.fc.expand.weight"), &self.expand_weight);
        e.param(format!("{p}.fc.expand.bias"), &self.expand_bias);
    }
    fn import(mut self, p: &str, i: &mut Importer) -> Result<Self, StateError> {
        self.reduce_weight = i.param(format!("{p}.fc.reduce.weight"), self.reduce_weight)?;
        self.reduce_bias = i.param(format!("{p}.fc.reduce.bias"), self.reduce_bias)?;
        self.expand_weight = i.param(format!("{p}.fc.expand.weight"), self.expand_weight)?;
        self.expand_bias = i.param(format!("{p}.fc.expand.bias"), self.expand_bias)?;
        Ok(self)
    }
}

/// Dynamic layers of the reference wrap their conv and BN once more
/// (`conv.conv`, `bn.bn`).
fn sub(p: &str, name: &str, dynamic: bool) -> String {
    if dynamic {
        format!("{p}.{name}.{name}")
    } else {
        format!("{p}.{name}")
    }
}

impl<B: OfaBackend> ConvBn<B> {
    fn export(&self, p: &str, dynamic: bool, e: &mut Exporter) {
        self.conv.export(&sub(p, "conv", dynamic), e);
        self.bn.export(&sub(p, "bn", dynamic), e);
    }
    fn import(mut self, p: &str, dynamic: bool, i: &mut Importer) -> Result<Self, StateError> {
        self.conv = self.conv.import(&sub(p, "conv", dynamic), i)?;
        self.bn = self.bn.import(&sub(p, "bn", dynamic), i)?;
        Ok(self)
    }
}

impl<B: OfaBackend> ConvBnAct<B> {
    fn export(&self, p: &str, e: &mut Exporter) {
        self.conv.export(&format!("{p}.conv"), e);
        if let Some(bn) = &self.bn {
            bn.export(&format!("{p}.bn"), e);
        }
    }
    fn import(mut self, p: &str, i: &mut Importer) -> Result<Self, StateError> {
        self.conv = self.conv.import(&format!("{p}.conv"), i)?;
        if let Some(bn) = self.bn.take() {
            self.bn = Some(bn.import(&format!("{p}.bn"), i)?);
        }
        Ok(self)
    }
}

impl<B: OfaBackend> MbConv<B> {
    fn export(&self, p: &str, dynamic: bool, e: &mut Exporter) {
        if let Some(ib) = &self.inverted_bottleneck {
            ib.export(&format!("{p}.inverted_bottleneck"), dynamic, e);
        }
        self.depth_conv.export(&format!("{p}.depth_conv.conv"), e);
        self.depth_bn
            .export(&sub(&format!("{p}.depth_conv"), "bn", dynamic), e);
        if let Some(se) = &self.se {
            se.export(&format!("{p}.depth_conv.se"), e);
        }
        self.point_linear
            .export(&format!("{p}.point_linear"), dynamic, e);
    }
    fn import(mut self, p: &str, dynamic: bool, i: &mut Importer) -> Result<Self, StateError> {
        if let Some(ib) = self.inverted_bottleneck.take() {
            self.inverted_bottleneck =
                Some(ib.import(&format!("{p}.inverted_bottleneck"), dynamic, i)?);
        }
        self.depth_conv = self.depth_conv.import(&format!("{p}.depth_conv.conv"), i)?;
        self.depth_bn = self
            .depth_bn
            .import(&sub(&format!("{p}.depth_conv"), "bn", dynamic), i)?;
        if let Some(se) = self.se.take() {
            self.se = Some(se.import(&format!("{p}.depth_conv.se"), i)?);
        }
        self.point_linear = self
            .point_linear
            .import(&format!("{p}.point_linear"), dynamic, i)?;
        Ok(self)
    }
}

impl<B: OfaBackend> Linear<B> {
    fn export(&self, p: &str, e: &mut Exporter) {
        e.param(format!("{p}.weight"), &self.weight);
        e.param(format!("{p}.bias"), &self.bias);
    }
    fn import(mut self, p: &str, i: &mut Importer) -> Result<Self, StateError> {
        self.weight = i.param(format!("{p}.weight"), self.weight)?;
        self.bias = i.param(format!("{p}.bias"), self.bias)?;
        Ok(self)
    }
}

impl<B: OfaBackend> Supernet<B> {
    /// Reference key of the head layer before pooling.
    fn pre_pool_name(&self) -> &'static str {
        if self.post_pool.is_some() {
            "final_expand_layer"
        } else {
            "feature_mix_layer"
        }
    }

    /// Every parameter and running statistic under its reference key.
    pub fn to_tensor_map(&self) -> TensorMap {
        let mut e = Exporter {
            values: Some(TensorMap::new()),
            ids: None,
        };
        self.walk(&mut e);
        e.values.unwrap_or_default()
    }

    /// The reference key of every trainable parameter, by parameter id
    /// (optimizer state and gradients are keyed by name through this).
    pub fn param_names(&self) -> HashMap<ParamId, String> {
        let mut e = Exporter {
            values: None,
            ids: Some(HashMap::new()),
        };
        self.walk(&mut e);
        e.ids.unwrap_or_default()
    }

    fn walk(&self, e: &mut Exporter) {
        self.first_conv.export("first_conv", e);
        self.first_block.export("blocks.0.conv", false, e);
        for (i, b) in self.blocks.iter().enumerate() {
            b.export(&format!("blocks.{}.conv", i + 1), true, e);
        }
        if let Some(l) = &self.pre_pool {
            l.export(self.pre_pool_name(), e);
        }
        if let Some(l) = &self.post_pool {
            l.export("feature_mix_layer", e);
        }
        self.classifier.export("classifier.linear", e);
    }

    /// Replaces every tensor from a map with reference keys. Keys ending in
    /// `num_batches_tracked` are ignored; any other missing, extra or
    /// mis-shaped tensor is an error naming the key. Parameter ids are kept.
    pub fn load_tensor_map(mut self, src: &TensorMap) -> Result<Self, StateError> {
        let mut i = Importer {
            src,
            used: BTreeSet::new(),
        };
        let pre = self.pre_pool_name();
        self.first_conv = self.first_conv.import("first_conv", &mut i)?;
        self.first_block = self.first_block.import("blocks.0.conv", false, &mut i)?;
        self.blocks = std::mem::take(&mut self.blocks)
            .into_iter()
            .enumerate()
            .map(|(n, b)| b.import(&format!("blocks.{}.conv", n + 1), true, &mut i))
            .collect::<Result<_, _>>()?;
        if let Some(l) = self.pre_pool.take() {
            self.pre_pool = Some(l.import(pre, &mut i)?);
        }
        if let Some(l) = self.post_pool.take() {
            self.post_pool = Some(l.import("feature_mix_layer", &mut i)?);
        }
        self.classifier = self.classifier.import("classifier.linear", &mut i)?;
        let extra: Vec<&String> = src
            .keys()
            .filter(|k| !i.used.contains(*k) && !k.ends_with("num_batches_tracked"))
            .collect();
        if !extra.is_empty() {
            let shown: Vec<&str> = extra.iter().take(8).map(|s| s.as_str()).collect();
            let more = if extra.len() > 8 {
                format!(" (and {} more)", extra.len() - 8)
            } else {
                String::new()
            };
            return Err(StateError::Extra(format!("{}{more}", shown.join(", "))));
        }
        Ok(self)
    }
}

/// A file error naming the file.
fn file_error(path: &Path, problem: impl std::fmt::Display) -> StateError {
    StateError::File {
        path: path.display().to_string(),
        problem: problem.to_string(),
    }
}

/// Writes a file atomically (temporary name, then rename).
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    crate::util::write_atomic(path, bytes).map_err(|e| file_error(path, format!("{e:#}")))
}

/// Writes tensors and string metadata as safetensors, atomically (temporary
/// file, then rename).
pub fn write_safetensors(
    path: &Path,
    tensors: &TensorMap,
    metadata: HashMap<String, String>,
) -> Result<(), StateError> {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(k, t)| {
            let b: Vec<u8> = t.data.iter().flat_map(|x| x.to_le_bytes()).collect();
            (k.clone(), b, t.shape.clone())
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(k, b, s)| {
            let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .expect("consistent tensor view");
            (k.clone(), v)
        })
        .collect();
    let data = safetensors::tensor::serialize(views, &Some(metadata))
        .map_err(|e| file_error(path, format!("cannot serialize: {e}")))?;
    write_file(path, &data)
}

/// Reads a safetensors file into host tensors and its metadata.
pub fn read_safetensors(path: &Path) -> Result<(TensorMap, HashMap<String, String>), StateError> {
    let file_err = |problem: String| StateError::File {
        path: path.display().to_string(),
        problem,
    };
    let bytes = std::fs::read(path).map_err(|e| file_err(format!("cannot read: {e}")))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| file_err(format!("not a safetensors file: {e}")))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| file_err(format!("corrupt safetensors file: {e}")))?;
    let mut map = TensorMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(file_err(format!(
                "tensor '{name}' is {:?}, expected F32",
                view.dtype()
            )));
        }
        let data = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        map.insert(
            name,
            HostTensor {
                shape: view.shape().to_vec(),
                data,
            },
        );
    }
    Ok((map, meta.metadata().clone().unwrap_or_default()))
}

const FORMAT: &str = "ofa-supernet/1";

/// Saves a supernet: its tensors under reference keys, and its space.
pub fn save_supernet<B: OfaBackend>(net: &Supernet<B>, path: &Path) -> Result<(), StateError> {
    let meta = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("space".to_string(), json(&net.space)),
    ]);
    write_safetensors(path, &net.to_tensor_map(), meta)
}

/// Loads a supernet file written by [`save_supernet`]. With `expect`, the
/// file's space must equal that space.
pub fn load_supernet<B: OfaBackend>(
    path: &Path,
    expect: Option<&Space>,
    device: &B::Device,
) -> Result<Supernet<B>, StateError> {
    let file_err = |problem: String| StateError::File {
        path: path.display().to_string(),
        problem,
    };
    let (map, meta) = read_safetensors(path)?;
    if meta.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(file_err(format!(
            "not an ofa supernet file (metadata 'format' is {:?}, expected '{FORMAT}')",
            meta.get("format")
        )));
    }
    let space: Space = serde_json::from_str(meta.get("space").map(String::as_str).unwrap_or(""))
        .map_err(|e| file_err(format!("bad space metadata: {e}")))?;
    if let Some(want) = expect
        && want != &space
    {
        return Err(file_err(format!(
            "supernet of space '{}' does not match the requested space '{}'",
            space.name, want.name
        )));
    }
    let net = SupernetConfig::new(space).init::<B>(device);
    net.load_tensor_map(&map)
        .map_err(|e| file_err(e.to_string()))
}

const SUBNET_FORMAT: &str = "ofa-subnet/1";

/// Writes a subnet folder: `subnet.safetensors` (weights under the
/// reference's static-network keys, space and arch in its metadata) and
/// `arch.json` (both architecture forms, FLOPs, parameters).
pub fn save_subnet<B: OfaBackend>(
    net: &Subnet<B>,
    dir: &Path,
    extra: serde_json::Value,
) -> Result<(), StateError> {
    std::fs::create_dir_all(dir).map_err(|e| file_error(dir, format!("cannot create: {e}")))?;
    let meta = HashMap::from([
        ("format".to_string(), SUBNET_FORMAT.to_string()),
        ("space".to_string(), json(&net.space)),
        ("arch".to_string(), json(&net.arch)),
    ]);
    write_safetensors(&dir.join("subnet.safetensors"), &net.to_tensor_map(), meta)?;
    let cost = net.arch.cost(&net.space);
    let mut info = serde_json::json!({
        "space": net.space.name,
        "arch": net.arch.to_json(&net.space),
        "reference": net.arch.to_reference_json(),
        "mflops": cost.mflops(),
        "mparams": cost.mparams(),
    });
    if let (Some(obj), serde_json::Value::Object(e)) = (info.as_object_mut(), extra) {
        obj.extend(e);
    }
    let arch_json = dir.join("arch.json");
    let text = serde_json::to_string_pretty(&info).map_err(|e| file_error(&arch_json, e))?;
    write_file(&arch_json, text.as_bytes())
}

/// JSON of plain serialisable data (spaces, architectures) for metadata.
fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("plain data serialises")
}

/// Loads a subnet folder written by [`save_subnet`].
pub fn load_subnet<B: OfaBackend>(dir: &Path, device: &B::Device) -> Result<Subnet<B>, StateError> {
    let path = dir.join("subnet.safetensors");
    if !path.exists() {
        return Err(file_error(
            dir,
            "not a subnet folder (no subnet.safetensors)",
        ));
    }
    let (map, meta) = read_safetensors(&path)?;
    if meta.get("format").map(String::as_str) != Some(SUBNET_FORMAT) {
        return Err(file_error(&path, "not an ofa subnet file"));
    }
    let space: Space = serde_json::from_str(meta.get("space").map(String::as_str).unwrap_or(""))
        .map_err(|e| file_error(&path, format!("bad space metadata: {e}")))?;
    let arch: Arch = serde_json::from_str(meta.get("arch").map(String::as_str).unwrap_or(""))
        .map_err(|e| file_error(&path, format!("bad arch metadata: {e}")))?;
    arch.validate(&space).map_err(|e| file_error(&path, e))?;
    Subnet::from_tensor_map(&space, &arch, &map, device).map_err(|e| file_error(&path, e))
}
