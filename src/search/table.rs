//! The accuracy table (DESIGN §6): sampled subnets × resolutions, each
//! evaluated after BN recalibration on the held-out validation split.
//!
//! Stored in SQLite: every row is committed on its own, so a killed builder
//! loses nothing it reported, and a restarted one skips what is done.
//! `--shard i/N` splits the work across machines; [`merge`] joins the parts.

use crate::dist::{Collective, Local};
use crate::nn::{OfaBackend, Supernet};
use crate::space::{Arch, Space};
use crate::train::{EvalConfig, EvalData, EvalResult, evaluate_with_hits, paired_stderr};
use anyhow::Context;
use rand::SeedableRng;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// What a table was built from; shards and resumed builds must agree on it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TableMeta {
    pub space: Space,
    /// SHA-256 of the supernet file.
    pub supernet_digest: String,
    pub supernet: String,
    pub data: String,
    /// Hold-out (size, seed) the validation images come from.
    pub val_size: usize,
    pub split_seed: u64,
    pub eval: EvalConfig,
    /// Architectures are draws number 0..subnets of this seed.
    pub arch_seed: u64,
    /// How they are drawn (tables written before the option: uniform).
    #[serde(default)]
    pub sampling: Sampling,
    pub subnets: usize,
    pub resolutions: Vec<usize>,
}

impl TableMeta {
    /// What a table of `supernet` is built from: its file digest, and the
    /// validation hold-out of its training run.
    pub fn for_supernet(
        supernet: &Path,
        space: &Space,
        data: &str,
        eval: EvalConfig,
        arch_seed: u64,
        sampling: Sampling,
        subnets: usize,
        resolutions: Vec<usize>,
    ) -> anyhow::Result<TableMeta> {
        let cfg = crate::train::run_config_or_default(supernet, space, data);
        Ok(TableMeta {
            space: space.clone(),
            supernet_digest: file_digest(supernet)?,
            supernet: supernet.display().to_string(),
            data: data.to_string(),
            val_size: cfg.val_size,
            split_seed: cfg.seed,
            eval,
            arch_seed,
            sampling,
            subnets,
            resolutions,
        })
    }
}

/// How a table draws its architectures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sampling {
    /// Every choice uniform, as the reference's `random_sample`: subnets
    /// cluster around the middle of the cost range.
    #[default]
    Uniform,
    /// A size drawn uniformly per architecture, then every choice leaning
    /// to it ([`Arch::sample_sized`]): subnets cover the cost range from
    /// the smallest to the largest, which is what the search compares.
    Spread,
    /// Every uniform subnet (one k, e and d everywhere) first, then
    /// alternately uniform and spread draws: the simple subnets the search
    /// is compared with (their rows are the baselines' measurements), the
    /// whole cost range, and the mixed architectures (large choices in some
    /// blocks, small in others) the search explores.
    Mixed,
}

impl std::str::FromStr for Sampling {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "uniform" => Ok(Sampling::Uniform),
            "spread" => Ok(Sampling::Spread),
            "mixed" => Ok(Sampling::Mixed),
            o => Err(format!("unknown sampling '{o}' (uniform, spread, mixed)")),
        }
    }
}

/// One evaluated (subnet, resolution).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TableRow {
    /// Which draw of the architecture sampler.
    pub index: usize,
    /// The architecture, `r` = the evaluated resolution.
    pub arch: Arch,
    pub result: EvalResult,
    pub mflops: f64,
    pub params: u64,
    pub seconds: f64,
    /// Top-1 correctness of every validation image, in the table's image
    /// order (empty for rows of tables built before it was recorded).
    pub hits: Vec<bool>,
}

/// Bits packed 8 to a byte, lowest bit first.
fn pack(bits: &[bool]) -> Vec<u8> {
    bits.chunks(8)
        .map(|c| {
            c.iter()
                .enumerate()
                .fold(0u8, |b, (i, &x)| b | ((x as u8) << i))
        })
        .collect()
}

