//! A kernel's module optimized for the host and JIT-compiled by MCJIT; [`JitCode`] owns the
//! result for [`CompiledKernel`].

use super::translate::translate;
use super::{Failure, Host};
use crate::launch::{CodeOwner, KernelFn};
use crate::{cpu_capabilities, CodegenError, CompiledKernel};
use inkwell::context::Context;
use inkwell::execution_engine::ExecutionEngine;
use inkwell::module::Module;
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::{FileType, TargetMachine};
use inkwell::OptimizationLevel;
use tessera_ir::lir::{verify, Kernel};

/// The machine code of one kernel: the execution engine (which owns the module and the code;
/// the only handle on it, the module's dropped with [`compile_for`]) and the LLVM context
/// everything in it lives in.
pub(crate) struct JitCode {
    // Fields drop in declaration order: the engine before the context it was created in.
    _engine: ExecutionEngine<'static>,
    _context: Box<Context>,
}

/// Verifies, translates, optimizes and JIT-compiles `kernel` for the host CPU.
pub(crate) fn compile(kernel: &Kernel) -> Result<CompiledKernel, CodegenError> {
    compile_for(kernel, Host::native().map_err(|f| f.at(kernel))?)
}

/// [`compile`] for `host` (the native host, perhaps with fewer dot-product instructions).
pub(crate) fn compile_for(kernel: &Kernel, host: &Host) -> Result<CompiledKernel, CodegenError> {
    let context = Box::new(Context::create());
    // SAFETY: the context is boxed, so it stays at this address when the box moves into the
    // `JitCode`, which drops the engine (and with it the module and the code) before the box;
    // nothing created here outlives the `JitCode` but the function pointer, which
    // `CompiledKernel` drops with it. So the `'static` lifetime is never relied on past the
    // context's life.
    let cx: &'static Context = unsafe { &*std::ptr::from_ref(context.as_ref()) };
    let (module, _machine) = optimized(cx, kernel, host)?;
    let failed = |message: String| Failure::Llvm(message).at(kernel);
    let engine = module
        .create_jit_execution_engine(OptimizationLevel::Aggressive)
        .map_err(|e| failed(format!("creating the JIT: {e}")))?;
    let address = engine
        .get_function_address(&kernel.name)
        .map_err(|e| failed(format!("finding the compiled function: {e}")))?;
    // SAFETY: `address` is the JIT-compiled exported function of `translate`, whose signature
    // is four pointers and no result on the host's C calling convention: the `KernelFn` ABI.
    let entry = unsafe { std::mem::transmute::<usize, KernelFn>(address) };
    let code = JitCode {
        _engine: engine,
        _context: context,
    };
    Ok(CompiledKernel::new(
        kernel.clone(),
        CodeOwner::Llvm(code),
        entry,
    ))
}

/// The LLVM IR of `kernel` after the O3 pipeline for the host (`tessera explain --emit llvm`).
pub(crate) fn ir_text(kernel: &Kernel) -> Result<String, CodegenError> {
    let cx = Context::create();
    let host = Host::native().map_err(|f| f.at(kernel))?;
    let (module, _machine) = optimized(&cx, kernel, host)?;
    Ok(module.print_to_string().to_string())
}

/// The host assembly LLVM generates for `kernel`.
pub(crate) fn asm_text(kernel: &Kernel) -> Result<String, CodegenError> {
    let cx = Context::create();
    let host = Host::native().map_err(|f| f.at(kernel))?;
    let (module, machine) = optimized(&cx, kernel, host)?;
    let buffer = machine
        .write_to_memory_buffer(&module, FileType::Assembly)
        .map_err(|e| Failure::Llvm(format!("emitting assembly: {e}")).at(kernel))?;
    Ok(String::from_utf8_lossy(buffer.as_slice()).into_owned())
}

/// `kernel` verified, translated into a fresh module of `cx` for `host` and run through LLVM's
/// O3 pipeline, with the target machine it was optimized for.
fn optimized<'ctx>(
    cx: &'ctx Context,
    kernel: &Kernel,
    host: &Host,
) -> Result<(Module<'ctx>, TargetMachine), CodegenError> {
    verify(kernel, &cpu_capabilities())?;
    let at = |f: Failure| f.at(kernel);
    let machine = host.target_machine().map_err(at)?;
    let module = cx.create_module(&kernel.name);
    module.set_triple(&machine.get_triple());
    module.set_data_layout(&machine.get_target_data().get_data_layout());
    translate(cx, &module, kernel, host).map_err(at)?;
    module
        .verify()
        .map_err(|e| at(Failure::Llvm(format!("invalid LLVM IR: {e}"))))?;
    module
        .run_passes("default<O3>", &machine, PassBuilderOptions::create())
        .map_err(|e| at(Failure::Llvm(format!("optimizing: {e}"))))?;
    Ok((module, machine))
}
