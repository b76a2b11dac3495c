//! The compute kernels: WGSL entry points (shaders/*.wgsl, embedded with `include_str!`) and the access of their bindings.

use crate::ctx::{Access, Kernel};
use Access::{Read as R, ReadWrite as W};

/// A shader module's source: `shaders/common.wgsl` (the helpers every module
/// shares) followed by the module's own file.
macro_rules! shader {
    ($file:literal) => {
        concat!(include_str!("../shaders/common.wgsl"), include_str!(concat!("../shaders/", $file)))
    };
}

const ELEMENTWISE: &str = shader!("elementwise.wgsl");
const LAYOUT: &str = shader!("layout.wgsl");
const REDUCE: &str = shader!("reduce.wgsl");
const MATMUL: &str = shader!("matmul.wgsl");
const CHOLESKY: &str = shader!("cholesky.wgsl");
const HERMITIAN: &str = shader!("hermitian.wgsl");
const FFT_CORE: &str = shader!("fft_core.wgsl");
const FFT_IO: &str = shader!("fft_io.wgsl");

macro_rules! kernels {
    ($module:literal, $src:ident, $bindings:expr; $($name:ident => $entry:literal / $params:literal),* $(,)?) => {
        $(
            #[doc = concat!("`", $entry, "` of `", $module, ".wgsl`.")]
            pub static $name: Kernel =
                Kernel { module: $module, source: $src, entry: $entry, bindings: $bindings, params: $params };
        )*
    };
}

kernels!("elementwise", ELEMENTWISE, &[R, R, W];
    UNARY => "unary" / 3,
    FILL => "fill" / 2,
    BINARY => "binary" / 28,
);
kernels!("layout", LAYOUT, &[R, R, W];
    PERMUTE => "permute" / 20,
    COPY_ROWS => "copy_rows" / 6,
    INDEX_SELECT => "index_select" / 4,
    INDEX_ADD => "index_add" / 4,
);
kernels!("reduce", REDUCE, &[R, W];
    REDUCE_THREAD => "reduce_thread" / 4,
    REDUCE_GROUP => "reduce_group" / 4,
    SOFTMAX_THREAD => "softmax_thread" / 3,
    SOFTMAX_GROUP => "softmax_group" / 3,
);
kernels!("matmul", MATMUL, &[R, R, W];
    MM_THREAD => "mm_thread" / 9,
    MM_SMALL => "mm_small" / 9,
    MM_LARGE => "mm_large" / 9,
);
kernels!("cholesky", CHOLESKY, &[W, W, W, W];
    CHOL_THREAD => "chol_thread" / 2,
    CHOL_DIAG => "chol_diag" / 4,
    CHOL_PANEL => "chol_panel" / 4,
    CHOL_UPDATE => "chol_update" / 4,
    ZERO_UPPER => "zero_upper" / 2,
    EYE => "eye" / 2,
    TRI_SOLVE => "tri_solve" / 4,
    LOGDET => "logdet" / 2,
);
kernels!("hermitian", HERMITIAN, &[W, W, W, W, W, W];
    HERM_FACTOR_THREAD => "herm_factor_thread" / 2,
    HERM_FACTOR => "herm_factor" / 2,
    HERM_EYE => "herm_eye" / 2,
    HERM_SOLVE => "herm_solve" / 4,
    HERM_LOGDET => "herm_logdet" / 2,
);
kernels!("fft_core", FFT_CORE, &[R, W, W];
    FFT_SHARED => "fft_shared" / 5,
    FFT_PASS => "fft_pass" / 4,
);
kernels!("fft_io", FFT_IO, &[R, R, R, W, W, W];
    GATHER => "gather" / 7,
    SCATTER => "scatter" / 7,
    MUL_SPECTRUM => "mul_spectrum" / 3,
);