fn unpack(bytes: &[u8], n: usize) -> Vec<bool> {
    (0..n.min(bytes.len() * 8))
        .map(|i| bytes[i / 8] >> (i % 8) & 1 == 1)
        .collect()
}

/// How precise a table's rows are compared with how much they differ.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TableStats {
    pub rows: usize,
    pub top1_mean: f64,
    pub top1_min: f64,
    pub top1_max: f64,
    /// Standard deviation of the rows' top-1 (the spread a predictor has to
    /// rank).
    pub top1_sd: f64,
    /// Mean standard error of a row's top-1 (binomial).
    pub row_stderr: f64,
    /// Median standard error of the difference between two rows, paired
    /// on the same images (over up to 2 000 row pairs); NaN without
    /// recorded hits.
    pub paired_stderr: f64,
    /// `row_stderr / top1_sd`: below 1/3 means the rows rank subnets.
    pub noise_ratio: f64,
}

/// Summary statistics of a table's rows.
pub fn stats(rows: &[TableRow]) -> TableStats {
    let n = rows.len().max(1) as f64;
    let top1: Vec<f64> = rows.iter().map(|r| r.result.top1).collect();
    let mean = top1.iter().sum::<f64>() / n;
    let sd = (top1.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
    let row_stderr = rows.iter().map(|r| r.result.stderr()).sum::<f64>() / n;
    let with_hits: Vec<&TableRow> = rows.iter().filter(|r| !r.hits.is_empty()).collect();
    let mut paired: Vec<f64> = Vec::new();
    // Pairs (i, i + k) for growing k: spread over the table, bounded cost.
    'outer: for k in 1..with_hits.len() {
        for i in 0..with_hits.len() - k {
            paired.push(paired_stderr(&with_hits[i].hits, &with_hits[i + k].hits));
            if paired.len() >= 2000 {
                break 'outer;
            }
        }
    }
    paired.sort_by(f64::total_cmp);
    TableStats {
        rows: rows.len(),
        top1_mean: mean,
        top1_min: top1.iter().cloned().fold(f64::INFINITY, f64::min),
        top1_max: top1.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
        top1_sd: sd,
        row_stderr,
        paired_stderr: paired.get(paired.len() / 2).copied().unwrap_or(f64::NAN),
        noise_ratio: row_stderr / sd.max(1e-12),
    }
}

/// An open accuracy table.
pub struct Table {
    conn: Connection,
    pub meta: TableMeta,
}

/// The architectures of a table, in draw order (resolution left at the
/// draw's; rows override it).
pub fn table_archs(meta: &TableMeta) -> Vec<Arch> {
    use rand::RngExt;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(meta.arch_seed);
    let grid: Vec<Arch> = match meta.sampling {
        Sampling::Mixed => uniform_grid(&meta.space),
        _ => vec![],
    };
    let mut out: Vec<Arch> = grid.into_iter().take(meta.subnets).collect();
    for i in 0..meta.subnets - out.len() {
        out.push(match (meta.sampling, i % 2) {
            (Sampling::Uniform, _) | (Sampling::Mixed, 0) => Arch::sample(&meta.space, &mut rng),
            (Sampling::Spread, _) | (Sampling::Mixed, _) => {
                let size = rng.random::<f64>();
                Arch::sample_sized(&meta.space, size, &mut rng)
            }
        });
    }
    out
}

/// The uniform subnets of a space at its smallest resolution (rows set the
/// resolution): every (k, e, d) with one k and e in all blocks and one d in
/// all elastic stages.
pub fn uniform_grid(space: &Space) -> Vec<Arch> {
    let r = space.resolutions[0];
    let mut v: Vec<Arch> = crate::search::measure::uniform_subnets(space)
        .into_iter()
        .filter(|(_, a)| a.r == r)
        .map(|(_, a)| a)
        .collect();
    v.dedup();
    v
}

