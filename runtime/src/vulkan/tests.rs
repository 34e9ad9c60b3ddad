//! Runs the reference SIMT kernels of `tessera_codegen_spirv::examples` on the first Vulkan
//! adapter (lavapipe in CI) against values computed in Rust. Without an adapter each test prints
//! that it skipped, unless `TESSERA_REQUIRE_VULKAN=1`, which makes a missing adapter a failure.

use super::*;
use half::f16;
use tessera_codegen_spirv::examples::*;
use tessera_codegen_spirv::{compile, SpirvKernel, VulkanTarget};
use tessera_ir::lir::examples::gemv_row;
use tessera_ir::lir::Kernel;

/// The first adapter, or `None` (after saying so) when there is none and none is required.
fn device() -> Option<VulkanDevice> {
    let adapters = VulkanDevice::list();
    if adapters.is_empty() {
        let required = std::env::var("TESSERA_REQUIRE_VULKAN").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "TESSERA_REQUIRE_VULKAN=1 but no Vulkan adapter was found"
        );
        eprintln!("skipped: no Vulkan adapter (install mesa-vulkan-drivers for lavapipe)");
        return None;
    }
    Some(VulkanDevice::open(0).unwrap_or_else(|e| panic!("{e}")))
}

fn compiled(dev: &VulkanDevice, k: &Kernel) -> SpirvKernel {
    compile(k, &dev.target()).unwrap_or_else(|e| panic!("{e}"))
}

