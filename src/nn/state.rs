//! Named weights: a supernet or subnet as a map from reference checkpoint
//! keys (`blocks.3.conv.depth_conv.conv.7to5_matrix`, …) to host tensors,
//! and safetensors files of such maps.
//!
//! One walk per network ([`Supernet`], [`Subnet`]) hands every tensor with
//! its name from [`keys`] to a visitor; saving, loading, the PyTorch
//! importer, channel sorting (through the map) and optimizer state keyed by
//! name all go through these walks.

use super::OfaBackend;
use super::keys::{self, BIAS, BN_LEAVES, Key, Naming, WEIGHT};
use super::layers::{ElasticBn, ElasticConv, ElasticDepthwise, ElasticSe, Linear};
use super::subnet::{Subnet, SubnetBlock, extract};
use super::supernet::{ConvBn, ConvBnAct, MbConv, Supernet, SupernetConfig};
use crate::space::{Arch, Space};
use burn::module::{Param, ParamId, RunningState};
use burn::nn::BatchNorm;
use burn::nn::conv::Conv2d;
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

/// Visits every named tensor of a network, in one fixed order, and may
/// replace it. Saving ([`Exporter`]) and loading ([`Importer`]) are the two
/// visitors; the walks below are the only place where a network's tensors
/// get their names (from [`keys`]).
trait TensorVisitor<B: OfaBackend> {
    fn param<const D: usize>(
        &mut self,
        key: Key,
        p: Param<Tensor<B, D>>,
    ) -> Result<Param<Tensor<B, D>>, StateError>;
    fn running(
        &mut self,
        key: Key,
        s: RunningState<Tensor<B, 1>>,
    ) -> Result<RunningState<Tensor<B, 1>>, StateError>;
}

/// Collects values, parameter ids, or both.
struct Exporter {
    values: Option<TensorMap>,
    ids: Option<HashMap<ParamId, String>>,
}

impl Exporter {
    fn values() -> Self {
        Exporter {
            values: Some(TensorMap::new()),
            ids: None,
        }
    }
}

impl<B: OfaBackend> TensorVisitor<B> for Exporter {
    fn param<const D: usize>(
        &mut self,
        key: Key,
        p: Param<Tensor<B, D>>,
    ) -> Result<Param<Tensor<B, D>>, StateError> {
        if let Some(ids) = &mut self.ids {
            ids.insert(p.id, key.to_string());
        }
        if let Some(out) = &mut self.values {
            out.insert(key.into(), HostTensor::from_tensor(p.val()));
        }
        Ok(p)
    }
    fn running(
        &mut self,
        key: Key,
        s: RunningState<Tensor<B, 1>>,
    ) -> Result<RunningState<Tensor<B, 1>>, StateError> {
        if let Some(out) = &mut self.values {
            out.insert(key.into(), HostTensor::from_tensor(s.value_sync()));
        }
        Ok(s)
    }
}

/// Takes tensors out of a map, checking shapes, and remembers what it used.
struct Importer<'a> {
    src: &'a TensorMap,
    used: BTreeSet<String>,
}

impl<'a> Importer<'a> {
    fn new(src: &'a TensorMap) -> Self {
        Importer {
            src,
            used: BTreeSet::new(),
        }
    }

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

    /// Every tensor of the map must have been used, but the
    /// `num_batches_tracked` counters PyTorch writes for each BN.
    fn finish(self) -> Result<(), StateError> {
        let extra: Vec<&String> = self
            .src
            .keys()
            .filter(|k| !self.used.contains(*k) && !k.ends_with("num_batches_tracked"))
            .collect();
        if extra.is_empty() {
            return Ok(());
        }
        let shown: Vec<&str> = extra.iter().take(8).map(|s| s.as_str()).collect();
        let more = if extra.len() > 8 {
            format!(" (and {} more)", extra.len() - 8)
        } else {
            String::new()
        };
        Err(StateError::Extra(format!("{}{more}", shown.join(", "))))
    }
}

impl<B: OfaBackend> TensorVisitor<B> for Importer<'_> {
    fn param<const D: usize>(
        &mut self,
        key: Key,
        p: Param<Tensor<B, D>>,
    ) -> Result<Param<Tensor<B, D>>, StateError> {
        let t = self.take(key.as_str(), &p.dims())?.clone();
        // `map` keeps the parameter id, so optimizer state stays attached.
        Ok(p.map(|old| {
            let require_grad = old.is_require_grad();
            t.to_tensor(&old.device()).set_require_grad(require_grad)
        }))
    }

    fn running(
        &mut self,
        key: Key,
        s: RunningState<Tensor<B, 1>>,
    ) -> Result<RunningState<Tensor<B, 1>>, StateError> {
        let old = s.value_sync();
        let t = self.take(key.as_str(), &old.dims())?;
        Ok(RunningState::new(t.to_tensor(&old.device())))
    }
}

