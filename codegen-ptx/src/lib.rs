//! NVIDIA backend: LIR to PTX text (not built yet).
