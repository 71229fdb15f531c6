//! Fused CPU kernels on host slices (row-major NCHW, f32), parallel with
//! rayon. They back [`super::OfaBackend`] for backends whose tensors live in
//! host memory; every kernel is tested against a naive loop below.

use crate::space::Activation;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Shape of an NCHW activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nchw {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl Nchw {
    pub fn plane(&self) -> usize {
        self.h * self.w
    }
    pub fn len(&self) -> usize {
        self.n * self.c * self.plane()
    }
}

/// Output buffers are allocated without zeroing: every kernel writes each
/// element exactly once before the buffer is returned (a zeroing pass over
/// every activation would cost as much as a cheap kernel itself).
fn output(n: usize) -> Vec<MaybeUninit<f32>> {
    let mut v = Vec::with_capacity(n);
    // SAFETY: MaybeUninit<f32> needs no initialisation.
    unsafe { v.set_len(n) };
    v
}

/// # Safety
/// Every element of `v` has been written.
unsafe fn finish(v: Vec<MaybeUninit<f32>>) -> Vec<f32> {
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: same layout; initialised per the caller's contract.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr() as *mut f32, v.len(), v.capacity()) }
}

/// What an inference-mode BN (stored statistics: a per-channel affine) and
/// the activation after it do to a convolution's output; the fused kernels
/// apply it while the output is still in cache instead of in two more
/// passes over memory, each with its own allocation.
#[derive(Clone, Copy, Debug)]
pub struct Epilogue<'a> {
    /// Per output channel.
    pub scale: &'a [f32],
    pub shift: &'a [f32],
    pub act: Option<Activation>,
}

/// `v ← act(v·a + b)` over one channel's values.
#[multiversion::multiversion(targets = "simd")]
fn epilogue_plane(v: &mut [f32], a: f32, b: f32, act: Option<Activation>) {
    match act {
        None => v.iter_mut().for_each(|x| *x = *x * a + b),
        Some(Activation::Relu) => v.iter_mut().for_each(|x| *x = (*x * a + b).max(0.0)),
        Some(Activation::Relu6) => v.iter_mut().for_each(|x| *x = (*x * a + b).clamp(0.0, 6.0)),
        Some(Activation::HSwish) => v.iter_mut().for_each(|x| {
            let y = *x * a + b;
            *x = y * (y + 3.0).clamp(0.0, 6.0) * (1.0 / 6.0);
        }),
    }
}

/// `v ← act(v·scale[l] + shift[l])` over a pixel-major `[pixels] × LANES`
/// block, lane `l` being one channel.
#[multiversion::multiversion(targets = "simd")]
fn epilogue_lanes(
    v: &mut [f32],
    scale: &[f32; LANES],
    shift: &[f32; LANES],
    act: Option<Activation>,
) {
    for px in v.chunks_exact_mut(LANES) {
        for l in 0..LANES {
            let y = px[l] * scale[l] + shift[l];
            px[l] = match act {
                None => y,
                Some(Activation::Relu) => y.max(0.0),
                Some(Activation::Relu6) => y.clamp(0.0, 6.0),
                Some(Activation::HSwish) => y * (y + 3.0).clamp(0.0, 6.0) * (1.0 / 6.0),
            };
        }
    }
}

/// Channels processed together by the depthwise kernels: one pixel of a
/// block is one 64-byte vector (an AVX-512 register, two AVX2 registers).
const LANES: usize = 16;

/// Geometry of a depthwise convolution with padding `k / 2`.
#[derive(Clone, Copy, Debug)]
struct DwShape {
    k: usize,
    s: usize,
    p: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    /// Padded width and height.
    pw: usize,
    ph: usize,
}

impl DwShape {
    fn new(h: usize, w: usize, k: usize, s: usize) -> Self {
        let p = k / 2;
        DwShape {
            k,
            s,
            p,
            h,
            w,
            oh: (h + 2 * p - k) / s + 1,
            ow: (w + 2 * p - k) / s + 1,
            pw: w + 2 * p,
            ph: h + 2 * p,
        }
    }

    /// Taps `t0..t1` of `0..k` that read inside the input (not its zero
    /// padding) for output coordinate `o` along a side of length `len`.
    /// On the small maps of the later stages most of a k×k window is
    /// padding (a 2×2 map under a 7×7 kernel: 4 of 49 taps), so the
    /// kernels skip what can only add zeros.
    #[inline(always)]
    fn taps(&self, o: usize, len: usize) -> (usize, usize) {
        crate::space::conv_taps(o, self.s, self.p, self.k, len)
    }

    /// Output coordinates `o0..o1` of `0..on` whose tap `t` reads inside
    /// an input side of length `len` (`o·s + t − p` in `0..len`).
    #[inline(always)]
    fn outputs_of_tap(&self, t: usize, len: usize, on: usize) -> (usize, usize) {
        let lo = self.p.saturating_sub(t).div_ceil(self.s);
        // o·s ≤ len − 1 + p − t
        let hi = if len + self.p > t {
            ((len - 1 + self.p - t) / self.s + 1).min(on)
        } else {
            0
        };
        (lo.min(hi), hi)
    }
}

/// `dst[i·ds + l] = src[l·ss + i]` for `l < rows`, `i < cols`: the
/// transposes between channel-major planes and the depthwise kernels'
/// pixel-major blocks. 8×8 tiles go through AVX registers where the CPU
/// has them (one by one, 64 scalar moves each, these transposes were a
/// tenth of a training step); the edges are moved one by one.
fn transpose(
    src: &[f32],
    ss: usize,
    rows: usize,
    cols: usize,
    dst: &mut [MaybeUninit<f32>],
    ds: usize,
) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(
        src.len() >= (rows - 1) * ss + cols,
        "transpose: source too short"
    );
    assert!(
        dst.len() >= (cols - 1) * ds + rows,
        "transpose: destination too short"
    );
    let (r8, c8) = if avx() {
        (rows / 8 * 8, cols / 8 * 8)
    } else {
        (0, 0)
    };
    for l0 in (0..r8).step_by(8) {
        for i0 in (0..c8).step_by(8) {
            // SAFETY: AVX is present (avx() checked it); the tile reads
            // src[(l0+l)·ss + i0 + i] and writes dst[(i0+i)·ds + l0 + l]
            // for l, i < 8, inside the lengths asserted above.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                transpose8_avx(
                    src.as_ptr().add(l0 * ss + i0),
                    ss,
                    dst.as_mut_ptr().add(i0 * ds + l0) as *mut f32,
                    ds,
                )
            }
        }
    }
    for l in 0..rows {
        let from = if l < r8 { c8 } else { 0 };
        for i in from..cols {
            dst[i * ds + l].write(src[l * ss + i]);
        }
    }
}

/// Whether the 8×8 AVX transpose can run (the standard library caches
/// the CPU check).
fn avx() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// One 8×8 tile of [`transpose`]: the classic unpack / shuffle / lane
/// permute sequence (rows → pairs → quads → halves).
///
/// # Safety
/// AVX is available; `src + l·ss + i` and `dst + i·ds + l` are valid for
/// `l, i < 8`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn transpose8_avx(src: *const f32, ss: usize, dst: *mut f32, ds: usize) {
    use std::arch::x86_64::*;
    // SAFETY: the caller guarantees the eight rows of eight are readable.
    let r: [__m256; 8] = std::array::from_fn(|l| unsafe { _mm256_loadu_ps(src.add(l * ss)) });
    // Pairs: t0 = [r0₀ r1₀ r0₁ r1₁ | r0₄ r1₄ r0₅ r1₅], …
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    // Quads: u0 = [r0₀ r1₀ r2₀ r3₀ | r0₄ r1₄ r2₄ r3₄], u1 columns 1 | 5, …
    let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    // Halves: column i of the tile.
    let cols = [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ];
    for (i, v) in cols.into_iter().enumerate() {
        // SAFETY: the caller guarantees the eight rows of eight are writable.
        unsafe { _mm256_storeu_ps(dst.add(i * ds), v) };
    }
}

