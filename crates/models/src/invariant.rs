//! Shift-invariant ReduNet (4.1.16-4.1.27): per-frequency operators, lifting and polar resampling.