/// SHA-256 of a file, hex.
pub fn file_digest(path: &Path) -> anyhow::Result<String> {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    Ok(format!("{:x}", Sha256::digest(&bytes)))
}

fn schema(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
         CREATE TABLE IF NOT EXISTS rows (
             arch_index INTEGER NOT NULL,
             resolution INTEGER NOT NULL,
             arch TEXT NOT NULL,
             top1 REAL NOT NULL, top5 REAL NOT NULL, loss REAL NOT NULL, images INTEGER NOT NULL,
             mflops REAL NOT NULL, params INTEGER NOT NULL, seconds REAL NOT NULL,
             hits BLOB,
             PRIMARY KEY (arch_index, resolution));",
    )?;
    // Tables written before per-image hits were recorded lack the column.
    let has_hits: bool = conn
        .prepare("SELECT 1 FROM pragma_table_info('rows') WHERE name = 'hits'")?
        .exists([])?;
    if !has_hits {
        conn.execute_batch("ALTER TABLE rows ADD COLUMN hits BLOB")?;
    }
    Ok(())
}

impl Table {
    /// Creates a table, or opens an existing one after checking that it was
    /// built from the same supernet, data and sampling.
    pub fn create_or_open(path: &Path, meta: TableMeta) -> anyhow::Result<Table> {
        let existed = path.exists();
        let conn =
            Connection::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
        schema(&conn).with_context(|| format!("{}: not an accuracy table", path.display()))?;
        let stored: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = 'meta'", [], |r| {
                r.get(0)
            })
            .optional()?;
        match stored {
            Some(s) => {
                let old: TableMeta = serde_json::from_str(&s)
                    .with_context(|| format!("{}: corrupt metadata", path.display()))?;
                check_compatible(&old, &meta)
                    .with_context(|| format!("{}: cannot resume", path.display()))?;
                let mut kept = old;
                if meta.subnets > kept.subnets {
                    // Extending: later draws of the same sampler join the table.
                    kept.subnets = meta.subnets;
                    conn.execute(
                        "UPDATE meta SET value = ?1 WHERE key = 'meta'",
                        params![serde_json::to_string(&kept)?],
                    )?;
                }
                Ok(Table { conn, meta: kept })
            }
            None => {
                if existed && Self::count_rows(&conn)? > 0 {
                    anyhow::bail!("{}: has rows but no metadata", path.display());
                }
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('meta', ?1)",
                    params![serde_json::to_string(&meta)?],
                )?;
                Ok(Table { conn, meta })
            }
        }
    }

    /// Opens an existing table.
    pub fn open(path: &Path) -> anyhow::Result<Table> {
        if !path.exists() {
            anyhow::bail!("{}: no such accuracy table", path.display());
        }
        let conn =
            Connection::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
        let s: String = conn
            .query_row("SELECT value FROM meta WHERE key = 'meta'", [], |r| {
                r.get(0)
            })
            .with_context(|| format!("{}: not an accuracy table", path.display()))?;
        let meta = serde_json::from_str(&s)
            .with_context(|| format!("{}: corrupt metadata", path.display()))?;
        Ok(Table { conn, meta })
    }

    fn count_rows(conn: &Connection) -> rusqlite::Result<usize> {
        conn.query_row("SELECT COUNT(*) FROM rows", [], |r| r.get::<_, i64>(0))
            .map(|n| n as usize)
    }

    pub fn len(&self) -> anyhow::Result<usize> {
        Ok(Self::count_rows(&self.conn)?)
    }

    pub fn is_empty(&self) -> anyhow::Result<bool> {
        Ok(self.len()? == 0)
    }

    pub fn has(&self, index: usize, resolution: usize) -> anyhow::Result<bool> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM rows WHERE arch_index = ?1 AND resolution = ?2",
                params![index as i64, resolution as i64],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Adds a row in its own transaction; a row already present is an error.
    pub fn insert(&self, row: &TableRow) -> anyhow::Result<()> {
        self.conn.execute(
            "INSERT INTO rows (arch_index, resolution, arch, top1, top5, loss, images, mflops,
                               params, seconds, hits)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                row.index as i64,
                row.arch.r as i64,
                serde_json::to_string(&row.arch.to_reference_json())?,
                row.result.top1,
                row.result.top5,
                row.result.loss,
                row.result.images as i64,
                row.mflops,
                row.params as i64,
                row.seconds,
                (!row.hits.is_empty()).then(|| pack(&row.hits)),
            ],
        )?;
        Ok(())
    }

    /// Every row, ordered by (index, resolution).
    pub fn rows(&self) -> anyhow::Result<Vec<TableRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT arch_index, resolution, arch, top1, top5, loss, images, mflops, params, seconds,
                    hits
             FROM rows ORDER BY arch_index, resolution",
        )?;
        let raw = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                (
                    r.get::<_, f64>(3)?,
                    r.get::<_, f64>(4)?,
                    r.get::<_, f64>(5)?,
                    r.get::<_, i64>(6)?,
                ),
                (
                    r.get::<_, f64>(7)?,
                    r.get::<_, i64>(8)?,
                    r.get::<_, f64>(9)?,
                ),
                r.get::<_, Option<Vec<u8>>>(10)?,
            ))
        })?;
        let mut out = Vec::new();
        for item in raw {
            let (index, res, arch, (top1, top5, loss, images), (mflops, params, seconds), hits) =
                item?;
            let v: serde_json::Value = serde_json::from_str(&arch)?;
            let arch = Arch::from_json(&v, &self.meta.space)?.with_resolution(res as usize);
            out.push(TableRow {
                index: index as usize,
                arch,
                result: EvalResult {
                    top1,
                    top5,
                    loss,
                    images: images as usize,
                },
                mflops,
                params: params as u64,
                seconds,
                hits: hits
                    .map(|b| unpack(&b, images as usize))
                    .unwrap_or_default(),
            });
        }
        Ok(out)
    }

    /// Writes the rows as CSV (one line per subnet and resolution).
    pub fn export_csv(&self, path: &Path) -> anyhow::Result<()> {
        let mut s = String::from(
            "index,resolution,top1,stderr,top5,loss,images,mflops,params,seconds,arch\n",
        );
        for r in self.rows()? {
            s.push_str(&format!(
                "{},{},{:.6},{:.6},{:.6},{:.6},{},{:.4},{},{:.3},\"{}\"\n",
                r.index,
                r.arch.r,
                r.result.top1,
                r.result.stderr(),
                r.result.top5,
                r.result.loss,
                r.result.images,
                r.mflops,
                r.params,
                r.seconds,
                r.arch.to_reference_json().to_string().replace('"', "\"\"")
            ));
        }
        crate::util::write_text_atomic(path, &s)
    }
}