/// Copies channels `c0..c0+cn` of one sample (`[C, h, w]`) into a zero-padded
/// pixel-major block `[(h+2p) × (w+2p)] × LANES`: one input row (all `cn`
/// planes) at a time when rows are whole 8-pixel tiles; otherwise (7-,
/// 14- and 28-pixel rows, most of which the tiles would leave to the
/// scalar edge) the whole plane at once into a scratch block, whose rows
/// are then copied into place.
fn gather_padded(src: &[f32], g: &DwShape, c0: usize, cn: usize, dst: &mut Vec<f32>) {
    dst.clear();
    dst.resize(g.ph * g.pw * LANES, 0.0);
    let plane = g.h * g.w;
    let src = &src[c0 * plane..];
    if g.p == 0 {
        // No padding: the block is the plane's pixels in order.
        transpose(src, plane, cn, plane, uninit(dst), LANES);
    } else if g.w % 8 == 0 {
        let out = uninit(dst);
        for y in 0..g.h {
            let row = (y + g.p) * g.pw + g.p;
            transpose(
                &src[y * g.w..],
                plane,
                cn,
                g.w,
                &mut out[row * LANES..],
                LANES,
            );
        }
    } else {
        thread_local! {
            static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        SCRATCH.with_borrow_mut(|tmp| {
            tmp.clear();
            tmp.resize(plane * LANES, 0.0);
            transpose(src, plane, cn, plane, uninit(tmp), LANES);
            let run = g.w * LANES;
            for y in 0..g.h {
                let row = (y + g.p) * g.pw + g.p;
                dst[row * LANES..][..run].copy_from_slice(&tmp[y * run..][..run]);
            }
        });
    }
}

/// An initialised buffer as the destination of [`transpose`].
fn uninit(v: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: MaybeUninit<f32> has f32's layout, and transpose writes only f32s.
    unsafe { &mut *(v as *mut [f32] as *mut [MaybeUninit<f32>]) }
}

/// Copies an `[oh × ow] × LANES` block into channels `c0..c0+cn` of `dst`
/// (`[cn, oh, ow]`, already offset to channel `c0`).
fn scatter_block(src: &[f32], pixels: usize, cn: usize, dst: &mut [MaybeUninit<f32>]) {
    transpose(src, LANES, pixels, cn, dst, pixels);
}

/// Weights of channels `c0..c0+cn` as `[k·k] × LANES` (zero lanes beyond cn).
fn block_weights(w: &[f32], k: usize, c0: usize, cn: usize) -> Vec<f32> {
    let mut out = vec![0f32; k * k * LANES];
    for l in 0..cn {
        for t in 0..k * k {
            out[t * LANES + l] = w[(c0 + l) * k * k + t];
        }
    }
    out
}

#[inline(always)]
fn lanes(v: &[f32], at: usize) -> &[f32; LANES] {
    v[at * LANES..at * LANES + LANES]
        .try_into()
        .expect("LANES-wide slice")
}

/// Output pixels per register tile of the depthwise kernels: four
/// independent accumulator chains hide the add latency and share each
/// tap's weight vector (one chain per pixel left the forward pass
/// latency-bound).
const DW_TILE: usize = 4;

/// Forward of one channel block: every output pixel accumulates its k²
/// taps in a register-resident vector, [`DW_TILE`] pixels at a time.
#[multiversion::multiversion(targets = "simd")]
fn dw_block_forward(g: &DwShape, wb: &[f32], pad: &[f32], out: &mut [f32]) {
    // A constant kernel size lets the compiler unroll the taps.
    match g.k {
        3 => dw_forward_body(g, 3, wb, pad, out),
        5 => dw_forward_body(g, 5, wb, pad, out),
        7 => dw_forward_body(g, 7, wb, pad, out),
        k => dw_forward_body(g, k, wb, pad, out),
    }
}

#[inline(always)]
fn dw_forward_body(g: &DwShape, k: usize, wb: &[f32], pad: &[f32], out: &mut [f32]) {
    for oy in 0..g.oh {
        let tiles = g.ow / DW_TILE * DW_TILE;
        for ox in (0..tiles).step_by(DW_TILE) {
            dw_forward_pixels::<DW_TILE>(g, k, wb, pad, out, oy, ox);
        }
        for ox in tiles..g.ow {
            dw_forward_pixels::<1>(g, k, wb, pad, out, oy, ox);
        }
    }
}

/// `T` adjacent output pixels of row `oy` from `ox` on, each accumulating
/// its k² taps in order.
#[inline(always)]
fn dw_forward_pixels<const T: usize>(
    g: &DwShape,
    k: usize,
    wb: &[f32],
    pad: &[f32],
    out: &mut [f32],
    oy: usize,
    ox: usize,
) {
    let mut acc = [[0f32; LANES]; T];
    // The taps inside the input for any of the T pixels (the first pixel
    // has the largest lower and upper bounds); the others read padding.
    let (ky0, ky1) = g.taps(oy, g.h);
    let (kx0, kx1) = (g.taps(ox + T - 1, g.w).0, g.taps(ox, g.w).1);
    for ky in ky0..ky1 {
        let row = (oy * g.s + ky) * g.pw + ox * g.s;
        for kx in kx0..kx1 {
            let wv = lanes(wb, ky * k + kx);
            for (j, a) in acc.iter_mut().enumerate() {
                let px = lanes(pad, row + j * g.s + kx);
                for l in 0..LANES {
                    a[l] += wv[l] * px[l];
                }
            }
        }
    }
    for (j, a) in acc.iter().enumerate() {
        out[(oy * g.ow + ox + j) * LANES..][..LANES].copy_from_slice(a);
    }
}

/// Input gradient of one block, accumulated into a padded block.
#[multiversion::multiversion(targets = "simd")]
fn dw_block_backward_input(g: &DwShape, wb: &[f32], dy: &[f32], dpad: &mut [f32]) {
    for oy in 0..g.oh {
        for ox in 0..g.ow {
            let gv = *lanes(dy, oy * g.ow + ox);
            // Gradients of padding taps would be dropped anyway.
            let (ky0, ky1) = g.taps(oy, g.h);
            let (kx0, kx1) = g.taps(ox, g.w);
            for ky in ky0..ky1 {
                let row = (oy * g.s + ky) * g.pw + ox * g.s;
                for kx in kx0..kx1 {
                    let wv = lanes(wb, ky * g.k + kx);
                    let d = &mut dpad[(row + kx) * LANES..][..LANES];
                    for l in 0..LANES {
                        d[l] += wv[l] * gv[l];
                    }
                }
            }
        }
    }
}

/// Weight gradient of one block: per output row and tap, a sum over the
/// row's pixels in [`DW_TILE`] register-resident partial sums (the rows it
/// reads stay in L1 across the k² taps).
#[multiversion::multiversion(targets = "simd")]
fn dw_block_backward_weight(
    g: &DwShape,
    pad: &[f32],
    dy: &[f32],
    dy_pw: usize,
    dy_off: usize,
    dwb: &mut [f32],
) {
    match g.k {
        3 => dw_weight_body(g, 3, pad, dy, dy_pw, dy_off, dwb),
        5 => dw_weight_body(g, 5, pad, dy, dy_pw, dy_off, dwb),
        7 => dw_weight_body(g, 7, pad, dy, dy_pw, dy_off, dwb),
        k => dw_weight_body(g, k, pad, dy, dy_pw, dy_off, dwb),
    }
}

#[inline(always)]
fn dw_weight_body(
    g: &DwShape,
    k: usize,
    pad: &[f32],
    dy: &[f32],
    dy_pw: usize,
    dy_off: usize,
    dwb: &mut [f32],
) {
    for oy in 0..g.oh {
        let grow = dy_off + oy * dy_pw;
        // Only taps and pixels that read inside the input: padding adds
        // nothing to a weight's gradient.
        let (ky0, ky1) = g.taps(oy, g.h);
        for ky in ky0..ky1 {
            let row = (oy * g.s + ky) * g.pw;
            for kx in 0..k {
                let (ox0, ox1) = g.outputs_of_tap(kx, g.w, g.ow);
                let mut acc = [[0f32; LANES]; DW_TILE];
                let mut ox = ox0;
                while ox + DW_TILE <= ox1 {
                    for (j, a) in acc.iter_mut().enumerate() {
                        let px = lanes(pad, row + kx + (ox + j) * g.s);
                        let gv = lanes(dy, grow + ox + j);
                        for l in 0..LANES {
                            a[l] += gv[l] * px[l];
                        }
                    }
                    ox += DW_TILE;
                }
                for ox in ox..ox1 {
                    let px = lanes(pad, row + kx + ox * g.s);
                    let gv = lanes(dy, grow + ox);
                    for l in 0..LANES {
                        acc[0][l] += gv[l] * px[l];
                    }
                }
                let t = &mut dwb[(ky * k + kx) * LANES..][..LANES];
                for l in 0..LANES {
                    t[l] += (acc[0][l] + acc[1][l]) + (acc[2][l] + acc[3][l]);
                }
            }
        }
    }
}

/// Splits `data` (`[N, C, plane]`) into per-(sample, channel block) chunks,
/// grouped by channel block.
fn blocks_by_channel<T>(data: &mut [T], c: usize, plane: usize) -> Vec<Vec<(usize, &mut [T])>> {
    let nb = c.div_ceil(LANES);
    let mut groups: Vec<Vec<(usize, &mut [T])>> = (0..nb).map(|_| Vec::new()).collect();
    for (n, sample) in data.chunks_mut(c * plane).enumerate() {
        for (b, chunk) in sample.chunks_mut(LANES * plane).enumerate() {
            groups[b].push((n, chunk));
        }
    }
    groups
}

/// Depthwise convolution, padding `k / 2`: `w` is `[C, k, k]`.
pub fn depthwise_forward(
    x: &[f32],
    d: Nchw,
    w: &[f32],
    k: usize,
    stride: usize,
) -> (Vec<f32>, Nchw) {
    depthwise_forward_with(x, d, w, k, stride, None)
}

/// [`depthwise_forward`] followed by `epilogue` (inference: BN with stored
/// statistics and the activation), applied to each channel block before it
/// leaves the thread's buffer.
pub fn depthwise_forward_with(
    x: &[f32],
    d: Nchw,
    w: &[f32],
    k: usize,
    stride: usize,
    epilogue: Option<Epilogue<'_>>,
) -> (Vec<f32>, Nchw) {
    let g = DwShape::new(d.h, d.w, k, stride);
    let od = Nchw {
        h: g.oh,
        w: g.ow,
        ..d
    };
    let mut y = output(od.len());
    let weights: Vec<Vec<f32>> = (0..d.c.div_ceil(LANES))
        .map(|b| block_weights(w, k, b * LANES, LANES.min(d.c - b * LANES)))
        .collect();
    let chunks: Vec<(usize, usize, &mut [MaybeUninit<f32>])> =
        blocks_by_channel(&mut y, d.c, od.plane())
            .into_iter()
            .enumerate()
            .flat_map(|(b, v)| v.into_iter().map(move |(n, ch)| (n, b, ch)))
            .collect();
    chunks.into_par_iter().for_each_init(
        || (Vec::new(), vec![0f32; od.plane() * LANES]),
        |(pad, out), (n, b, dst)| {
            let (c0, cn) = (b * LANES, LANES.min(d.c - b * LANES));
            gather_padded(
                &x[n * d.c * d.plane()..][..d.c * d.plane()],
                &g,
                c0,
                cn,
                pad,
            );
            dw_block_forward(&g, &weights[b], pad, out);
            if let Some(e) = epilogue {
                let (mut a, mut t) = ([0f32; LANES], [0f32; LANES]);
                a[..cn].copy_from_slice(&e.scale[c0..c0 + cn]);
                t[..cn].copy_from_slice(&e.shift[c0..c0 + cn]);
                epilogue_lanes(out, &a, &t, e.act);
            }
            scatter_block(out, od.plane(), cn, dst);
        },
    );
    // SAFETY: the chunks partition `y` and each is written by scatter_block.
    (unsafe { finish(y) }, od)
}

/// Gradients of [`depthwise_forward`] with respect to its input and weight.
pub fn depthwise_backward(
    x: &[f32],
    d: Nchw,
    w: &[f32],
    k: usize,
    stride: usize,
    dy: &[f32],
    od: Nchw,
) -> (Vec<f32>, Vec<f32>) {
    let g = DwShape::new(d.h, d.w, k, stride);
    let mut dx = output(d.len());
    let groups = blocks_by_channel(&mut dx, d.c, d.plane());
    let dws: Vec<Vec<f32>> = groups
        .into_par_iter()
        .enumerate()
        .map(|(b, chunks)| {
            let (c0, cn) = (b * LANES, LANES.min(d.c - b * LANES));
            let wb = block_weights(w, k, c0, cn);
            let mut flipped = vec![0f32; k * k * LANES];
            for t in 0..k * k {
                flipped[(k * k - 1 - t) * LANES..][..LANES]
                    .copy_from_slice(&wb[t * LANES..][..LANES]);
            }
            let mut dwb = vec![0f32; k * k * LANES];
            let (mut pad, mut gy, mut dpad, mut crop) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for (n, dst) in chunks {
                gather_padded(
                    &x[n * d.c * d.plane()..][..d.c * d.plane()],
                    &g,
                    c0,
                    cn,
                    &mut pad,
                );
                if stride == 1 {
                    // dx is the correlation of dy (padded by p) with the
                    // flipped kernel: the forward kernel, accumulating in
                    // registers instead of scattering into memory.
                    let dy_shape = DwShape::new(g.oh, g.ow, k, 1);
                    gather_padded(
                        &dy[n * d.c * od.plane()..][..d.c * od.plane()],
                        &dy_shape,
                        c0,
                        cn,
                        &mut gy,
                    );
                    let off = dy_shape.p * dy_shape.pw + dy_shape.p;
                    dw_block_backward_weight(&g, &pad, &gy, dy_shape.pw, off, &mut dwb);
                    crop.clear();
                    crop.resize(d.plane() * LANES, 0.0);
                    dw_block_forward(&dy_shape, &flipped, &gy, &mut crop);
                    scatter_block(&crop, d.plane(), cn, dst);
                    continue;
                }
                // dy of this block, pixel-major (no padding needed).
                let out_shape = DwShape {
                    h: g.oh,
                    w: g.ow,
                    p: 0,
                    pw: g.ow,
                    ph: g.oh,
                    ..g
                };
                gather_padded(
                    &dy[n * d.c * od.plane()..][..d.c * od.plane()],
                    &out_shape,
                    c0,
                    cn,
                    &mut gy,
                );
                dw_block_backward_weight(&g, &pad, &gy, g.ow, 0, &mut dwb);
                dpad.clear();
                dpad.resize(g.ph * g.pw * LANES, 0.0);
                dw_block_backward_input(&g, &wb, &gy, &mut dpad);
                // Crop the padding, then back to channel-major.
                crop.clear();
                for y in 0..d.h {
                    let row = (y + g.p) * g.pw + g.p;
                    crop.extend_from_slice(&dpad[row * LANES..(row + d.w) * LANES]);
                }
                scatter_block(&crop, d.plane(), cn, dst);
            }
            dwb
        })
        .collect();
    // SAFETY: the chunks partition `dx` and each is written by scatter_block.
    let dx = unsafe { finish(dx) };
    let mut dw = vec![0f32; d.c * k * k];
    for (b, dwb) in dws.iter().enumerate() {
        for l in 0..LANES.min(d.c - b * LANES) {
            for t in 0..k * k {
                dw[(b * LANES + l) * k * k + t] = dwb[t * LANES + l];
            }
        }
    }
    (dx, dw)
}

/// `dst (m×n) = [dst +] lhs (m×k) · rhs (k×n)` with explicit strides; the
/// rows of `dst` are `dst_rs` apart (`n` for a whole matrix, more for a
/// column block of a wider one).
#[allow(clippy::too_many_arguments)]
fn gemm(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [MaybeUninit<f32>],
    dst_rs: usize,
    accumulate: bool,
    lhs: &[f32],
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: &[f32],
    rhs_rs: usize,
    rhs_cs: usize,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(dst_rs >= n && dst.len() >= (m - 1) * dst_rs + n);
    assert!(k == 0 || (lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs));
    assert!(k == 0 || (rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs));
    let par = if parallel {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above check that every index the strides reach
    // lies inside dst (m rows of n, dst_rs apart), lhs (m×k) and rhs (k×n);
    // gemm reads dst only when `accumulate` (then the caller initialised it).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr() as *mut f32,
            1,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// Multiply-adds below which one sample's 1×1 convolution is not split by
/// output channels: at 28 px, splitting 7×7 and 14×14 layers over two
/// threads made batch-1 inference of `mbv3-28-lite` slower.
const SMALL_GEMM_MACS: usize = 1 << 18;

/// [`pointwise_forward`] followed by `epilogue` (inference: BN with stored
/// statistics and the activation). One parallel region: output channels
/// are split into one row block per thread (samples, when there are
/// enough), each block multiplied on its thread and finished while it is
/// in cache.
pub fn pointwise_forward_with(
    x: &[f32],
    d: Nchw,
    w: &[f32],
    cout: usize,
    e: Epilogue<'_>,
) -> Vec<f32> {
    let hw = d.plane();
    let mut y = output(d.n * cout * hw);
    let threads = rayon::current_num_threads().max(1);
    // Row blocks of at least 8 channels (a GEMM micro-tile's height); a
    // product too small to repay waking a second thread stays whole.
    let small = cout * hw * d.c < SMALL_GEMM_MACS;
    let rows = if d.n >= threads || small {
        cout
    } else {
        cout.div_ceil(threads * d.n.max(1))
            .next_multiple_of(8)
            .min(cout)
    };
    let tasks: Vec<(usize, usize, &mut [MaybeUninit<f32>])> = y
        .chunks_mut(cout * hw)
        .enumerate()
        .flat_map(|(n, yn)| {
            yn.chunks_mut(rows * hw)
                .enumerate()
                .map(move |(b, blk)| (n, b * rows, blk))
        })
        .collect();
    // One task (a small product of one sample): gemm picks its own threads.
    let one = tasks.len() == 1;
    let run = |(n, c0, blk): (usize, usize, &mut [MaybeUninit<f32>])| {
        let m = blk.len() / hw.max(1);
        let xn = &x[n * d.c * hw..(n + 1) * d.c * hw];
        gemm(
            m,
            hw,
            d.c,
            blk,
            hw,
            false,
            &w[c0 * d.c..],
            d.c,
            1,
            xn,
            hw,
            1,
            one,
        );
        // SAFETY: gemm wrote all m×hw elements of the block.
        let blk: &mut [f32] = unsafe { &mut *(blk as *mut [MaybeUninit<f32>] as *mut [f32]) };
        for (i, plane) in blk.chunks_exact_mut(hw.max(1)).enumerate() {
            epilogue_plane(plane, e.scale[c0 + i], e.shift[c0 + i], e.act);
        }
    };
    if one {
        tasks.into_iter().for_each(run);
    } else {
        tasks.into_par_iter().for_each(run);
    }
    // SAFETY: the tasks partition `y` and gemm wrote each of them.
    unsafe { finish(y) }
}

/// `f(sample, its output chunk, parallel)` for every sample's
/// `chunk`-element output: samples in parallel when there are at least as
/// many as threads, else one after another, each told to parallelise
/// within (`parallel`).
fn for_each_sample<F>(y: &mut [MaybeUninit<f32>], chunk: usize, f: F)
where
    F: Fn(usize, &mut [MaybeUninit<f32>], bool) + Sync,
{
    let chunk = chunk.max(1);
    if y.len() / chunk >= rayon::current_num_threads() {
        y.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(n, yn)| f(n, yn, false));
    } else {
        y.chunks_mut(chunk)
            .enumerate()
            .for_each(|(n, yn)| f(n, yn, true));
    }
}

/// `Σₙ g(n)` of per-sample `len`-element weight gradients: `add(n, acc)`
/// adds sample `n`'s into a zeroed per-thread sum, one sum per thread
/// over its share of the samples; the sums are added at the end.
fn sum_over_samples<F>(samples: usize, len: usize, add: F) -> Vec<f32>
where
    F: Fn(usize, &mut [f32]) + Sync,
{
    let threads = rayon::current_num_threads().max(1);
    let per = samples.div_ceil(threads).max(1);
    let partials: Vec<Vec<f32>> = (0..samples)
        .collect::<Vec<_>>()
        .par_chunks(per)
        .map(|ns| {
            let mut acc = vec![0f32; len];
            for &n in ns {
                add(n, &mut acc);
            }
            acc
        })
        .collect();
    let mut total = vec![0f32; len];
    for p in partials {
        for (a, b) in total.iter_mut().zip(p) {
            *a += b;
        }
    }
    total
}

/// 1×1 convolution, stride 1: `w` is `[C_out, C_in]`.
pub fn pointwise_forward(x: &[f32], d: Nchw, w: &[f32], cout: usize) -> Vec<f32> {
    let hw = d.plane();
    let mut y = output(d.n * cout * hw);
    for_each_sample(&mut y, cout * hw, |n, yn, parallel| {
        let xn = &x[n * d.c * hw..(n + 1) * d.c * hw];
        gemm(cout, hw, d.c, yn, hw, false, w, d.c, 1, xn, hw, 1, parallel);
    });
    // SAFETY: gemm wrote every element of every chunk.
    unsafe { finish(y) }
}

/// Gradients of [`pointwise_forward`] with respect to input and weight.
pub fn pointwise_backward(
    x: &[f32],
    d: Nchw,
    w: &[f32],
    cout: usize,
    dy: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let hw = d.plane();
    let cin = d.c;
    let mut dx = output(d.len());
    dx.par_chunks_mut(cin * hw)
        .enumerate()
        .for_each(|(n, dxn)| {
            let g = &dy[n * cout * hw..(n + 1) * cout * hw];
            // Wᵀ: element (i, j) = w[j·cin + i].
            gemm(cin, hw, cout, dxn, hw, false, w, 1, cin, g, hw, 1, false);
        });
    let dw = sum_over_samples(d.n, cout * cin, |n, acc| {
        let g = &dy[n * cout * hw..(n + 1) * cout * hw];
        let xn = &x[n * cin * hw..(n + 1) * cin * hw];
        // Xₙᵀ: element (i, j) = xn[j·hw + i].
        gemm(
            cout,
            cin,
            hw,
            uninit(acc),
            cin,
            true,
            g,
            hw,
            1,
            xn,
            1,
            hw,
            false,
        );
    });
    // SAFETY: one gemm per sample wrote each chunk of `dx`.
    let dx = unsafe { finish(dx) };
    (dx, dw)
}

/// Output columns (pixels) of one patch-matrix tile of a dense
/// convolution: `C_in·k²` rows of this many columns stay in L2 while the
/// GEMM reads them (27 × 2048 floats for the 3-channel 3×3 stem).
const PATCH_COLS: usize = 2048;

/// Output rows of one tile: whole rows, about [`PATCH_COLS`] pixels.
fn tile_rows(g: &DwShape) -> usize {
    (PATCH_COLS / g.ow.max(1)).clamp(1, g.oh.max(1))
}

/// The tiles of whole output rows a dense convolution works in:
/// `(oy0, oy1, pixels)`.
fn row_tiles(g: &DwShape) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
    let rows = tile_rows(g);
    (0..g.oh).step_by(rows).map(move |oy0| {
        let oy1 = (oy0 + rows).min(g.oh);
        (oy0, oy1, (oy1 - oy0) * g.ow)
    })
}

/// Range of output columns `ox` whose tap `kx` falls inside the input row
/// (the rest read the zero padding).
fn valid_cols(g: &DwShape, kx: usize) -> (usize, usize) {
    // ix = ox·s + kx − p ≥ 0  ⇔  ox ≥ ⌈(p − kx) / s⌉
    let lo = if kx < g.p {
        (g.p - kx).div_ceil(g.s)
    } else {
        0
    };
    // ix ≤ w − 1  ⇔  ox ≤ ⌊(w − 1 + p − kx) / s⌋
    let hi = if g.w + g.p > kx {
        ((g.w - 1 + g.p - kx) / g.s + 1).min(g.ow)
    } else {
        0
    };
    (lo.min(hi), hi)
}

/// Input row of tap `ky` for output row `oy`, `None` in the padding.
fn input_row(g: &DwShape, oy: usize, ky: usize) -> Option<usize> {
    (oy * g.s + ky).checked_sub(g.p).filter(|&iy| iy < g.h)
}

/// Walks the patch matrix of output rows `oy0..oy1` of one sample
/// `[C_in, h, w]`: matrix row `(ci·k + ky)·k + kx`, column
/// `(oy − oy0)·ow + ox` holds the input value that tap multiplies (0 in
/// the padding). For every matrix row and output row, `f(at, run)`: `at`
/// is the offset of that output row's `ow` entries in the matrix, and
/// `run = Some((lo, hi, first))` says that entries `lo..hi` read the
/// sample's elements `first, first + s, …` (the rest is padding), `None`
/// that all of them are padding.
fn for_each_patch_row(
    g: &DwShape,
    cin: usize,
    oy0: usize,
    oy1: usize,
    mut f: impl FnMut(usize, Option<(usize, usize, usize)>),
) {
    let (k, ow, cols) = (g.k, g.ow, (oy1 - oy0) * g.ow);
    for ci in 0..cin {
        for ky in 0..k {
            for kx in 0..k {
                let row = ((ci * k + ky) * k + kx) * cols;
                let (lo, hi) = valid_cols(g, kx);
                for oy in oy0..oy1 {
                    let run = input_row(g, oy, ky)
                        .filter(|_| lo < hi)
                        .map(|iy| (lo, hi, (ci * g.h + iy) * g.w + lo * g.s + kx - g.p));
                    f(row + (oy - oy0) * ow, run);
                }
            }
        }
    }
}

/// The patch matrix of [`for_each_patch_row`] (`C_in·k² × (oy1 − oy0)·ow`).
fn im2col(x: &[f32], g: &DwShape, cin: usize, oy0: usize, oy1: usize, dst: &mut [f32]) {
    for_each_patch_row(g, cin, oy0, oy1, |at, run| {
        let out = &mut dst[at..][..g.ow];
        let Some((lo, hi, first)) = run else {
            out.fill(0.0);
            return;
        };
        out[..lo].fill(0.0);
        out[hi..].fill(0.0);
        if g.s == 1 {
            out[lo..hi].copy_from_slice(&x[first..first + hi - lo]);
        } else {
            for (o, v) in out[lo..hi].iter_mut().zip(x[first..].iter().step_by(g.s)) {
                *o = *v;
            }
        }
    });
}

/// Adds a patch-matrix gradient (the layout of [`for_each_patch_row`])
/// back onto the input elements each entry was read from.
fn col2im_add(dcol: &[f32], g: &DwShape, cin: usize, oy0: usize, oy1: usize, dx: &mut [f32]) {
    for_each_patch_row(g, cin, oy0, oy1, |at, run| {
        if let Some((lo, hi, first)) = run {
            for (d, v) in dx[first..]
                .iter_mut()
                .step_by(g.s)
                .zip(&dcol[at + lo..at + hi])
            {
                *d += *v;
            }
        }
    });
}

/// Dense `k×k` convolution, padding `k / 2`, no bias (the network's stem):
/// `x: [N, C_in, h, w]`, `w: [C_out, C_in, k, k]` → `[N, C_out, h', w']`.
/// Per sample, tiles of whole output rows: the tile's patch matrix is
/// built once and multiplied by the weights into the output's columns.
pub fn conv_forward(
    x: &[f32],
    d: Nchw,
    w: &[f32],
    cout: usize,
    k: usize,
    s: usize,
) -> (Vec<f32>, Nchw) {
    let g = DwShape::new(d.h, d.w, k, s);
    let od = Nchw {
        n: d.n,
        c: cout,
        h: g.oh,
        w: g.ow,
    };
    let (ohw, taps) = (od.plane(), d.c * k * k);
    let mut y = output(od.len());
    if ohw == 0 || cout == 0 {
        // SAFETY: the buffer is empty.
        return (unsafe { finish(y) }, od);
    }
    for_each_sample(&mut y, cout * ohw, |n, yn, parallel| {
        let xn = &x[n * d.c * d.plane()..(n + 1) * d.c * d.plane()];
        let rows = tile_rows(&g);
        let mut col = vec![0f32; taps * rows * g.ow];
        for (oy0, oy1, cols) in row_tiles(&g) {
            im2col(xn, &g, d.c, oy0, oy1, &mut col[..taps * cols]);
            gemm(
                cout,
                cols,
                taps,
                &mut yn[oy0 * g.ow..],
                ohw,
                false,
                w,
                taps,
                1,
                &col,
                cols,
                1,
                parallel,
            );
        }
    });
    // SAFETY: the tiles' GEMMs wrote every column of every output row.
    (unsafe { finish(y) }, od)
}

/// Gradients of [`conv_forward`]: `(dx, dw)`, `dx` only when `need_dx`
/// (the stem's input is the image, whose gradient nobody reads).
#[allow(clippy::too_many_arguments)]
pub fn conv_backward(
    x: &[f32],
    d: Nchw,
    w: &[f32],
    k: usize,
    s: usize,
    dy: &[f32],
    od: Nchw,
    need_dx: bool,
) -> (Option<Vec<f32>>, Vec<f32>) {
    let g = DwShape::new(d.h, d.w, k, s);
    let (cout, ohw, taps, hw) = (od.c, od.plane(), d.c * k * k, d.plane());
    let rows = tile_rows(&g);
    // dW = Σₙ dYₙ · Pₙᵀ
    let dw = sum_over_samples(d.n, cout * taps, |n, acc| {
        let xn = &x[n * d.c * hw..(n + 1) * d.c * hw];
        let gn = &dy[n * cout * ohw..(n + 1) * cout * ohw];
        let mut col = vec![0f32; taps * rows * g.ow];
        for (oy0, oy1, cols) in row_tiles(&g) {
            im2col(xn, &g, d.c, oy0, oy1, &mut col[..taps * cols]);
            // Pᵀ: element (i, j) = col[j·cols + i].
            let dy_tile = &gn[oy0 * g.ow..];
            gemm(
                cout,
                taps,
                cols,
                uninit(acc),
                taps,
                true,
                dy_tile,
                ohw,
                1,
                &col,
                1,
                cols,
                false,
            );
        }
    });
    if !need_dx {
        return (None, dw);
    }
    // dPₙ = Wᵀ · dYₙ, then each entry added back to the pixel it read.
    let mut dx = vec![0f32; d.len()];
    dx.par_chunks_mut((d.c * hw).max(1))
        .enumerate()
        .for_each(|(n, dxn)| {
            let gn = &dy[n * cout * ohw..(n + 1) * cout * ohw];
            let mut dcol = vec![0f32; taps * rows * g.ow];
            for (oy0, oy1, cols) in row_tiles(&g) {
                // Wᵀ: element (i, j) = w[j·taps + i].
                gemm(
                    taps,
                    cols,
                    cout,
                    uninit(&mut dcol),
                    cols,
                    false,
                    w,
                    1,
                    taps,
                    &gn[oy0 * g.ow..],
                    ohw,
                    1,
                    false,
                );
                col2im_add(&dcol[..taps * cols], &g, d.c, oy0, oy1, dxn);
            }
        });
    (Some(dx), dw)
}

/// Elements a parallel task should cover at least: with 2×2 or 7×7
/// planes, one task per plane would cost more to schedule than to run.
const MIN_TASK: usize = 8192;

/// Planes per parallel task for planes of `plane` elements.
fn planes_per_task(plane: usize) -> usize {
    (MIN_TASK / plane.max(1)).max(1)
}

/// A sample's feature map is small enough to accumulate whole rows into a
/// per-thread buffer that stays in cache.
fn small_rows(d: Nchw) -> bool {
    d.c * d.plane() <= 1 << 16
}

/// Per-channel `(Σ(a − μₐ), Σ(a − μₐ)·(b − μ))` over (N, H, W), with `μ`
/// the per-channel `centre` (0 without one) subtracted from `b`, and from
/// `a` too (`μₐ = μ`) when there is no `b` (`b = a`): `(Σ(x − μ), Σ(x − μ)²)`,
/// or `(Σg, Σg·(x − μ))` with `a = g`, `b = x` (`μₐ = 0`). Centring first, not
/// `Σx² − mμ²`: in f32 that difference of two large, nearly equal numbers
/// loses the variance of activations whose mean is large, and with it the
/// result's independence of how the sums were split (threads, processes).
///
/// Small feature maps: every thread sums whole sample rows
/// (`[C·H·W]`, contiguous, vectorised) over its share of the batch, then
/// each channel's plane is reduced in f64. Large ones: one channel at a
/// time, plane by plane.
fn channel_sums(a: &[f32], b: Option<&[f32]>, d: Nchw, centre: Option<&[f32]>) -> Vec<(f64, f64)> {
    let mu = |c: usize| centre.map_or(0.0, |m| m[c]);
    if !small_rows(d) {
        return (0..d.c)
            .into_par_iter()
            .map(|c| match b {
                Some(b) => channel_sum_and_dot(a, b, d, c, mu(c)),
                None => channel_sum_and_squares(a, d, c, mu(c)),
            })
            .collect();
    }
    let row = d.c * d.plane();
    let plane = d.plane();
    // The centre of every element of a sample row.
    let centre_row: Vec<f32> = (0..row).map(|i| mu(i / plane.max(1))).collect();
    let zeros = vec![0f32; row];
    let threads = rayon::current_num_threads().max(1);
    let per = d.n.div_ceil(threads).max(1);
    let partials: Vec<(Vec<f32>, Vec<f32>)> = (0..d.n)
        .collect::<Vec<_>>()
        .par_chunks(per)
        .map(|ns| {
            let (mut s, mut q) = (vec![0f32; row], vec![0f32; row]);
            for &n in ns {
                let x = &a[n * row..][..row];
                match b {
                    Some(b) => {
                        accumulate_row(&mut s, &mut q, x, &zeros, &b[n * row..][..row], &centre_row)
                    }
                    None => accumulate_row(&mut s, &mut q, x, &centre_row, x, &centre_row),
                }
            }
            (s, q)
        })
        .collect();
    (0..d.c)
        .map(|c| {
            let (mut s, mut q) = (0f64, 0f64);
            for (ps, pq) in &partials {
                s += ps[c * plane..][..plane]
                    .iter()
                    .map(|&v| v as f64)
                    .sum::<f64>();
                q += pq[c * plane..][..plane]
                    .iter()
                    .map(|&v| v as f64)
                    .sum::<f64>();
            }
            (s, q)
        })
        .collect()
}

/// `s += x − cx`, `q += (x − cx) · (y − cy)`, elementwise.
#[multiversion::multiversion(targets = "simd")]
fn accumulate_row(s: &mut [f32], q: &mut [f32], x: &[f32], cx: &[f32], y: &[f32], cy: &[f32]) {
    for (i, (s, q)) in s.iter_mut().zip(q.iter_mut()).enumerate() {
        *s += x[i] - cx[i];
        *q += (x[i] - cx[i]) * (y[i] - cy[i]);
    }
}

/// Per-channel batch mean and biased variance in one pass over `x`:
/// `Σx` and `Σ(x − c)²` about a shift `c` close to the mean (each channel's
/// mean over the first sample's plane), so that, unlike `E[x²] − μ²`, no
/// difference of two large, nearly equal numbers loses the variance of
/// activations with a large mean (a second pass about the mean cost a
/// whole read of every BN input). `reduce` sums each buffer (`[Σx per
/// channel, count]`, then `[Σ(x − μ)² per channel]`) with the other
/// processes of a data-parallel batch (the identity for one process), so
/// that every process gets the statistics of the whole batch; each
/// process's second moment is moved from its own shift to the common mean
/// before the sum.
fn channel_stats(x: &[f32], d: Nchw, reduce: Reduce<'_>) -> (Vec<f32>, Vec<f32>) {
    let plane = d.plane();
    // (An empty slice of a sharded batch has no first sample: shift 0.)
    let shift: Vec<f32> = (0..d.c)
        .map(|c| {
            let p = if d.n == 0 {
                &[][..]
            } else {
                &x[c * plane..][..plane]
            };
            (p.iter().map(|&v| v as f64).sum::<f64>() / plane.max(1) as f64) as f32
        })
        .collect();
    // (Σ(x − c), Σ(x − c)²): deviations from the shift, small numbers
    // whose f32 partial sums keep their precision.
    let local = channel_sums(x, None, d, Some(&shift));
    let n = (d.n * plane) as f64;
    let mut sums: Vec<f64> = (0..d.c).map(|c| local[c].0 + n * shift[c] as f64).collect();
    sums.push(n);
    reduce(&mut sums);
    let m = sums[d.c];
    let mean: Vec<f64> = sums[..d.c].iter().map(|s| s / m).collect();
    // Σ(x − μ)² = Σ(x − c)² + 2(c − μ)·Σ(x − c) + n·(c − μ)²
    let mut sq: Vec<f64> = (0..d.c)
        .map(|c| {
            let (s, q) = local[c];
            let delta = shift[c] as f64 - mean[c];
            q + 2.0 * delta * s + n * delta * delta
        })
        .collect();
    reduce(&mut sq);
    let var = sq.iter().map(|q| (q / m).max(0.0) as f32).collect();
    (mean.into_iter().map(|v| v as f32).collect(), var)
}

/// Sums a buffer of per-channel statistics across the processes of a
/// data-parallel batch (see [`batch_norm_forward_reduced`]).
pub type Reduce<'a> = &'a dyn Fn(&mut [f64]);

/// `[a_0 … a_{C−1}, b_0 … b_{C−1}, count]` of per-channel pairs.
fn packed(pairs: Vec<(f64, f64)>, count: f64) -> Vec<f64> {
    let (a, b): (Vec<f64>, Vec<f64>) = pairs.into_iter().unzip();
    let mut buf = a;
    buf.extend(b);
    buf.push(count);
    buf
}

#[multiversion::multiversion(targets = "simd")]
fn affine_plane(out: &mut [MaybeUninit<f32>], x: &[f32], a: f32, b: f32) {
    for (o, v) in out.iter_mut().zip(x) {
        o.write(v * a + b);
    }
}

/// Σ(x − μ) and Σ(x − μ)² of channel `c` over all samples (f64 across planes).
#[multiversion::multiversion(targets = "simd")]
fn channel_sum_and_squares(x: &[f32], d: Nchw, c: usize, mu: f32) -> (f64, f64) {
    let (mut s, mut sq) = (0f64, 0f64);
    for n in 0..d.n {
        let (a, b) = sum_and_squares(&x[(n * d.c + c) * d.plane()..][..d.plane()], mu);
        s += a as f64;
        sq += b as f64;
    }
    (s, sq)
}

/// Σg and Σg·x of channel `c` over all samples.
#[multiversion::multiversion(targets = "simd")]
fn channel_sum_and_dot(g: &[f32], x: &[f32], d: Nchw, c: usize, mu: f32) -> (f64, f64) {
    let (mut s, mut sx) = (0f64, 0f64);
    for n in 0..d.n {
        let at = (n * d.c + c) * d.plane();
        let (a, b) = sum_and_dot(&g[at..][..d.plane()], &x[at..][..d.plane()], mu);
        s += a as f64;
        sx += b as f64;
    }
    (s, sx)
}

#[inline(always)]
fn sum_and_squares(x: &[f32], mu: f32) -> (f32, f32) {
    // Eight partial sums let the compiler keep them in one vector register.
    let mut s = [0f32; 8];
    let mut q = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            s[i] += c[i] - mu;
            q[i] += (c[i] - mu) * (c[i] - mu);
        }
    }
    let (mut a, mut b) = (s.iter().sum::<f32>(), q.iter().sum::<f32>());
    for v in rest {
        a += v - mu;
        b += (v - mu) * (v - mu);
    }
    (a, b)
}