/// A layer's weight and optional bias.
type Weights<B, const D: usize> = (Param<Tensor<B, D>>, Option<Param<Tensor<B, 1>>>);

/// Weight and optional bias of a convolution or linear layer at `key`.
fn visit_weights<B: OfaBackend, V: TensorVisitor<B>, const D: usize>(
    key: &Key,
    weight: Param<Tensor<B, D>>,
    bias: Option<Param<Tensor<B, 1>>>,
    v: &mut V,
) -> Result<Weights<B, D>, StateError> {
    let weight = v.param(key.pp(WEIGHT), weight)?;
    let bias = bias.map(|b| v.param(key.pp(BIAS), b)).transpose()?;
    Ok((weight, bias))
}

/// The four tensors of a BN layer at `key`, in [`keys::BN_LEAVES`] order.
type BnTensors<B> = (
    Param<Tensor<B, 1>>,
    Param<Tensor<B, 1>>,
    RunningState<Tensor<B, 1>>,
    RunningState<Tensor<B, 1>>,
);

fn visit_bn<B: OfaBackend, V: TensorVisitor<B>>(
    key: &Key,
    (gamma, beta, mean, var): BnTensors<B>,
    v: &mut V,
) -> Result<BnTensors<B>, StateError> {
    let [w, b, m, s] = BN_LEAVES;
    Ok((
        v.param(key.pp(w), gamma)?,
        v.param(key.pp(b), beta)?,
        v.running(key.pp(m), mean)?,
        v.running(key.pp(s), var)?,
    ))
}

impl<B: OfaBackend> ElasticConv<B> {
    /// `key` is the convolution module (see [`keys::conv`]).
    fn visit<V: TensorVisitor<B>>(mut self, key: &Key, v: &mut V) -> Result<Self, StateError> {
        (self.weight, self.bias) = visit_weights(key, self.weight, self.bias, v)?;
        Ok(self)
    }
}

impl<B: OfaBackend> ElasticBn<B> {
    fn visit<V: TensorVisitor<B>>(mut self, key: &Key, v: &mut V) -> Result<Self, StateError> {
        let t = (self.gamma, self.beta, self.running_mean, self.running_var);
        (self.gamma, self.beta, self.running_mean, self.running_var) = visit_bn(key, t, v)?;
        Ok(self)
    }
}

impl<B: OfaBackend> ElasticDepthwise<B> {
    /// `layer` is the block's `depth_conv`: the largest kernel under its
    /// conv, the transformation matrices beside it.
    fn visit<V: TensorVisitor<B>>(
        mut self,
        layer: &Key,
        naming: Naming,
        v: &mut V,
    ) -> Result<Self, StateError> {
        self.weight = v.param(keys::conv(layer, naming).pp(WEIGHT), self.weight)?;
        let pairs: Vec<(usize, usize)> = self.kernels.windows(2).map(|w| (w[1], w[0])).collect();
        self.transforms = std::mem::take(&mut self.transforms)
            .into_iter()
            .zip(pairs)
            .map(|(m, (from, to))| v.param(keys::kernel_transform(layer, from, to), m))
            .collect::<Result<_, _>>()?;
        Ok(self)
    }
}

impl<B: OfaBackend> ElasticSe<B> {
    fn visit<V: TensorVisitor<B>>(mut self, block: &Key, v: &mut V) -> Result<Self, StateError> {
        let (reduce, expand) = (keys::se_reduce(block), keys::se_expand(block));
        self.reduce_weight = v.param(reduce.pp(WEIGHT), self.reduce_weight)?;
        self.reduce_bias = v.param(reduce.pp(BIAS), self.reduce_bias)?;
        self.expand_weight = v.param(expand.pp(WEIGHT), self.expand_weight)?;
        self.expand_bias = v.param(expand.pp(BIAS), self.expand_bias)?;
        Ok(self)
    }
}

impl<B: OfaBackend> ConvBn<B> {
    fn visit<V: TensorVisitor<B>>(
        mut self,
        layer: &Key,
        naming: Naming,
        v: &mut V,
    ) -> Result<Self, StateError> {
        self.conv = self.conv.visit(&keys::conv(layer, naming), v)?;
        self.bn = self.bn.visit(&keys::bn(layer, naming), v)?;
        Ok(self)
    }
}