fn check_compatible(old: &TableMeta, new: &TableMeta) -> anyhow::Result<()> {
    let differs = |what: &str| Err(anyhow::anyhow!("it was built with a different {what}"));
    if old.space != new.space {
        return differs("search space");
    }
    if old.supernet_digest != new.supernet_digest {
        return differs("supernet (file contents differ)");
    }
    if old.val_size != new.val_size || old.split_seed != new.split_seed || old.data != new.data {
        return differs("dataset or validation hold-out");
    }
    if old.eval != new.eval {
        return differs("evaluation setting (calibration images, batch sizes, image cap)");
    }
    if old.arch_seed != new.arch_seed
        || old.resolutions != new.resolutions
        || old.sampling != new.sampling
    {
        return differs("architecture seed, sampling or resolution list");
    }
    // A larger --subnets extends the same draw sequence; a smaller one is fine.
    Ok(())
}

/// Which architecture draws a shard `i/N` evaluates.
pub fn shard_indices(subnets: usize, shard: (usize, usize)) -> Vec<usize> {
    (0..subnets).filter(|i| i % shard.1 == shard.0).collect()
}

/// Fills the table: every (architecture, resolution) of the shard that is
/// not already there. `progress(done, total, last)` after every row; when
/// `stop()` turns true, returns after the current row (the rest can be
/// resumed).
pub fn build<B: OfaBackend>(
    net: &Supernet<B>,
    table: &mut Table,
    data: &EvalData,
    shard: (usize, usize),
    device: &B::Device,
    progress: &mut dyn FnMut(usize, usize, Option<&TableRow>),
    stop: &dyn Fn() -> bool,
) -> anyhow::Result<usize> {
    build_shared(
        net,
        Some(table),
        data,
        shard,
        device,
        &Local,
        progress,
        stop,
    )
}

