//! The Cranelift backend's [`compile`], [`clif_text`] and [`asm_text`]: a JIT module for the
//! host, the kernel translated into it.

use crate::launch::{CodeOwner, KernelFn};
use crate::translate::{kernel_signature, math_symbols, translate};
use crate::{cpu_capabilities, CodegenError, CompiledKernel};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_codegen::Context;
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, FuncId, Linkage, Module};
use tessera_ir::lir::{verify, Kernel};

/// Verifies, translates and JIT-compiles `kernel` for the host CPU with Cranelift.
pub(crate) fn compile(kernel: &Kernel) -> Result<CompiledKernel, CodegenError> {
    let (mut module, mut ctx, id) = translated(kernel)?;
    let failed = |e: cranelift_module::ModuleError| cranelift_error(kernel, format!("{e:?}"));
    module.define_function(id, &mut ctx).map_err(failed)?;
    module.finalize_definitions().map_err(failed)?;
    let code = module.get_finalized_function(id);
    // SAFETY: `code` is the function just finalized with `kernel_signature`, which is this
    // `extern "C"` signature on the host's default calling convention.
    let entry = unsafe { std::mem::transmute::<*const u8, KernelFn>(code) };
    Ok(CompiledKernel::new(
        kernel.clone(),
        CodeOwner::Cranelift(Box::new(module)),
        entry,
    ))
}

/// The Cranelift IR of `kernel`'s translated function, before Cranelift's optimizations.
pub fn clif_text(kernel: &Kernel) -> Result<String, CodegenError> {
    let (_module, ctx, _id) = translated(kernel)?;
    Ok(ctx.func.display().to_string())
}

/// The host machine code Cranelift generates for `kernel`, as its disassembly.
pub(crate) fn asm_text(kernel: &Kernel) -> Result<String, CodegenError> {
    let (mut module, mut ctx, id) = translated(kernel)?;
    ctx.set_disasm(true);
    module
        .define_function(id, &mut ctx)
        .map_err(|e| cranelift_error(kernel, format!("{e:?}")))?;
    ctx.compiled_code()
        .and_then(|c| c.vcode.clone())
        .ok_or_else(|| cranelift_error(kernel, "no disassembly was produced".into()))
}

/// A fresh module with `kernel` verified and translated into a context, not yet defined.
fn translated(kernel: &Kernel) -> Result<(JITModule, Context, FuncId), CodegenError> {
    verify(kernel, &cpu_capabilities())?;
    let mut module = host_module(kernel)?;
    let sig = kernel_signature(&module);
    let id = module
        .declare_function(&kernel.name, Linkage::Export, &sig)
        .map_err(|e| cranelift_error(kernel, e.to_string()))?;
    let mut ctx = module.make_context();
    ctx.func.signature = sig;
    translate(&mut module, kernel, &mut ctx.func)?;
    Ok((module, ctx, id))
}

/// A JIT module for the host ISA at `opt_level=speed`, with the math symbols registered.
fn host_module(kernel: &Kernel) -> Result<JITModule, CodegenError> {
    let mut flags = settings::builder();
    for (name, value) in [
        ("opt_level", "speed"),
        ("use_colocated_libcalls", "false"),
        ("is_pic", "false"),
    ] {
        flags
            .set(name, value)
            .map_err(|e| cranelift_error(kernel, format!("setting {name}: {e}")))?;
    }
    let isa = cranelift_native::builder()
        .map_err(|e| cranelift_error(kernel, format!("host ISA: {e}")))?
        .finish(settings::Flags::new(flags))
        .map_err(|e| cranelift_error(kernel, format!("host ISA: {e}")))?;
    let mut builder = JITBuilder::with_isa(isa, default_libcall_names());
    for (name, address) in math_symbols() {
        builder.symbol(name, address);
    }
    Ok(JITModule::new(builder))
}

fn cranelift_error(kernel: &Kernel, message: String) -> CodegenError {
    CodegenError::Cranelift {
        kernel: kernel.name.clone(),
        message,
    }
}