#[inline(always)]
fn sum_and_dot(g: &[f32], x: &[f32], mu: f32) -> (f32, f32) {
    let mut s = [0f32; 8];
    let mut q = [0f32; 8];
    let n = g.len() / 8 * 8;
    for (gc, xc) in g[..n].chunks_exact(8).zip(x[..n].chunks_exact(8)) {
        for i in 0..8 {
            s[i] += gc[i];
            q[i] += gc[i] * (xc[i] - mu);
        }
    }
    let (mut a, mut b) = (s.iter().sum::<f32>(), q.iter().sum::<f32>());
    for (gv, xv) in g[n..].iter().zip(&x[n..]) {
        a += gv;
        b += gv * (xv - mu);
    }
    (a, b)
}

/// `y = x · scale[c] + shift[c]`.
pub fn channel_affine(x: &[f32], d: Nchw, scale: &[f32], shift: &[f32]) -> Vec<f32> {
    let mut y = output(x.len());
    let (plane, k) = (d.plane().max(1), planes_per_task(d.plane()));
    y.par_chunks_mut(k * plane)
        .zip(x.par_chunks(k * plane))
        .enumerate()
        .for_each(|(task, (yo, xi))| {
            for (j, (yp, xp)) in yo.chunks_mut(plane).zip(xi.chunks(plane)).enumerate() {
                let c = (task * k + j) % d.c;
                affine_plane(yp, xp, scale[c], shift[c]);
            }
        });
    // SAFETY: affine_plane wrote every plane.
    unsafe { finish(y) }
}

