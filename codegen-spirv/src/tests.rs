use super::*;
use crate::examples::*;
use tessera_ir::lir::examples::gemv_row;
use tessera_ir::lir::{Access, Kernel, KernelBuilder, ScalarType};

/// lavapipe's shape: subgroups of 8 (tests of subgroup kernels need a target that has them).
fn with_subgroups() -> VulkanTarget {
    VulkanTarget {
        subgroup_sizes: vec![8],
        ..VulkanTarget::baseline()
    }
}

/// Compiles `k` (naga validates it on the way) and checks the SPIR-V header and the WGSL view.
fn compiles(k: &Kernel, target: &VulkanTarget) -> SpirvKernel {
    let compiled = compile(k, target).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(compiled.words.first(), Some(&0x0723_0203), "SPIR-V magic");
    assert_eq!(compiled.entry_point, k.name);
    let wgsl = wgsl_text(k, target).unwrap_or_else(|e| panic!("{e}"));
    assert!(wgsl.contains("@compute"), "{wgsl}");
    compiled
}

fn unsupported_message(k: &Kernel, target: &VulkanTarget) -> String {
    match compile(k, target) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("kernel {} compiled", k.name),
    }
}

#[test]
fn lir_examples_validate() {
    let compiled = compiles(&gemv_row(), &VulkanTarget::baseline());
    assert_eq!(compiled.buffers.len(), 3);
    assert!(compiled.buffers[0].read_only && !compiled.buffers[2].read_only);
    assert_eq!(compiled.scalars_binding(), Some(3));
}

#[test]
fn elementwise_with_tail_validates() {
    let compiled = compiles(&add_tail(64), &VulkanTarget::baseline());
    assert_eq!(compiled.workgroup_size, [64, 1, 1]);
    assert_eq!(compiled.grid(&[130]).unwrap(), [3, 1, 1]);
}

#[test]
fn shared_tree_reduction_validates() {
    compiles(&tree_sum(64), &VulkanTarget::baseline());
}

#[test]
fn subgroup_reduce_validates_with_subgroups_only() {
    compiles(&subgroup_sum(64), &with_subgroups());
    let message = unsupported_message(&subgroup_sum(64), &VulkanTarget::baseline());
    assert!(message.contains("subgroup_sum"), "{message}");
}

#[test]
fn carried_loop_validates() {
    compiles(&row_sum_max(32), &VulkanTarget::baseline());
}

#[test]
fn byte_addressed_q8_0_loads_validate() {
    compiles(&q8_0_dequant(64), &VulkanTarget::baseline());
    compiles(&q8_0_dot(32), &VulkanTarget::baseline());
}

#[test]
fn half_byte_and_i64_buffers_validate() {
    compiles(&mixed_precision_sum(64), &VulkanTarget::baseline());
}

/// A device with `shader-f16`.
fn with_f16() -> VulkanTarget {
    VulkanTarget {
        f16: true,
        ..VulkanTarget::baseline()
    }
}

#[test]
fn aligned_vector_accesses_are_one_wide_access() {
    let wgsl = |target: &VulkanTarget| {
        compiles(&wide_quads(64), target);
        wgsl_text(&wide_quads(64), target).unwrap()
    };
    let packed = wgsl(&VulkanTarget::baseline());
    assert!(packed.contains("array<vec4<f32>>"), "{packed}");
    // Four f16 are two words of the packed buffer.
    assert!(packed.contains("array<vec2<u32>>"), "{packed}");
    let native = wgsl(&with_f16());
    assert!(native.contains("array<vec4<f16>>"), "{native}");
    // The unaligned accesses (per element) never make a buffer wide.
    let narrow = wgsl_text(&add_tail(64), &with_f16()).unwrap();
    assert!(!narrow.contains("vec4"), "{narrow}");
}

#[test]
fn f16_arithmetic_needs_shader_f16() {
    compiles(&half_fma(64), &with_f16());
    let wgsl = wgsl_text(&half_fma(64), &with_f16()).unwrap();
    assert!(wgsl.contains("vec2<f16>"), "{wgsl}");
    let message = unsupported_message(&half_fma(64), &VulkanTarget::baseline());
    assert!(message.contains("half_fma"), "{message}");
}

#[test]
fn nested_if_validates() {
    compiles(&signed_scale(64), &VulkanTarget::baseline());
}

#[test]
fn byte_lanes_and_private_memory_validate() {
    compiles(&byte_lanes(64), &VulkanTarget::baseline());
}

#[test]
fn unsupported_constructs_name_the_kernel() {
    let mut b = KernelBuilder::new("wide_vectors");
    let x = b.buffer("x", ScalarType::F32, Access::Read);
    let y = b.buffer("y", ScalarType::F32, Access::Write);
    let i = b.const_i(0);
    let v = b.load(x, i, 8);
    let s = b.reduce_lanes(tessera_ir::lir::ReduceOp::Add, v);
    b.store(y, i, s);
    let message = unsupported_message(&b.finish(), &VulkanTarget::baseline());
    assert!(
        message.contains("wide_vectors") && message.contains("f32x8"),
        "{message}"
    );

    let mut b = KernelBuilder::new("byte_store");
    let w = b.buffer("w", ScalarType::U8, Access::Write);
    let i = b.const_i(0);
    let v = b.load(w, i, 1);
    b.store(w, i, v);
    let message = unsupported_message(&b.finish(), &VulkanTarget::baseline());
    assert!(
        message.contains("byte_store") && message.contains("store to w"),
        "{message}"
    );
}

#[test]
fn scalar_words_narrow_and_check() {
    let compiled = compiles(&gemv_row(), &VulkanTarget::baseline());
    assert_eq!(compiled.scalar_words(&[3, -1]).unwrap(), vec![3, u32::MAX]);
    let message = compiled
        .scalar_words(&[1 << 40, 1])
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("gemv") && message.contains('n'),
        "{message}"
    );
    let message = compiled
        .check_buffers(&[16, 16, 6])
        .unwrap_err()
        .to_string();
    assert!(message.contains("buffer y"), "{message}");
}

#[test]
fn wgsl_shows_the_packed_dot_products_and_byte_reads() {
    let wgsl = wgsl_text(&q8_0_dot(32), &VulkanTarget::baseline()).unwrap();
    for expected in [
        "dot4I8Packed",
        "unpack4xU8",
        "unpack2x16float",
        "arrayLength",
    ] {
        assert!(wgsl.contains(expected), "{expected} missing from\n{wgsl}");
    }
}

/// A `Concat` of up to four lanes composes a vector; a wider one is refused, naming the kernel.
#[test]
fn concat_composes_up_to_four_lanes() {
    let concat = |name: &str, parts: &[u32]| {
        let mut b = KernelBuilder::new(name);
        let x = b.buffer("x", ScalarType::U32, Access::Read);
        let y = b.buffer("y", ScalarType::U32, Access::Write);
        let i = b.const_i(0);
        let parts: Vec<_> = parts.iter().map(|&lanes| b.load(x, i, lanes)).collect();
        let v = b.concat(&parts);
        let s = b.reduce_lanes(tessera_ir::lir::ReduceOp::Add, v);
        b.store(y, i, s);
        b.finish()
    };
    compiles(&concat("concat", &[2, 1, 1]), &VulkanTarget::baseline());
    compiles(&concat("concat_one", &[1]), &VulkanTarget::baseline());
    let message = unsupported_message(&concat("wide_concat", &[4, 4]), &VulkanTarget::baseline());
    assert!(
        message.contains("wide_concat") && message.contains("u32x8"),
        "{message}"
    );
}
