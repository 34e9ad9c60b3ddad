//! `bench --profile`: the kernel times of one profiled generation, summed per entry point over
//! the kernels that share a template and a fused body (every layer's copy of a kernel), so the
//! table says which template limits prefill or decode and how far from the bandwidth it runs.

use serde::Serialize;
use std::collections::BTreeMap;
use tessera_runtime::KernelProfile;

/// The kernels of one entry point that share a template and a body, over the profiled run.
#[derive(Serialize)]
pub struct ProfileRow {
    pub entry: String,
    pub kind: String,
    pub ops: String,
    /// How many kernels of the KernelGraph (layers) the row sums.
    pub kernels: usize,
    pub launches: u64,
    pub seconds: f64,
    /// Of the entry point's kernel time.
    pub percent: f64,
    /// Operand bytes over seconds: the bandwidth a memory-bound kernel reaches.
    pub gb_s: f64,
}

/// Rows per entry point, slowest first.
pub fn rows(profile: &[KernelProfile]) -> Vec<ProfileRow> {
    let mut groups: BTreeMap<(&str, &str, &str), Vec<&KernelProfile>> = BTreeMap::new();
    for k in profile {
        groups
            .entry((k.entry.as_str(), k.kind.as_str(), k.ops.as_str()))
            .or_default()
            .push(k);
    }
    let mut totals: BTreeMap<&str, f64> = BTreeMap::new();
    for k in profile {
        *totals.entry(k.entry.as_str()).or_default() += k.seconds;
    }
    let mut rows: Vec<ProfileRow> = groups
        .into_iter()
        .map(|((entry, kind, ops), ks)| {
            let seconds: f64 = ks.iter().map(|k| k.seconds).sum();
            let bytes: u64 = ks.iter().map(|k| k.bytes).sum();
            ProfileRow {
                entry: entry.to_string(),
                kind: kind.to_string(),
                ops: ops.to_string(),
                kernels: ks.len(),
                launches: ks.iter().map(|k| k.launches).sum(),
                seconds,
                percent: 100.0 * seconds / totals[entry].max(f64::MIN_POSITIVE),
                gb_s: bytes as f64 / seconds.max(f64::MIN_POSITIVE) / 1e9,
            }
        })
        .collect();
    rows.sort_by(|a, b| a.entry.cmp(&b.entry).then(b.seconds.total_cmp(&a.seconds)));
    rows
}

/// The rows as a table per entry point.
pub fn print(rows: &[ProfileRow]) {
    let mut entry = "";
    for r in rows {
        if r.entry != entry {
            entry = &r.entry;
            println!("\nkernels of `{entry}` (one profiled run):");
            println!(
                "  {:>9} {:>6} {:>9} {:>7}  kernel",
                "ms", "%", "launches", "GB/s"
            );
        }
        println!(
            "  {:>9.2} {:>5.1}% {:>9} {:>7.1}  {} ({}) ×{}",
            r.seconds * 1e3,
            r.percent,
            r.launches,
            r.gb_s,
            r.kind,
            r.ops,
            r.kernels
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel(entry: &str, index: usize, kind: &str, seconds: f64) -> KernelProfile {
        KernelProfile {
            entry: entry.into(),
            index,
            scope: format!("model.layers.{index}"),
            kind: kind.into(),
            ops: "rms_norm+matmul".into(),
            launches: 2,
            seconds,
            bytes: 4_000_000,
        }
    }

    #[test]
    fn layers_of_one_kernel_sum_into_a_row_slowest_first() {
        let profile = [
            kernel("decode", 0, "gemv", 0.001),
            kernel("decode", 1, "gemv", 0.003),
            kernel("decode", 2, "gather", 0.002),
            kernel("prefill", 0, "gemm", 0.5),
        ];
        let rows = rows(&profile);
        let got: Vec<(&str, &str, usize, u64)> = rows
            .iter()
            .map(|r| (r.entry.as_str(), r.kind.as_str(), r.kernels, r.launches))
            .collect();
        assert_eq!(
            got,
            [
                ("decode", "gemv", 2, 4),
                ("decode", "gather", 1, 2),
                ("prefill", "gemm", 1, 2)
            ]
        );
        assert!((rows[0].percent - 200.0 / 3.0).abs() < 1e-9);
        assert!((rows[0].gb_s - 2.0).abs() < 1e-9, "{}", rows[0].gb_s);
        assert!((rows[2].percent - 100.0).abs() < 1e-9);
    }
}