/// Training-mode batch normalisation: returns `y`, the batch mean and the
/// biased batch variance.
pub fn batch_norm_forward(
    x: &[f32],
    d: Nchw,
    gamma: &[f32],
    beta: &[f32],
    eps: f64,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    batch_norm_forward_reduced(x, d, gamma, beta, eps, &|_| {})
}

/// [`batch_norm_forward`] on one process's slice of a batch spread over
/// processes: `reduce` sums the per-channel sums with the other slices, so
/// the statistics (and `y`) are those of the whole batch.
pub fn batch_norm_forward_reduced(
    x: &[f32],
    d: Nchw,
    gamma: &[f32],
    beta: &[f32],
    eps: f64,
    reduce: Reduce<'_>,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (mean, var) = channel_stats(x, d, reduce);
    let scale: Vec<f32> = (0..d.c)
        .map(|c| gamma[c] / ((var[c] as f64 + eps).sqrt() as f32))
        .collect();
    let shift: Vec<f32> = (0..d.c).map(|c| beta[c] - mean[c] * scale[c]).collect();
    (channel_affine(x, d, &scale, &shift), mean, var)
}

/// Gradients of [`batch_norm_forward`] (through the batch statistics) with
/// respect to `x`, `gamma` and `beta`.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_backward(
    x: &[f32],
    d: Nchw,
    gamma: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f64,
    dy: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    batch_norm_backward_reduced(x, d, gamma, mean, var, eps, dy, &|_| {})
}

