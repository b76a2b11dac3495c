//! The compute kernels: WGSL entry points (shaders/*.wgsl, embedded with `include_str!`) and the access of their bindings.

use crate::ctx::{Access, Kernel};
use Access::{Read as R, ReadWrite as W};

const ELEMENTWISE: &str = include_str!("../shaders/elementwise.wgsl");
const LAYOUT: &str = include_str!("../shaders/layout.wgsl");
const REDUCE: &str = include_str!("../shaders/reduce.wgsl");
const MATMUL: &str = include_str!("../shaders/matmul.wgsl");
const CHOLESKY: &str = include_str!("../shaders/cholesky.wgsl");
const HERMITIAN: &str = include_str!("../shaders/hermitian.wgsl");
const FFT_CORE: &str = include_str!("../shaders/fft_core.wgsl");
const FFT_IO: &str = include_str!("../shaders/fft_io.wgsl");

macro_rules! kernels {
    ($module:literal, $src:ident, $bindings:expr; $($name:ident => $entry:literal),* $(,)?) => {
        $(
            #[doc = concat!("`", $entry, "` of `", $module, ".wgsl`.")]
            pub static $name: Kernel =
                Kernel { module: $module, source: $src, entry: $entry, bindings: $bindings };
        )*
    };
}

kernels!("elementwise", ELEMENTWISE, &[R, R, W];
    UNARY => "unary", FILL => "fill", BINARY => "binary");
kernels!("layout", LAYOUT, &[R, R, W];
    PERMUTE => "permute", COPY_ROWS => "copy_rows", INDEX_SELECT => "index_select", INDEX_ADD => "index_add");
kernels!("reduce", REDUCE, &[R, W];
    REDUCE_THREAD => "reduce_thread", REDUCE_GROUP => "reduce_group",
    SOFTMAX_THREAD => "softmax_thread", SOFTMAX_GROUP => "softmax_group");
kernels!("matmul", MATMUL, &[R, R, W]; MM_SMALL => "mm_small", MM_LARGE => "mm_large");
kernels!("cholesky", CHOLESKY, &[W, W, W, W];
    CHOL_DIAG => "chol_diag", CHOL_PANEL => "chol_panel", CHOL_UPDATE => "chol_update",
    ZERO_UPPER => "zero_upper", EYE => "eye", TRI_SOLVE => "tri_solve", LOGDET => "logdet");
kernels!("hermitian", HERMITIAN, &[W, W, W, W, W, W];
    HERM_FACTOR => "herm_factor", HERM_EYE => "herm_eye", HERM_SOLVE => "herm_solve",
    HERM_LOGDET => "herm_logdet");
kernels!("fft_core", FFT_CORE, &[R, W, W]; FFT_SHARED => "fft_shared", FFT_PASS => "fft_pass");
kernels!("fft_io", FFT_IO, &[R, R, R, W, W, W];
    GATHER => "gather", SCATTER => "scatter", MUL_SPECTRUM => "mul_spectrum");
