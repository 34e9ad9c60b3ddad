//! CPU backend: LIR to native code through Cranelift, LLVM optional (not built yet).