/// [`batch_norm_backward`] of [`batch_norm_forward_reduced`]: `reduce` sums
/// `Σdy` and `Σdy·x` with the other slices, because every input moved the
/// whole batch's statistics. `dgamma` and `dbeta` stay this slice's share
/// (the optimizer step sums parameter gradients across processes).
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_backward_reduced(
    x: &[f32],
    d: Nchw,
    gamma: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f64,
    dy: &[f32],
    reduce: Reduce<'_>,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    // (Σdy, Σdy·(x − μ)) of this slice, then of the whole batch.
    let local = channel_sums(dy, Some(x), d, Some(mean));
    let mut buf = packed(local.clone(), (d.n * d.plane()) as f64);
    reduce(&mut buf);
    let m = buf[2 * d.c];
    let sums: Vec<(f64, f64)> = (0..d.c).map(|c| (buf[c], buf[d.c + c])).collect();
    // dx = k·(dy − mean(dy) − x̂·mean(dy·x̂)) with k = γ/σ and x̂ = (x − μ)/σ,
    // rewritten per channel as dx = k·dy + a·(x − μ) + b.
    let mut dgamma = vec![0f32; d.c];
    let mut dbeta = vec![0f32; d.c];
    let mut coef = vec![(0f32, 0f32, 0f32); d.c];
    for c in 0..d.c {
        let inv = 1.0 / (var[c] as f64 + eps).sqrt();
        let (sg, sg_centred) = sums[c];
        let sum_g_xhat = sg_centred * inv;
        let (lg, lg_centred) = local[c];
        dbeta[c] = lg as f32;
        dgamma[c] = (lg_centred * inv) as f32;
        let k = gamma[c] as f64 * inv;
        let a = -k * inv * sum_g_xhat / m;
        let b = -k * sg / m;
        coef[c] = (k as f32, a as f32, b as f32);
    }
    let mut dx = output(x.len());
    let (plane, k) = (d.plane().max(1), planes_per_task(d.plane()));
    dx.par_chunks_mut(k * plane)
        .enumerate()
        .for_each(|(task, out)| {
            for (j, o) in out.chunks_mut(plane).enumerate() {
                let p = task * k + j;
                let c = p % d.c;
                let start = p * plane;
                let (xs, gs) = (&x[start..start + plane], &dy[start..start + plane]);
                let (kc, ac, bc) = coef[c];
                bn_dx_plane(o, gs, xs, mean[c], kc, ac, bc);
            }
        });
    // SAFETY: bn_dx_plane wrote every plane.
    (unsafe { finish(dx) }, dgamma, dbeta)
}

