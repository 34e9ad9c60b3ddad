//! Optimizer and lowering: equality saturation from Graph to KernelGraph, memory planning, kernel templates to LIR (not built yet).