/// Deterministic pseudo-random numbers in `[-1, 1)` (xorshift).
fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.max(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn bytes<T: Copy, const N: usize>(v: &[T], to: fn(T) -> [u8; N]) -> Vec<u8> {
    v.iter().flat_map(|&x| to(x)).collect()
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn i32s(b: &[u8]) -> Vec<i32> {
    b.chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn assert_close(got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * w.abs().max(1.0),
            "element {i}: got {g}, want {w}"
        );
    }
}

#[test]
fn lists_adapters() {
    let Some(dev) = device() else { return };
    let s = dev.summary();
    eprintln!("{s:?}");
    assert!(s.max_workgroup_size >= 128, "{s:?}");
}

#[test]
fn elementwise_add_with_tail() {
    let Some(dev) = device() else { return };
    let n = 1000;
    let (a, b) = (random(n, 1), random(n, 2));
    let (mut ab, mut bb) = (bytes(&a, f32::to_le_bytes), bytes(&b, f32::to_le_bytes));
    let mut cb = vec![0u8; 4 * n];
    dev.launch(
        &compiled(&dev, &add_tail(64)),
        &mut [&mut ab, &mut bb, &mut cb],
        &[n as i64],
    )
    .unwrap();
    let want: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
    assert_close(&f32s(&cb), &want, 0.0);
}

#[test]
fn workgroup_tree_reduction() {
    let Some(dev) = device() else { return };
    let (n, wg) = (1000, 64);
    let x = random(n, 3);
    let groups = n.div_ceil(wg);
    let (mut xb, mut yb) = (bytes(&x, f32::to_le_bytes), vec![0u8; 4 * groups]);
    dev.launch(
        &compiled(&dev, &tree_sum(wg as u32)),
        &mut [&mut xb, &mut yb],
        &[n as i64],
    )
    .unwrap();
    let want: Vec<f32> = x.chunks(wg).map(|c| c.iter().sum()).collect();
    assert_close(&f32s(&yb), &want, 1e-5);
}

#[test]
fn subgroup_reduce_and_broadcast() {
    let Some(dev) = device() else { return };
    if dev.target().subgroup_sizes.is_empty() {
        eprintln!("skipped: {} has no subgroup operations", dev.summary().name);
        return;
    }
    let n = 100;
    let x = random(n, 4);
    let mut xb = bytes(&x, f32::to_le_bytes);
    let (mut sum, mut first, mut size) = (vec![0u8; 4 * n], vec![0u8; 4 * n], vec![0u8; 4 * n]);
    dev.launch(
        &compiled(&dev, &subgroup_sum(64)),
        &mut [&mut xb, &mut sum, &mut first, &mut size],
        &[n as i64],
    )
    .unwrap();
    let width = i32s(&size)[0] as usize;
    assert!(width.is_power_of_two(), "subgroup size {width}");
    // Subgroups tile each workgroup of 64 in order; compare those lying wholly below n.
    let (sum, first) = (f32s(&sum), f32s(&first));
    for (g, chunk) in x.chunks(width).enumerate() {
        if chunk.len() < width {
            break;
        }
        let want: f32 = chunk.iter().sum();
        for j in 0..width {
            let i = g * width + j;
            assert!(
                (sum[i] - want).abs() <= 1e-5 * want.abs().max(1.0),
                "sum[{i}]"
            );
            assert_eq!(first[i], chunk[0], "first[{i}]");
        }
    }
}

#[test]
fn loop_with_carried_values() {
    let Some(dev) = device() else { return };
    let (rows, k) = (37, 10);
    let x = random(rows * k, 5);
    let mut xb = bytes(&x, f32::to_le_bytes);
    let (mut sum, mut max) = (vec![0u8; 4 * rows], vec![0u8; 4 * rows]);
    dev.launch(
        &compiled(&dev, &row_sum_max(32)),
        &mut [&mut xb, &mut sum, &mut max],
        &[rows as i64, k as i64],
    )
    .unwrap();
    let want_sum: Vec<f32> = x.chunks(k).map(|r| r.iter().sum()).collect();
    let want_max: Vec<f32> = x
        .chunks(k)
        .map(|r| r.iter().copied().fold(f32::NEG_INFINITY, f32::max))
        .collect();
    assert_close(&f32s(&sum), &want_sum, 1e-5);
    assert_close(&f32s(&max), &want_max, 0.0);
}

/// `blocks` Q8_0 blocks: scales and codes, and their 34-byte encoding.
fn q8_0_blocks(blocks: usize) -> (Vec<f32>, Vec<i8>, Vec<u8>) {
    let scales: Vec<f32> = random(blocks, 6)
        .iter()
        .map(|s| f16::from_f32(s * 0.1).to_f32())
        .collect();
    let codes: Vec<i8> = random(blocks * 32, 7)
        .iter()
        .map(|c| (c * 127.0) as i8)
        .collect();
    let mut w = vec![];
    for (b, &s) in scales.iter().enumerate() {
        w.extend(f16::from_f32(s).to_le_bytes());
        w.extend(codes[b * 32..][..32].iter().map(|&c| c as u8));
    }
    (scales, codes, w)
}

#[test]
fn q8_0_byte_addressed_dequantization() {
    let Some(dev) = device() else { return };
    let blocks = 5;
    let n = blocks * 32;
    let (scales, codes, mut w) = q8_0_blocks(blocks);
    let mut y = vec![0u8; 4 * n];
    dev.launch(
        &compiled(&dev, &q8_0_dequant(64)),
        &mut [&mut w, &mut y],
        &[n as i64],
    )
    .unwrap();
    let want: Vec<f32> = (0..n)
        .map(|i| scales[i / 32] * f32::from(codes[i]))
        .collect();
    assert_close(&f32s(&y), &want, 0.0);
}

#[test]
fn q8_0_packed_dot_products() {
    let Some(dev) = device() else { return };
    let blocks = 7;
    let (scales, codes, mut w) = q8_0_blocks(blocks);
    let acts: Vec<i8> = random(blocks * 32, 8)
        .iter()
        .map(|a| (a * 127.0) as i8)
        .collect();
    let words: Vec<u32> = acts
        .chunks(4)
        .map(|c| u32::from_le_bytes([c[0] as u8, c[1] as u8, c[2] as u8, c[3] as u8]))
        .collect();
    let mut xb = bytes(&words, u32::to_le_bytes);
    let (mut signed, mut unsigned) = (vec![0u8; 4 * blocks], vec![0u8; 4 * blocks]);
    dev.launch(
        &compiled(&dev, &q8_0_dot(32)),
        &mut [&mut w, &mut xb, &mut signed, &mut unsigned],
        &[blocks as i64],
    )
    .unwrap();
    let block = |b: usize| (codes[b * 32..][..32].iter()).zip(&acts[b * 32..][..32]);
    let want_signed: Vec<f32> = (0..blocks)
        .map(|b| {
            let dot: i32 = block(b).map(|(&c, &a)| i32::from(c) * i32::from(a)).sum();
            scales[b] * dot as f32
        })
        .collect();
    let want_unsigned: Vec<i32> = (0..blocks)
        .map(|b| {
            block(b)
                .map(|(&c, &a)| i32::from(c as u8) * i32::from(a))
                .sum()
        })
        .collect();
    assert_close(&f32s(&signed), &want_signed, 1e-6);
    assert_eq!(i32s(&unsigned), want_unsigned);
}

#[test]
fn half_byte_and_i64_buffers() {
    let Some(dev) = device() else { return };
    let n = 99;
    let h: Vec<f16> = random(n, 12).into_iter().map(f16::from_f32).collect();
    let bf: Vec<half::bf16> = random(n, 13)
        .into_iter()
        .map(|v| half::bf16::from_f32(v * 4.0))
        .collect();
    let c: Vec<i8> = random(n, 14).iter().map(|v| (v * 127.0) as i8).collect();
    let mut hb = bytes(&h, f16::to_le_bytes);
    let mut bb = bytes(&bf, half::bf16::to_le_bytes);
    let mut cb: Vec<u8> = c.iter().map(|&v| v as u8).collect();
    let (mut y, mut index) = (vec![0u8; 4 * n], vec![0xffu8; 8 * n]);
    dev.launch(
        &compiled(&dev, &mixed_precision_sum(64)),
        &mut [&mut hb, &mut bb, &mut cb, &mut y, &mut index],
        &[n as i64],
    )
    .unwrap();
    let want: Vec<f32> = (0..n)
        .map(|i| f16::from_f32(h[i].to_f32() + bf[i].to_f32() + f32::from(c[i])).to_f32())
        .collect();
    assert_close(&f32s(&y), &want, 0.0);
    let got: Vec<i64> = index
        .chunks_exact(8)
        .map(|w| i64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]))
        .collect();
    assert_eq!(got, (0..n as i64).collect::<Vec<_>>());
}