#[multiversion::multiversion(targets = "simd")]
fn bn_dx_plane(
    out: &mut [MaybeUninit<f32>],
    g: &[f32],
    x: &[f32],
    mu: f32,
    k: f32,
    a: f32,
    b: f32,
) {
    for ((o, gv), xv) in out.iter_mut().zip(g).zip(x) {
        o.write(k * gv + a * (xv - mu) + b);
    }
}

#[multiversion::multiversion(targets = "simd")]
fn act_chunk(out: &mut [MaybeUninit<f32>], x: &[f32], act: Activation) {
    let it = out.iter_mut().zip(x);
    match act {
        Activation::Relu => it.for_each(|(o, v)| {
            o.write(v.max(0.0));
        }),
        Activation::Relu6 => it.for_each(|(o, v)| {
            o.write(v.clamp(0.0, 6.0));
        }),
        Activation::HSwish => it.for_each(|(o, v)| {
            o.write(v * (v + 3.0).clamp(0.0, 6.0) * (1.0 / 6.0));
        }),
    }
}

#[multiversion::multiversion(targets = "simd")]
fn act_grad_chunk(out: &mut [MaybeUninit<f32>], x: &[f32], g: &[f32], act: Activation) {
    let it = out.iter_mut().zip(x).zip(g);
    match act {
        Activation::Relu => it.for_each(|((o, v), g)| {
            o.write(if *v > 0.0 { *g } else { 0.0 });
        }),
        Activation::Relu6 => it.for_each(|((o, v), g)| {
            o.write(if *v > 0.0 && *v < 6.0 { *g } else { 0.0 });
        }),
        Activation::HSwish => it.for_each(|((o, v), g)| {
            let slope = if *v < -3.0 {
                0.0
            } else if *v > 3.0 {
                1.0
            } else {
                (2.0 * v + 3.0) * (1.0 / 6.0)
            };
            o.write(g * slope);
        }),
    }
}

/// Elementwise activation.
pub fn activation_forward(x: &[f32], act: Activation) -> Vec<f32> {
    let mut y = output(x.len());
    y.par_chunks_mut(1 << 14)
        .zip(x.par_chunks(1 << 14))
        .for_each(|(o, i)| act_chunk(o, i, act));
    // SAFETY: act_chunk wrote every chunk.
    unsafe { finish(y) }
}