/// [`build`] with the rows spread over the processes of `comm` (`mpirun
/// -np N ofa table`): rank 0 holds the table (`Some`, the others `None`)
/// and says which rows are missing; in each round every rank evaluates one
/// of them, and rank 0 writes the round's rows, so the file stays
/// kill-safe and resumable as with one process. Returns the rows added.
#[allow(clippy::too_many_arguments)]
pub fn build_shared<B: OfaBackend>(
    net: &Supernet<B>,
    mut table: Option<&mut Table>,
    data: &EvalData,
    shard: (usize, usize),
    device: &B::Device,
    comm: &dyn Collective,
    progress: &mut dyn FnMut(usize, usize, Option<&TableRow>),
    stop: &dyn Fn() -> bool,
) -> anyhow::Result<usize> {
    // Rank 0's metadata and missing rows, on every rank.
    let mut plan = Vec::new();
    let mut already = 0;
    if let Some(t) = table.as_deref() {
        let archs = table_archs(&t.meta);
        let mut missing = Vec::new();
        for i in shard_indices(archs.len(), shard) {
            for &r in &t.meta.resolutions {
                if t.has(i, r)? {
                    already += 1;
                } else {
                    missing.push((i, r));
                }
            }
        }
        plan = serde_json::to_vec(&(&t.meta, missing, already))?;
    } else if comm.size() == 1 {
        anyhow::bail!("a single process needs the table to fill");
    }
    comm.broadcast_bytes(&mut plan, 0);
    let (meta, missing, already): (TableMeta, Vec<(usize, usize)>, usize) =
        serde_json::from_slice(&plan).context("rank 0's table plan")?;
    let archs = table_archs(&meta);
    let total = already + missing.len();
    let (mut done, mut added) = (already, 0);
    progress(done, total, None);
    let ranks = comm.size();
    for round in missing.chunks(ranks) {
        if comm.any(stop()) {
            break;
        }
        // This rank's row of the round, if the round has one for it.
        let mine = match round.get(comm.rank()) {
            Some(&(i, r)) => {
                let arch = archs[i].clone().with_resolution(r);
                let t = std::time::Instant::now();
                let (result, hits) =
                    evaluate_with_hits(net, &arch, data, &meta.eval, device, &mut |_, _| {})?;
                let cost = arch.cost(&net.space);
                Some(TableRow {
                    index: i,
                    arch,
                    result,
                    mflops: cost.mflops(),
                    params: cost.params,
                    seconds: t.elapsed().as_secs_f64(),
                    hits,
                })
            }
            None => None,
        };
        let rows = all_gather_rows(mine, round.len(), comm)?;
        for row in &rows {
            if let Some(t) = table.as_deref_mut() {
                t.insert(row)?;
            }
            done += 1;
            added += 1;
            progress(done, total, Some(row));
        }
    }
    Ok(added)
}

