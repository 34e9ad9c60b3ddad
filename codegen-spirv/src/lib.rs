//! Vulkan backend: LIR to SPIR-V through naga (not built yet).
