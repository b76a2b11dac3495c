//! Recycled buffers (`backend_cpu::recycle_buffers`) never show through: products, permutations and dense attention written into buffers that held NaN give exactly the results computed into fresh zeroed buffers, and the poisoned buffers were the ones reused.
use backend_cpu::pool::pooled_bytes;
use backend_cpu::{recycle_buffers, CpuBackend};
use rate_core::kernels::{attention_dense, attention_dense_backward, DenseAttentionSpec};
use rate_core::Tensor;

type Be = CpuBackend<f64>;

fn values(n: usize, seed: usize) -> Vec<f64> {
    (0..n).map(|i| ((i * 7919 + seed * 104_729) % 2003) as f64 / 1001.0 - 1.0).collect()
}

/// Every result the recycling kernels produce, as host vectors.
fn results(be: &Be) -> Vec<(&'static str, Vec<f64>)> {
    let a = Tensor::from_f64(be, &values(96 * 80, 1), &[96, 80]);
    let b = Tensor::from_f64(be, &values(80 * 72, 2), &[80, 72]);
    let batched = Tensor::from_f64(be, &values(6 * 40 * 30, 3), &[6, 40, 30]);
    let big_a = Tensor::from_f64(be, &values(600 * 160, 4), &[600, 160]);
    let big_b = Tensor::from_f64(be, &values(160 * 96, 5), &[160, 96]);
    let w = Tensor::from_f64(be, &values(3 * 50 * 24, 6), &[3, 50, 24]).scale(0.3);
    let g = Tensor::from_f64(be, &values(3 * 50 * 24, 7), &[3, 50, 24]);
    let spec = DenseAttentionSpec::for_tokens(&w, 4);
    let (attn, out) = attention_dense(&w, spec);
    let gw = attention_dense_backward(&w, &attn, &g, spec);
    vec![
        ("matmul", a.matmul(&b).to_f64_vec()),
        ("matmul a^T", a.matmul_t(&a, true, false).to_f64_vec()),
        ("batched", batched.matmul_t(&batched, false, true).to_f64_vec()),
        ("row blocks", big_a.matmul(&big_b).to_f64_vec()),
        ("permute", batched.permute(&[2, 0, 1]).to_f64_vec()),
        ("attention", attn.to_f64_vec()),
        ("attention output", out.to_f64_vec()),
        ("attention backward", gw.to_f64_vec()),
    ]
}

#[test]
fn recycled_buffers_never_show_through() {
    let be = Be::new();
    let fresh = results(&be);
    recycle_buffers(64 << 20);
    // poison: NaN buffers of every output length, dropped into this thread's pool
    for (_, v) in &fresh {
        drop(Tensor::<Be>::full(&be, &[v.len()], f64::NAN));
    }
    let poisoned = pooled_bytes::<f64>();
    assert!(poisoned > 0, "the NaN buffers went to the pool");
    let again = results(&be);
    assert!(pooled_bytes::<f64>() != poisoned, "the pool was drawn from");
    recycle_buffers(0);
    for ((name, want), (_, got)) in fresh.iter().zip(&again) {
        assert!(got.iter().all(|v| v.is_finite()), "{name}: a stale NaN showed through");
        assert!(got == want, "{name}: differs from the result in a fresh buffer");
    }
}