impl<B: OfaBackend> ConvBnAct<B> {
    /// The head and stem layers are static in the reference supernet too.
    fn visit<V: TensorVisitor<B>>(mut self, layer: &Key, v: &mut V) -> Result<Self, StateError> {
        self.conv = self.conv.visit(&keys::conv(layer, Naming::Static), v)?;
        if let Some(bn) = self.bn.take() {
            self.bn = Some(bn.visit(&keys::bn(layer, Naming::Static), v)?);
        }
        Ok(self)
    }
}

impl<B: OfaBackend> MbConv<B> {
    fn visit<V: TensorVisitor<B>>(
        mut self,
        block: &Key,
        naming: Naming,
        v: &mut V,
    ) -> Result<Self, StateError> {
        if let Some(ib) = self.inverted_bottleneck.take() {
            let layer = keys::inverted_bottleneck(block);
            self.inverted_bottleneck = Some(ib.visit(&layer, naming, v)?);
        }
        let dw = keys::depth_conv(block);
        self.depth_conv = self.depth_conv.visit(&dw, naming, v)?;
        self.depth_bn = self.depth_bn.visit(&keys::bn(&dw, naming), v)?;
        if let Some(se) = self.se.take() {
            self.se = Some(se.visit(block, v)?);
        }
        let pl = keys::point_linear(block);
        self.point_linear = self.point_linear.visit(&pl, naming, v)?;
        Ok(self)
    }
}

impl<B: OfaBackend> Linear<B> {
    fn visit<V: TensorVisitor<B>>(mut self, key: &Key, v: &mut V) -> Result<Self, StateError> {
        let (weight, bias) = visit_weights(key, self.weight, Some(self.bias), v)?;
        self.weight = weight;
        self.bias = bias.expect("visited with its bias");
        Ok(self)
    }
}

impl<B: OfaBackend> Supernet<B> {
    /// The supernet's walk: the fixed first block is a static layer in the
    /// reference too, the elastic blocks are dynamic.
    fn visit<V: TensorVisitor<B>>(mut self, v: &mut V) -> Result<Self, StateError> {
        self.first_conv = self.first_conv.visit(&keys::first_conv(), v)?;
        self.first_block = self.first_block.visit(&keys::block(0), Naming::Static, v)?;
        self.blocks = std::mem::take(&mut self.blocks)
            .into_iter()
            .enumerate()
            .map(|(i, b)| b.visit(&keys::block(i + 1), Naming::Dynamic, v))
            .collect::<Result<_, _>>()?;
        let with_post_pool = self.post_pool.is_some();
        if let Some(l) = self.pre_pool.take() {
            self.pre_pool = Some(l.visit(&keys::pre_pool(with_post_pool), v)?);
        }
        if let Some(l) = self.post_pool.take() {
            self.post_pool = Some(l.visit(&keys::post_pool(), v)?);
        }
        self.classifier = self.classifier.visit(&keys::classifier(), v)?;
        Ok(self)
    }

    /// Every parameter and running statistic under its reference key.
    pub fn to_tensor_map(&self) -> TensorMap {
        let mut e = Exporter::values();
        // Cloning a module clones tensor handles, not their data.
        let _ = self.clone().visit(&mut e).expect("exporting never fails");
        e.values.unwrap_or_default()
    }

    /// The reference key of every trainable parameter, by parameter id
    /// (optimizer state and gradients are keyed by name through this).
    pub fn param_names(&self) -> HashMap<ParamId, String> {
        let mut e = Exporter {
            values: None,
            ids: Some(HashMap::new()),
        };
        let _ = self.clone().visit(&mut e).expect("exporting never fails");
        e.ids.unwrap_or_default()
    }

    /// Replaces every tensor from a map with reference keys. Keys ending in
    /// `num_batches_tracked` are ignored; any other missing, extra or
    /// mis-shaped tensor is an error naming the key. Parameter ids are kept.
    pub fn load_tensor_map(self, src: &TensorMap) -> Result<Self, StateError> {
        let mut i = Importer::new(src);
        let net = self.visit(&mut i)?;
        i.finish()?;
        Ok(net)
    }
}

fn visit_conv2d<B: OfaBackend, V: TensorVisitor<B>>(
    mut c: Conv2d<B>,
    key: &Key,
    v: &mut V,
) -> Result<Conv2d<B>, StateError> {
    (c.weight, c.bias) = visit_weights(key, c.weight, c.bias, v)?;
    Ok(c)
}

fn visit_batch_norm<B: OfaBackend, V: TensorVisitor<B>>(
    mut b: BatchNorm<B>,
    key: &Key,
    v: &mut V,
) -> Result<BatchNorm<B>, StateError> {
    let t = (b.gamma, b.beta, b.running_mean, b.running_var);
    (b.gamma, b.beta, b.running_mean, b.running_var) = visit_bn(key, t, v)?;
    Ok(b)
}

