// FFT gather/scatter between [outer, len, inner] planes and contiguous complex signals, with Bluestein chirps, zero padding, Hermitian extension and scaling.

@group(0) @binding(0) var<storage, read> p: array<u32>;
@group(0) @binding(1) var<storage, read> in_re: array<f32>;
@group(0) @binding(2) var<storage, read> in_im: array<f32>;
@group(0) @binding(3) var<storage, read> table: array<vec2<f32>>;
@group(0) @binding(4) var<storage, read_write> work: array<vec2<f32>>;
@group(0) @binding(5) var<storage, read_write> out_re: array<f32>;
@group(0) @binding(6) var<storage, read_write> out_im: array<f32>;

fn cmul(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    return vec2<f32>(a.x * b.x - a.y * b.y, a.x * b.y + a.y * b.x);
}

// Chirp w_q (mode 1) or its conjugate (mode 2) from the table.
fn chirp(q: u32, mode: u32) -> vec2<f32> {
    let w = table[q];
    return select(w, vec2<f32>(w.x, -w.y), mode == 2u);
}

// Signal s = o * inner + j of length n, zero-padded to m, into work[s * m ..].
// p = [outer, len_in, inner, n, m, mode (0 complex, 1 real, 2 half spectrum), chirp mode]
@compute @workgroup_size(256)
fn gather(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let t = linear_id(wid, nwg, lid);
    let inner = p[2];
    let m = p[4];
    if (t >= p[0] * inner * m) {
        return;
    }
    let len_in = p[1];
    let n = p[3];
    let mode = p[5];
    let s = t / m;
    let q = t % m;
    let o = s / inner;
    let j = s % inner;
    var v = vec2<f32>(0.0, 0.0);
    if (q < n) {
        if (mode == 0u) {
            let i = (o * len_in + q) * inner + j;
            v = vec2<f32>(in_re[i], in_im[i]);
        } else if (mode == 1u) {
            v = vec2<f32>(in_re[(o * len_in + q) * inner + j], 0.0);
        } else {
            // X_{n-q} = conj(X_q); the self-conjugate bins keep only their real part.
            let upper = (n + 1u) / 2u;
            if (q == 0u || (n % 2u == 0u && q == n / 2u)) {
                v = vec2<f32>(in_re[(o * len_in + q) * inner + j], 0.0);
            } else if (q < upper) {
                let i = (o * len_in + q) * inner + j;
                v = vec2<f32>(in_re[i], in_im[i]);
            } else {
                let i = (o * len_in + (n - q)) * inner + j;
                v = vec2<f32>(in_re[i], -in_im[i]);
            }
        }
        if (p[6] != 0u) {
            v = cmul(v, chirp(q, p[6]));
        }
    }
    work[t] = v;
}

// First `keep` entries of each signal, times the chirp and `scale`, into planes [outer, keep, inner].
// p = [outer, keep, inner, m, chirp mode, scale bits, write_im]
@compute @workgroup_size(256)
fn scatter(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let t = linear_id(wid, nwg, lid);
    let keep = p[1];
    let inner = p[2];
    if (t >= p[0] * inner * keep) {
        return;
    }
    let m = p[3];
    let s = t / keep;
    let q = t % keep;
    let o = s / inner;
    let j = s % inner;
    var v = work[s * m + q];
    if (p[4] != 0u) {
        v = cmul(v, chirp(q, p[4]));
    }
    v = v * bitcast<f32>(p[5]);
    let i = (o * keep + q) * inner + j;
    out_re[i] = v.x;
    if (p[6] != 0u) {
        out_im[i] = v.y;
    }
}

// work[s * m + q] *= table[q] * scale. p = [signals, m, scale bits]
@compute @workgroup_size(256)
fn mul_spectrum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let t = linear_id(wid, nwg, lid);
    let m = p[1];
    if (t >= p[0] * m) {
        return;
    }
    work[t] = cmul(work[t], table[t % m]) * bitcast<f32>(p[2]);
}