#[test]
fn wide_and_narrow_accesses_to_one_buffer() {
    let Some(dev) = device() else { return };
    let n = 4 * 37 + 3;
    let x = random(n, 16);
    let h: Vec<f16> = random(n, 17).into_iter().map(f16::from_f32).collect();
    let want: Vec<f32> = (0..n)
        .map(|i| {
            let quad = i / 4 * 4;
            let lone = if quad + 4 <= n { x[quad + 1] } else { 0.0 };
            x[i] + h[i].to_f32() + lone
        })
        .collect();
    // Packed f16 words on the baseline target, native f16 vectors on the device's.
    for target in [VulkanTarget::baseline(), dev.target()] {
        let (mut xb, mut hb) = (bytes(&x, f32::to_le_bytes), bytes(&h, f16::to_le_bytes));
        let mut y = vec![0u8; 4 * n];
        let kernel = compile(&wide_quads(64), &target).unwrap();
        dev.launch(&kernel, &mut [&mut xb, &mut hb, &mut y], &[n as i64])
            .unwrap();
        assert_close(&f32s(&y), &want, 1e-6);
    }
}

#[test]
fn f16_arithmetic_where_the_device_has_it() {
    let Some(dev) = device() else { return };
    if !dev.target().f16 {
        eprintln!("skipped: {} has no shader-f16", dev.summary().name);
        return;
    }
    let n = 2 * 45;
    let a: Vec<f16> = random(n, 18).into_iter().map(f16::from_f32).collect();
    let b: Vec<f16> = random(n, 19).into_iter().map(f16::from_f32).collect();
    let (mut ab, mut bb) = (bytes(&a, f16::to_le_bytes), bytes(&b, f16::to_le_bytes));
    let mut y = vec![0u8; 2 * n];
    dev.launch(
        &compiled(&dev, &half_fma(64)),
        &mut [&mut ab, &mut bb, &mut y],
        &[n as i64],
    )
    .unwrap();
    let got: Vec<f32> = y
        .chunks_exact(2)
        .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
        .collect();
    // One f16 rounding of the exact fma (a driver may round twice: within an f16 ulp).
    let want: Vec<f32> = (0..n)
        .map(|i| f16::from_f64(a[i].to_f64() * b[i].to_f64() + 0.5).to_f32())
        .collect();
    assert_close(&got, &want, 1e-3);
}

#[test]
fn byte_lanes_and_private_memory() {
    let Some(dev) = device() else { return };
    let n = 50;
    let mut w: Vec<u8> = random(4 * n + 3, 15)
        .iter()
        .map(|v| (v * 127.0) as i8 as u8)
        .collect();
    let mut y = vec![0u8; 4 * n];
    dev.launch(
        &compiled(&dev, &byte_lanes(64)),
        &mut [&mut w, &mut y],
        &[n as i64],
    )
    .unwrap();
    let want: Vec<f32> = (0..n)
        .map(|i| {
            w[4 * i + 1..][..4]
                .iter()
                .map(|&b| f32::from((b as i8).wrapping_add(b as i8)))
                .sum()
        })
        .collect();
    assert_close(&f32s(&y), &want, 0.0);
}

#[test]
fn if_else_branches() {
    let Some(dev) = device() else { return };
    let n = 100;
    let x = random(n, 9);
    let (mut xb, mut yb) = (bytes(&x, f32::to_le_bytes), vec![0u8; 4 * n]);
    dev.launch(
        &compiled(&dev, &signed_scale(64)),
        &mut [&mut xb, &mut yb],
        &[n as i64],
    )
    .unwrap();
    let want: Vec<f32> = x
        .iter()
        .map(|&v| if v > 0.0 { v } else { -2.0 * v })
        .collect();
    assert_close(&f32s(&yb), &want, 0.0);
}