/// A static layer's optional conv and BN.
type ConvAndBn<B> = (Option<Conv2d<B>>, Option<BatchNorm<B>>);

/// A static layer's optional conv and BN, present together or not at all.
fn visit_conv_bn<B: OfaBackend, V: TensorVisitor<B>>(
    conv: Option<Conv2d<B>>,
    bn: Option<BatchNorm<B>>,
    layer: &Key,
    v: &mut V,
) -> Result<ConvAndBn<B>, StateError> {
    let conv = conv
        .map(|c| visit_conv2d(c, &keys::conv(layer, Naming::Static), v))
        .transpose()?;
    let bn = bn
        .map(|b| visit_batch_norm(b, &keys::bn(layer, Naming::Static), v))
        .transpose()?;
    Ok((conv, bn))
}

impl<B: OfaBackend> SubnetBlock<B> {
    fn visit<V: TensorVisitor<B>>(mut self, block: &Key, v: &mut V) -> Result<Self, StateError> {
        (self.inverted_bottleneck, self.inverted_bottleneck_bn) = visit_conv_bn(
            self.inverted_bottleneck,
            self.inverted_bottleneck_bn,
            &keys::inverted_bottleneck(block),
            v,
        )?;
        let (dw, bn) = visit_conv_bn(
            Some(self.depth_conv),
            Some(self.depth_bn),
            &keys::depth_conv(block),
            v,
        )?;
        (self.depth_conv, self.depth_bn) = (dw.expect("visited"), bn.expect("visited"));
        self.se_reduce = self
            .se_reduce
            .map(|c| visit_conv2d(c, &keys::se_reduce(block), v))
            .transpose()?;
        self.se_expand = self
            .se_expand
            .map(|c| visit_conv2d(c, &keys::se_expand(block), v))
            .transpose()?;
        let (pl, bn) = visit_conv_bn(
            Some(self.point_linear),
            Some(self.point_linear_bn),
            &keys::point_linear(block),
            v,
        )?;
        (self.point_linear, self.point_linear_bn) = (pl.expect("visited"), bn.expect("visited"));
        Ok(self)
    }
}

impl<B: OfaBackend> Subnet<B> {
    /// The static network's walk: the names of the reference's
    /// `MobileNetV3` / `ProxylessNASNets`, where block 0 is the first block.
    fn visit<V: TensorVisitor<B>>(mut self, v: &mut V) -> Result<Self, StateError> {
        let (c, bn) = visit_conv_bn(
            Some(self.first_conv),
            Some(self.first_conv_bn),
            &keys::first_conv(),
            v,
        )?;
        (self.first_conv, self.first_conv_bn) = (c.expect("visited"), bn.expect("visited"));
        self.blocks = std::mem::take(&mut self.blocks)
            .into_iter()
            .enumerate()
            .map(|(i, b)| b.visit(&keys::block(i), v))
            .collect::<Result<_, _>>()?;
        let pre = keys::pre_pool(self.post_pool.is_some());
        (self.pre_pool, self.pre_pool_bn) =
            visit_conv_bn(self.pre_pool, self.pre_pool_bn, &pre, v)?;
        (self.post_pool, _) = visit_conv_bn(self.post_pool, None, &keys::post_pool(), v)?;
        // burn's Linear stores its weight as [in, out], the reference as
        // [out, in]; the visitor sees the reference's layout.
        let classifier = keys::classifier();
        let w = self.classifier.weight.map(|w| w.transpose());
        let (w, bias) = visit_weights(&classifier, w, self.classifier.bias, v)?;
        self.classifier.weight = w.map(|w| {
            let require_grad = w.is_require_grad();
            w.transpose().detach().set_require_grad(require_grad)
        });
        self.classifier.bias = bias;
        Ok(self)
    }

    /// Weights under the reference's static network keys
    /// (`blocks.{i}.conv.inverted_bottleneck.conv.weight`, …).
    pub fn to_tensor_map(&self) -> TensorMap {
        let mut e = Exporter::values();
        let _ = self.clone().visit(&mut e).expect("exporting never fails");
        e.values.unwrap_or_default()
    }

    /// Rebuilds a subnet of `arch` from a map written by
    /// [`Subnet::to_tensor_map`]: the structure comes from a freshly built
    /// supernet (weights irrelevant), the values from the map.
    pub fn from_tensor_map(
        space: &Space,
        arch: &Arch,
        map: &TensorMap,
        device: &B::Device,
    ) -> Result<Self, StateError> {
        let skeleton = SupernetConfig::new(space.clone()).init::<B>(device);
        let mut i = Importer::new(map);
        let net = extract(&skeleton, arch).visit(&mut i)?;
        i.finish()?;
        Ok(net)
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