/// Gradient of [`activation_forward`] given its input.
pub fn activation_backward(x: &[f32], dy: &[f32], act: Activation) -> Vec<f32> {
    let mut dx = output(x.len());
    dx.par_chunks_mut(1 << 14)
        .zip(x.par_chunks(1 << 14).zip(dy.par_chunks(1 << 14)))
        .for_each(|(o, (xs, gs))| act_grad_chunk(o, xs, gs, act));
    // SAFETY: act_grad_chunk wrote every chunk.
    unsafe { finish(dx) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rnd(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= tol * (1.0 + y.abs()),
                "index {i}: {x} vs {y}"
            );
        }
    }

    /// Naive depthwise conv with an explicit padded index check.
    fn naive_dw(x: &[f32], d: Nchw, w: &[f32], k: usize, s: usize) -> Vec<f32> {
        let p = k as isize / 2;
        let oh = (d.h + 2 * (k / 2) - k) / s + 1;
        let ow = (d.w + 2 * (k / 2) - k) / s + 1;
        let mut y = vec![0f32; d.n * d.c * oh * ow];
        for n in 0..d.n {
            for c in 0..d.c {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = 0.0;
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * s + ky) as isize - p;
                                let ix = (ox * s + kx) as isize - p;
                                if iy >= 0 && ix >= 0 && (iy as usize) < d.h && (ix as usize) < d.w
                                {
                                    acc += x
                                        [((n * d.c + c) * d.h + iy as usize) * d.w + ix as usize]
                                        * w[(c * k + ky) * k + kx];
                                }
                            }
                        }
                        y[((n * d.c + c) * oh + oy) * ow + ox] = acc;
                    }
                }
            }
        }
        y
    }

    #[test]
    fn depthwise_matches_naive_and_finite_differences() {
        for (k, s, h) in [
            (3, 1, 5),
            (5, 1, 6),
            (7, 1, 4),
            (3, 2, 7),
            (5, 2, 6),
            (7, 2, 9),
        ] {
            let d = Nchw {
                n: 2,
                c: 3,
                h,
                w: h,
            };
            let x = rnd(d.len(), 1);
            let w = rnd(d.c * k * k, 2);
            let (y, od) = depthwise_forward(&x, d, &w, k, s);
            close(&y, &naive_dw(&x, d, &w, k, s), 1e-5);
            // Backward: the gradient of sum(y · r) is checked by linearity:
            // dx·δ ≈ f(x + δ) − f(x) exactly for a linear op.
            let r = rnd(od.len(), 3);
            let (dx, dw) = depthwise_backward(&x, d, &w, k, s, &r, od);
            let loss = |x: &[f32], w: &[f32]| -> f64 {
                naive_dw(x, d, w, k, s)
                    .iter()
                    .zip(&r)
                    .map(|(a, b)| (*a * *b) as f64)
                    .sum()
            };
            let base = loss(&x, &w);
            for i in [0, d.len() / 2, d.len() - 1] {
                let mut x2 = x.clone();
                x2[i] += 1.0;
                assert!(
                    ((loss(&x2, &w) - base) as f32 - dx[i]).abs() < 1e-3,
                    "dx[{i}] k{k} s{s}"
                );
            }
            for i in [0, w.len() / 2, w.len() - 1] {
                let mut w2 = w.clone();
                w2[i] += 1.0;
                assert!(
                    ((loss(&x, &w2) - base) as f32 - dw[i]).abs() < 1e-3,
                    "dw[{i}] k{k} s{s}"
                );
            }
        }
    }

    #[test]
    fn pointwise_matches_naive() {
        let d = Nchw {
            n: 5,
            c: 4,
            h: 3,
            w: 2,
        };
        let cout = 6;
        let x = rnd(d.len(), 4);
        let w = rnd(cout * d.c, 5);
        let y = pointwise_forward(&x, d, &w, cout);
        let hw = d.plane();
        let mut naive = vec![0f32; d.n * cout * hw];
        for n in 0..d.n {
            for o in 0..cout {
                for p in 0..hw {
                    naive[(n * cout + o) * hw + p] = (0..d.c)
                        .map(|i| w[o * d.c + i] * x[(n * d.c + i) * hw + p])
                        .sum();
                }
            }
        }
        close(&y, &naive, 1e-5);
        let g = rnd(y.len(), 6);
        let (dx, dw) = pointwise_backward(&x, d, &w, cout, &g);
        let mut ndx = vec![0f32; d.len()];
        let mut ndw = vec![0f32; cout * d.c];
        for n in 0..d.n {
            for o in 0..cout {
                for i in 0..d.c {
                    for p in 0..hw {
                        let gv = g[(n * cout + o) * hw + p];
                        ndx[(n * d.c + i) * hw + p] += w[o * d.c + i] * gv;
                        ndw[o * d.c + i] += x[(n * d.c + i) * hw + p] * gv;
                    }
                }
            }
        }
        close(&dx, &ndx, 1e-5);
        close(&dw, &ndw, 1e-5);
    }

    #[test]
    fn batch_norm_matches_direct_formulas_and_finite_differences() {
        let d = Nchw {
            n: 3,
            c: 2,
            h: 2,
            w: 3,
        };
        let x: Vec<f32> = rnd(d.len(), 7).iter().map(|v| v * 2.0 + 0.5).collect();
        let gamma = vec![1.5, 0.7];
        let beta = vec![0.1, -0.2];
        let eps = 1e-5;
        let (y, mean, var) = batch_norm_forward(&x, d, &gamma, &beta, eps);
        for c in 0..d.c {
            let vals: Vec<f64> = (0..d.n)
                .flat_map(|n| (0..d.plane()).map(move |p| (n, p)))
                .map(|(n, p)| x[(n * d.c + c) * d.plane() + p] as f64)
                .collect();
            let m = vals.iter().sum::<f64>() / vals.len() as f64;
            let v = vals.iter().map(|a| (a - m).powi(2)).sum::<f64>() / vals.len() as f64;
            assert!((mean[c] as f64 - m).abs() < 1e-6 && (var[c] as f64 - v).abs() < 1e-5);
            let i = c * d.plane();
            let want = (x[i] as f64 - m) / (v + eps).sqrt() * gamma[c] as f64 + beta[c] as f64;
            assert!((y[i] as f64 - want).abs() < 1e-5);
        }
        let r = rnd(d.len(), 8);
        let (dx, dg, db) = batch_norm_backward(&x, d, &gamma, &mean, &var, eps, &r);
        let loss = |x: &[f32], g: &[f32], b: &[f32]| -> f64 {
            let (y, _, _) = batch_norm_forward(x, d, g, b, eps);
            y.iter()
                .zip(&r)
                .map(|(a, b)| (*a as f64) * (*b as f64))
                .sum()
        };
        let h = 1e-2f32;
        for i in [0, 5, d.len() - 1] {
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp[i] += h;
            xm[i] -= h;
            let fd = (loss(&xp, &gamma, &beta) - loss(&xm, &gamma, &beta)) / (2.0 * h as f64);
            assert!(
                (fd as f32 - dx[i]).abs() < 2e-3,
                "dx[{i}]: {fd} vs {}",
                dx[i]
            );
        }
        for c in 0..d.c {
            let (mut gp, mut gm) = (gamma.clone(), gamma.clone());
            gp[c] += h;
            gm[c] -= h;
            let fd = (loss(&x, &gp, &beta) - loss(&x, &gm, &beta)) / (2.0 * h as f64);
            assert!((fd as f32 - dg[c]).abs() < 2e-3, "dgamma[{c}]");
            let s: f32 = (0..d.n)
                .flat_map(|n| (0..d.plane()).map(move |p| (n * d.c + c) * d.plane() + p))
                .map(|i| r[i])
                .sum();
            assert!((s - db[c]).abs() < 1e-4, "dbeta[{c}]");
        }
    }

    #[test]
    fn activations_and_their_derivatives() {
        let x = vec![-4.0, -3.5, -1.0, 0.5, 2.9, 3.5, 7.0];
        let g = vec![1.0; x.len()];
        for act in [Activation::Relu, Activation::Relu6, Activation::HSwish] {
            let y = activation_forward(&x, act);
            let dx = activation_backward(&x, &g, act);
            for i in 0..x.len() {
                let h = 1e-3;
                let f = |v: f32| activation_forward(&[v], act)[0];
                let fd = (f(x[i] + h) - f(x[i] - h)) / (2.0 * h);
                assert!(
                    (fd - dx[i]).abs() < 1e-2,
                    "{act:?} at {}: {fd} vs {}",
                    x[i],
                    dx[i]
                );
                assert_eq!(y[i], f(x[i]));
            }
        }
    }

    /// Random shapes for the property tests: channels 1–40 (across the
    /// 16-lane blocks), h ≠ w, batch 1 and 3.
    fn shapes(seed: u64, cases: usize) -> Vec<Nchw> {
        use rand::{RngExt, SeedableRng};
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..cases)
            .map(|i| Nchw {
                n: if i % 2 == 0 { 1 } else { 3 },
                c: r.random_range(1..=40),
                h: r.random_range(1..=13),
                w: r.random_range(1..=13),
            })
            .collect()
    }

    /// Naive gradients of the depthwise convolution: every output pixel's
    /// gradient spread back over its taps.
    fn naive_dw_backward(
        x: &[f32],
        d: Nchw,
        w: &[f32],
        k: usize,
        s: usize,
        dy: &[f32],
    ) -> (Vec<f32>, Vec<f32>) {
        let p = k as isize / 2;
        let oh = (d.h + 2 * (k / 2) - k) / s + 1;
        let ow = (d.w + 2 * (k / 2) - k) / s + 1;
        let (mut dx, mut dw) = (vec![0f64; x.len()], vec![0f64; w.len()]);
        for n in 0..d.n {
            for c in 0..d.c {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let g = dy[((n * d.c + c) * oh + oy) * ow + ox] as f64;
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * s + ky) as isize - p;
                                let ix = (ox * s + kx) as isize - p;
                                if iy < 0 || ix < 0 || iy as usize >= d.h || ix as usize >= d.w {
                                    continue;
                                }
                                let xi = ((n * d.c + c) * d.h + iy as usize) * d.w + ix as usize;
                                let wi = (c * k + ky) * k + kx;
                                dx[xi] += g * w[wi] as f64;
                                dw[wi] += g * x[xi] as f64;
                            }
                        }
                    }
                }
            }
        }
        let f = |v: Vec<f64>| v.into_iter().map(|a| a as f32).collect();
        (f(dx), f(dw))
    }

    #[test]
    fn depthwise_property_random_shapes() {
        // Plus rows of whole 8-pixel transpose tiles (the per-row gather).
        let mut cases = shapes(41, 36);
        cases.extend(
            [
                (3, 20, 9, 16),
                (1, 17, 5, 24),
                (3, 9, 8, 8),
                (1, 33, 16, 32),
            ]
            .map(|(n, c, h, w)| Nchw { n, c, h, w }),
        );
        for (i, d) in cases.into_iter().enumerate() {
            let k = [3, 5, 7][i % 3];
            let s = 1 + (i / 3) % 2;
            let x = rnd(d.len(), 100 + i as u32);
            let w = rnd(d.c * k * k, 200 + i as u32);
            let (y, od) = depthwise_forward(&x, d, &w, k, s);
            close(&y, &naive_dw(&x, d, &w, k, s), 1e-5);
            let dy = rnd(od.len(), 300 + i as u32);
            let (dx, dw) = depthwise_backward(&x, d, &w, k, s, &dy, od);
            let (ndx, ndw) = naive_dw_backward(&x, d, &w, k, s, &dy);
            close(&dx, &ndx, 1e-4);
            close(&dw, &ndw, 1e-4);
        }
    }

    #[test]
    fn depthwise_small_maps_every_kernel() {
        // Maps smaller than the kernel (most taps read padding, which the
        // kernels skip) under every k and stride, h ≠ w, channel counts
        // on both sides of a block.
        let maps = [
            (1, 1),
            (2, 2),
            (1, 3),
            (3, 2),
            (4, 4),
            (2, 5),
            (7, 7),
            (5, 6),
        ];
        let mut i = 0u32;
        for (mi, &(h, w)) in maps.iter().enumerate() {
            for k in [3, 5, 7] {
                for s in [1, 2] {
                    i += 1;
                    let d = Nchw {
                        n: 1 + 2 * (mi % 2),
                        c: [5, 16, 24, 33][mi % 4],
                        h,
                        w,
                    };
                    let x = rnd(d.len(), 700 + i);
                    let wt = rnd(d.c * k * k, 800 + i);
                    let (y, od) = depthwise_forward(&x, d, &wt, k, s);
                    close(&y, &naive_dw(&x, d, &wt, k, s), 1e-5);
                    let dy = rnd(od.len(), 900 + i);
                    let (dx, dw) = depthwise_backward(&x, d, &wt, k, s, &dy, od);
                    let (ndx, ndw) = naive_dw_backward(&x, d, &wt, k, s, &dy);
                    close(&dx, &ndx, 1e-4);
                    close(&dw, &ndw, 1e-4);
                }
            }
        }
    }

    #[test]
    fn pointwise_property_random_shapes() {
        for (i, d) in shapes(42, 24).into_iter().enumerate() {
            let cout = 1 + (i * 7) % 40;
            let x = rnd(d.len(), 400 + i as u32);
            let w = rnd(cout * d.c, 500 + i as u32);
            let hw = d.plane();
            let y = pointwise_forward(&x, d, &w, cout);
            let g = rnd(y.len(), 600 + i as u32);
            let (dx, dw) = pointwise_backward(&x, d, &w, cout, &g);
            let (mut ny, mut ndx, mut ndw) = (
                vec![0f64; y.len()],
                vec![0f64; d.len()],
                vec![0f64; cout * d.c],
            );
            for n in 0..d.n {
                for o in 0..cout {
                    for c in 0..d.c {
                        for p in 0..hw {
                            let (xi, yi) = ((n * d.c + c) * hw + p, (n * cout + o) * hw + p);
                            let wv = w[o * d.c + c] as f64;
                            ny[yi] += wv * x[xi] as f64;
                            ndx[xi] += wv * g[yi] as f64;
                            ndw[o * d.c + c] += x[xi] as f64 * g[yi] as f64;
                        }
                    }
                }
            }
            let f = |v: Vec<f64>| -> Vec<f32> { v.into_iter().map(|a| a as f32).collect() };
            close(&y, &f(ny), 1e-4);
            close(&dx, &f(ndx), 1e-4);
            close(&dw, &f(ndw), 1e-4);
        }
    }

    /// Naive dense convolution (padding k/2) and both gradients of
    /// `Σ y·dy`, in f64, straight from the definition.
    #[allow(clippy::type_complexity)]
    fn naive_conv(
        x: &[f32],
        d: Nchw,
        w: &[f32],
        cout: usize,
        k: usize,
        s: usize,
        dy: &[f32],
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let p = k as isize / 2;
        let oh = (d.h + 2 * (k / 2) - k) / s + 1;
        let ow = (d.w + 2 * (k / 2) - k) / s + 1;
        let mut y = vec![0f64; d.n * cout * oh * ow];
        let (mut dx, mut dw) = (vec![0f64; x.len()], vec![0f64; w.len()]);
        for n in 0..d.n {
            for o in 0..cout {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let yi = ((n * cout + o) * oh + oy) * ow + ox;
                        for c in 0..d.c {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let iy = (oy * s + ky) as isize - p;
                                    let ix = (ox * s + kx) as isize - p;
                                    if iy < 0 || ix < 0 || iy as usize >= d.h || ix as usize >= d.w
                                    {
                                        continue;
                                    }
                                    let xi =
                                        ((n * d.c + c) * d.h + iy as usize) * d.w + ix as usize;
                                    let wi = ((o * d.c + c) * k + ky) * k + kx;
                                    y[yi] += w[wi] as f64 * x[xi] as f64;
                                    dx[xi] += w[wi] as f64 * dy[yi] as f64;
                                    dw[wi] += x[xi] as f64 * dy[yi] as f64;
                                }
                            }
                        }
                    }
                }
            }
        }
        let f = |v: Vec<f64>| v.into_iter().map(|a| a as f32).collect();
        (f(y), f(dx), f(dw))
    }

    #[test]
    fn dense_conv_property_random_shapes() {
        let mut cases: Vec<(Nchw, usize, usize, usize)> = shapes(43, 30)
            .into_iter()
            .enumerate()
            .map(|(i, d)| (d, 1 + (i * 11) % 40, [3, 5, 7][i % 3], 1 + (i / 3) % 2))
            .collect();
        // The stem's shape, and planes of more than one patch tile
        // (PATCH_COLS output pixels), stride 1 and 2.
        cases.push((
            Nchw {
                n: 3,
                c: 3,
                h: 24,
                w: 19,
            },
            16,
            3,
            2,
        ));
        cases.push((
            Nchw {
                n: 1,
                c: 2,
                h: 70,
                w: 50,
            },
            5,
            3,
            1,
        ));
        cases.push((
            Nchw {
                n: 3,
                c: 1,
                h: 131,
                w: 77,
            },
            3,
            5,
            2,
        ));
        for (i, (d, cout, k, s)) in cases.into_iter().enumerate() {
            let x = rnd(d.len(), 700 + i as u32);
            let w = rnd(cout * d.c * k * k, 800 + i as u32);
            let (y, od) = conv_forward(&x, d, &w, cout, k, s);
            let dy = rnd(od.len(), 900 + i as u32);
            let (ny, ndx, ndw) = naive_conv(&x, d, &w, cout, k, s, &dy);
            close(&y, &ny, 1e-4);
            let (dx, dw) = conv_backward(&x, d, &w, k, s, &dy, od, true);
            close(&dx.expect("dx was asked for"), &ndx, 1e-4);
            close(&dw, &ndw, 1e-4);
            let (none, dw2) = conv_backward(&x, d, &w, k, s, &dy, od, false);
            assert!(none.is_none());
            assert_eq!(dw, dw2, "dw does not depend on need_dx");
        }
    }

    #[test]
    fn transpose_matches_index_definition() {
        // Sizes around the 8×8 tile: full tiles, edges, a single row.
        for (rows, cols, ss, ds) in [
            (8, 8, 8, 8),
            (16, 112, 130, 16),
            (13, 7, 9, 20),
            (1, 17, 17, 3),
            (24, 9, 9, 31),
        ] {
            let src = rnd((rows - 1) * ss + cols, (rows * cols) as u32);
            let mut dst = vec![MaybeUninit::new(f32::NAN); (cols - 1) * ds + rows];
            transpose(&src, ss, rows, cols, &mut dst, ds);
            for l in 0..rows {
                for i in 0..cols {
                    // SAFETY: initialised above.
                    let v = unsafe { dst[i * ds + l].assume_init() };
                    assert_eq!(v, src[l * ss + i], "rows {rows} cols {cols}: ({l}, {i})");
                }
            }
        }
    }

    /// The textbook activations, written out independently of the kernels.
    fn naive_act(v: f32, act: Option<Activation>) -> f32 {
        match act {
            None => v,
            Some(Activation::Relu) => {
                if v > 0.0 {
                    v
                } else {
                    0.0
                }
            }
            Some(Activation::Relu6) => v.max(0.0).min(6.0),
            Some(Activation::HSwish) => v * (v + 3.0).max(0.0).min(6.0) / 6.0,
        }
    }

    const ACTS: [Option<Activation>; 4] = [
        None,
        Some(Activation::Relu),
        Some(Activation::Relu6),
        Some(Activation::HSwish),
    ];

    /// The fused inference kernels (convolution, then per-channel affine,
    /// then activation) against the naive convolution followed by the
    /// affine and activation by hand, on random shapes crossing the lane
    /// width (channels 1–40), with every activation and thread split.
    #[test]
    fn fused_epilogue_kernels_match_naive() {
        for (i, d) in shapes(44, 36).into_iter().enumerate() {
            let act = ACTS[i % 4];
            let scale = rnd(d.c.max(40), 700 + i as u32);
            let shift: Vec<f32> = rnd(d.c.max(40), 800 + i as u32)
                .iter()
                .map(|v| 3.0 * v)
                .collect();
            let e = Epilogue {
                scale: &scale,
                shift: &shift,
                act,
            };
            // Depthwise.
            let k = [3, 5, 7][i % 3];
            let st = 1 + (i / 3) % 2;
            let x = rnd(d.len(), 900 + i as u32);
            let w = rnd(d.c * k * k, 1000 + i as u32);
            let (y, od) = depthwise_forward_with(&x, d, &w, k, st, Some(e));
            let plane = od.plane();
            let want: Vec<f32> = naive_dw(&x, d, &w, k, st)
                .iter()
                .enumerate()
                .map(|(j, &v)| {
                    let c = (j / plane) % d.c;
                    naive_act(v * scale[c] + shift[c], act)
                })
                .collect();
            close(&y, &want, 1e-5);
            // Pointwise, with output channels 1–40.
            let cout = 1 + (i * 11) % 40;
            let w = rnd(cout * d.c, 1100 + i as u32);
            let hw = d.plane();
            let y = pointwise_forward_with(&x, d, &w, cout, e);
            let mut want = vec![0f32; d.n * cout * hw];
            for n in 0..d.n {
                for o in 0..cout {
                    for p in 0..hw {
                        let mut acc = 0f64;
                        for c in 0..d.c {
                            acc += w[o * d.c + c] as f64 * x[(n * d.c + c) * hw + p] as f64;
                        }
                        want[(n * cout + o) * hw + p] =
                            naive_act(acc as f32 * scale[o] + shift[o], act);
                    }
                }
            }
            close(&y, &want, 1e-4);
        }
    }

    /// One-pass statistics against the two-pass definition in f64, where
    /// the naive one-pass formula would fail, and split across processes.
    #[test]
    fn batch_norm_statistics_of_a_large_mean_and_of_a_split_batch() {
        // A large mean and a small spread: E[x²] − μ² in f32 would lose
        // the variance (1e6 against 1e-4).
        let d = Nchw {
            n: 3,
            c: 2,
            h: 9,
            w: 7,
        };
        let x: Vec<f32> = rnd(d.len(), 31).iter().map(|v| 1000.0 + 0.01 * v).collect();
        let (_, mean, var) = batch_norm_forward(&x, d, &[1.0; 2], &[0.0; 2], 1e-5);
        for c in 0..d.c {
            let vals: Vec<f64> = (0..d.n)
                .flat_map(|n| {
                    x[(n * d.c + c) * d.plane()..][..d.plane()]
                        .iter()
                        .map(|&v| v as f64)
                })
                .collect();
            let m = vals.iter().sum::<f64>() / vals.len() as f64;
            let v = vals.iter().map(|a| (a - m).powi(2)).sum::<f64>() / vals.len() as f64;
            assert!((mean[c] as f64 - m).abs() < 1e-3);
            assert!(
                (var[c] as f64 - v).abs() < 1e-3 * v,
                "var {} vs {v}",
                var[c]
            );
        }
        // Two "processes" (threads) with one sample and two samples, their
        // sums exchanged through `reduce`: the statistics of the whole batch.
        let x: Vec<f32> = rnd(d.len(), 32).iter().map(|v| 3.0 * v + 2.0).collect();
        let (_, mean, var) = batch_norm_forward(&x, d, &[1.0; 2], &[0.0; 2], 1e-5);
        let row = d.c * d.plane();
        let halves = [(&x[..row], 1), (&x[row..], 2)];
        let bufs = std::sync::Mutex::new(vec![Vec::<f64>::new(); 2]);
        let barrier = std::sync::Barrier::new(2);
        let results: Vec<(Vec<f32>, Vec<f32>)> = std::thread::scope(|sc| {
            let handles: Vec<_> = halves
                .iter()
                .enumerate()
                .map(|(rank, &(part, n))| {
                    let (bufs, barrier) = (&bufs, &barrier);
                    sc.spawn(move || {
                        let reduce = |buf: &mut [f64]| {
                            bufs.lock().unwrap()[rank] = buf.to_vec();
                            barrier.wait();
                            let all = bufs.lock().unwrap().clone();
                            for (i, v) in buf.iter_mut().enumerate() {
                                *v = all[0][i] + all[1][i];
                            }
                            barrier.wait();
                        };
                        let (_, m, v) = batch_norm_forward_reduced(
                            part,
                            Nchw { n, ..d },
                            &[1.0; 2],
                            &[0.0; 2],
                            1e-5,
                            &reduce,
                        );
                        (m, v)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (m, v) in results {
            close(&m, &mean, 1e-5);
            close(&v, &var, 1e-5);
        }
    }

    /// Forward and backward of training-mode BN against the closed forms
    /// in f64, on random shapes, and on one sample row too large for the
    /// row-accumulation path.
    #[test]
    fn batch_norm_property_random_shapes() {
        let mut cases = shapes(43, 24);
        cases.push(Nchw {
            n: 3,
            c: 40,
            h: 41,
            w: 43,
        });
        for (i, d) in cases.into_iter().enumerate() {
            let x: Vec<f32> = rnd(d.len(), 700 + i as u32)
                .iter()
                .map(|v| 3.0 * v + 1.0)
                .collect();
            let dy = rnd(d.len(), 800 + i as u32);
            let gamma: Vec<f32> = (0..d.c).map(|c| 0.5 + c as f32 * 0.05).collect();
            let beta: Vec<f32> = (0..d.c).map(|c| 0.1 * c as f32 - 1.0).collect();
            let eps = 1e-5;
            let (y, mean, var) = batch_norm_forward(&x, d, &gamma, &beta, eps);
            let (dx, dg, db) = batch_norm_backward(&x, d, &gamma, &mean, &var, eps, &dy);
            let m = (d.n * d.plane()) as f64;
            for c in 0..d.c {
                let idx: Vec<usize> = (0..d.n)
                    .flat_map(|n| (0..d.plane()).map(move |p| (n * d.c + c) * d.plane() + p))
                    .collect();
                let mu = idx.iter().map(|&j| x[j] as f64).sum::<f64>() / m;
                let v = idx.iter().map(|&j| (x[j] as f64 - mu).powi(2)).sum::<f64>() / m;
                assert!(
                    (mean[c] as f64 - mu).abs() < 1e-5 * (1.0 + mu.abs()),
                    "mean {d:?}"
                );
                assert!((var[c] as f64 - v).abs() < 1e-4 * (1.0 + v), "var {d:?}");
                let sd = (v + eps).sqrt();
                let xh = |j: usize| (x[j] as f64 - mu) / sd;
                let sg: f64 = idx.iter().map(|&j| dy[j] as f64).sum();
                let sgx: f64 = idx.iter().map(|&j| dy[j] as f64 * xh(j)).sum();
                assert!(
                    (db[c] as f64 - sg).abs() < 1e-3 * (1.0 + sg.abs()),
                    "dbeta {d:?}"
                );
                assert!(
                    (dg[c] as f64 - sgx).abs() < 1e-3 * (1.0 + sgx.abs()),
                    "dgamma {d:?}"
                );
                for &j in idx.iter().step_by(7) {
                    let want_y = xh(j) * gamma[c] as f64 + beta[c] as f64;
                    assert!((y[j] as f64 - want_y).abs() < 1e-4 * (1.0 + want_y.abs()));
                    let want = gamma[c] as f64 / sd * (dy[j] as f64 - sg / m - xh(j) * sgx / m);
                    assert!(
                        (dx[j] as f64 - want).abs() < 1e-3 * (1.0 + want.abs()),
                        "dx {d:?}: {} vs {want}",
                        dx[j]
                    );
                }
            }
        }
    }
}