#[test]
fn lir_example_gemv() {
    let Some(dev) = device() else { return };
    let (n, k) = (7, 64);
    let (w, x) = (random(n * k, 10), random(k, 11));
    let (mut wb, mut xb) = (bytes(&w, f32::to_le_bytes), bytes(&x, f32::to_le_bytes));
    let mut yb = vec![0u8; 4 * n];
    dev.launch(
        &compiled(&dev, &gemv_row()),
        &mut [&mut wb, &mut xb, &mut yb],
        &[n as i64, k as i64],
    )
    .unwrap();
    let want: Vec<f32> = (0..n)
        .map(|r| (0..k).map(|c| w[r * k + c] * x[c]).sum())
        .collect();
    assert_close(&f32s(&yb), &want, 1e-5);
}

#[test]
fn launch_errors_name_the_kernel() {
    let Some(dev) = device() else { return };
    let threads = dev.summary().max_workgroup_size * 2;
    let huge = VulkanTarget {
        max_workgroup_size: threads,
        ..dev.target()
    };
    let too_wide = compile(&add_tail(threads), &huge).unwrap();
    let message = dev.load(&too_wide).err().map(|e| e.to_string());
    assert!(
        message
            .as_deref()
            .is_some_and(|m| m.contains("add_tail") && m.contains("workgroup size")),
        "{message:?}"
    );
    let kernel = compiled(&dev, &add_tail(64));
    let (mut a, mut b, mut c) = (vec![0u8; 8], vec![0u8; 8], vec![0u8; 6]);
    let message = dev
        .launch(&kernel, &mut [&mut a, &mut b, &mut c], &[2])
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("add_tail") && message.contains("buffer c"),
        "{message}"
    );
}

/// The executor over the arena/view artifact of the CPU executor's test: each binding (growing
/// and shrinking the arena) gives `x + 2w`, and a wrong input is refused by name.
#[test]
fn the_executor_runs_an_entry_point_through_its_arena() {
    use crate::executor::Executor;
    use tessera_ir::interp::Tensor;
    if device().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("add.tsr");
    crate::test_artifact::write_add_artifact(&path, "vulkan");
    let artifact = crate::Artifact::open(&path).unwrap();
    let mut exec = VulkanExecutor::new(&artifact, 0).unwrap();
    for past in [5, 40, 3, 300, 1] {
        let x: Vec<f32> = (0..past).map(|i| i as f32).collect();
        let inputs = [("x".to_string(), Tensor::f32(vec![past], x))].into();
        let got = exec.run("decode", &inputs).unwrap()["y"].clone();
        let want: Vec<f32> = (0..past).map(|i| i as f32 + 20.0).collect();
        assert_eq!(got.as_f32().unwrap(), want, "past = {past}");
    }
    let wrong = [("x".to_string(), Tensor::i32(vec![2], vec![1, 2]))].into();
    let err = exec.run("decode", &wrong).unwrap_err().to_string();
    assert!(err.contains("input `x` is i32"), "{err}");
    // Profiled (timestamp queries on lavapipe): one row per launched kernel, the view none.
    assert!(exec.set_profiling(true));
    let x = [("x".to_string(), Tensor::f32(vec![7], vec![1.0; 7]))].into();
    let profiled = exec.run("decode", &x).unwrap()["y"].clone();
    assert_eq!(profiled.as_f32().unwrap(), [21.0; 7]);
    let rows = exec.take_profile();
    assert_eq!(rows.iter().map(|r| r.index).collect::<Vec<_>>(), [0, 2]);
    assert!(rows
        .iter()
        .all(|r| r.launches == 1 && r.seconds >= 0.0 && r.bytes == 60));
    crate::test_artifact::write_add_artifact(&path, "cpu");
    let cpu_only = crate::Artifact::open(&path).unwrap();
    let err = VulkanExecutor::new(&cpu_only, 0).err().unwrap().to_string();
    assert!(err.contains("recompile with --target vulkan"), "{err}");
}

/// A weight larger than the device binds as one storage buffer is refused at load, by name
/// (run where that limit is small enough to write such a weight: lavapipe's 128 MiB).
#[test]
fn a_model_too_large_for_the_device_is_named() {
    let Some(dev) = device() else {
        return;
    };
    let limit = dev.limits.max_storage_buffer_binding_size;
    if limit > 256 << 20 {
        eprintln!("skipped: the device binds {limit} bytes");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("large.tsr");
    crate::test_artifact::write_artifact_with(&path, "vulkan", limit as usize + 4);
    let artifact = crate::Artifact::open(&path).unwrap();
    let err = VulkanExecutor::new(&artifact, 0).err().unwrap().to_string();
    assert!(
        err.contains("does not fit") && err.contains("weight `unread`"),
        "{err}"
    );
}