/// Every rank's row of a round, in rank order, on every rank (one
/// broadcast per rank that has a row).
fn all_gather_rows(
    mine: Option<TableRow>,
    count: usize,
    comm: &dyn Collective,
) -> anyhow::Result<Vec<TableRow>> {
    if comm.size() == 1 {
        return Ok(mine.into_iter().collect());
    }
    let mut rows = Vec::with_capacity(count);
    for r in 0..count {
        let mut buf = if r == comm.rank() {
            serde_json::to_vec(mine.as_ref().expect("this rank's row"))?
        } else {
            Vec::new()
        };
        comm.broadcast_bytes(&mut buf, r);
        rows.push(serde_json::from_slice(&buf).context("another rank's table row")?);
    }
    Ok(rows)
}

/// Joins shards into `out`: their metadata must agree; a row present in
/// several inputs is kept once (and must carry the same values).
pub fn merge(out: &Path, inputs: &[&Path]) -> anyhow::Result<usize> {
    let first = inputs.first().context("nothing to merge")?;
    let meta = Table::open(first)?.meta;
    if out.exists() {
        anyhow::bail!("{}: already exists", out.display());
    }
    let tmp = out.with_extension("merging.tmp");
    let _ = std::fs::remove_file(&tmp);
    let merged = Table::create_or_open(&tmp, meta.clone())?;
    let mut n = 0;
    for p in inputs {
        let t = Table::open(p)?;
        let mut m = t.meta.clone();
        m.subnets = meta.subnets;
        check_compatible(&meta, &m).with_context(|| format!("{}: cannot merge", p.display()))?;
        for row in t.rows()? {
            if merged.has(row.index, row.arch.r)? {
                continue;
            }
            merged.insert(&row)?;
            n += 1;
        }
    }
    drop(merged);
    std::fs::rename(&tmp, out).with_context(|| format!("{}: cannot write", out.display()))?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(subnets: usize) -> TableMeta {
        TableMeta {
            space: crate::space::preset("tiny").unwrap(),
            supernet_digest: "d".into(),
            supernet: "s".into(),
            data: "fashion-mnist".into(),
            val_size: 100,
            split_seed: 0,
            eval: EvalConfig::default(),
            arch_seed: 3,
            sampling: Sampling::Uniform,
            subnets,
            resolutions: vec![12],
        }
    }

    #[test]
    fn a_larger_subnet_count_extends_the_same_draws() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sqlite");
        let first = Table::create_or_open(&path, meta(5)).unwrap().meta;
        let grown = Table::create_or_open(&path, meta(12)).unwrap().meta;
        assert_eq!(grown.subnets, 12);
        assert_eq!(Table::open(&path).unwrap().meta.subnets, 12);
        assert_eq!(table_archs(&first)[..], table_archs(&grown)[..5]);
        // A smaller count never shrinks what the table promises.
        assert_eq!(
            Table::create_or_open(&path, meta(3)).unwrap().meta.subnets,
            12
        );
        let mut other = meta(12);
        other.arch_seed = 4;
        assert!(Table::create_or_open(&path, other).is_err());
    }

    #[test]
    fn hits_round_trip_through_bit_packing() {
        let bits: Vec<bool> = (0..21).map(|i| i % 3 == 0 || i == 20).collect();
        assert_eq!(unpack(&pack(&bits), bits.len()), bits);
        assert_eq!(pack(&bits).len(), 3);
    }

    #[test]
    fn mixed_tables_start_with_every_uniform_subnet() {
        let mut m = meta(40);
        m.sampling = Sampling::Mixed;
        let archs = table_archs(&m);
        assert_eq!(archs.len(), 40);
        let grid = uniform_grid(&m.space);
        assert_eq!(grid.len(), 27, "3 kernels × 3 expands × 3 depths");
        assert_eq!(&archs[..27], &grid[..]);
        for a in &grid {
            let blocks = a.active_blocks(&m.space);
            assert!(
                blocks
                    .iter()
                    .all(|b| (b.1, b.2) == (blocks[0].1, blocks[0].2))
            );
        }
        // The draws after the grid do not repeat it.
        assert!(archs[27..].iter().any(|a| !grid.contains(a)));
    }
}
