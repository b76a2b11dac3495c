// Power-of-two complex FFT kernels: whole transforms in workgroup memory (several signals per workgroup, m <= 2048, radix-2 DIT) and one radix-2 Stockham pass in global memory.

@group(0) @binding(0) var<storage, read> p: array<u32>;
@group(0) @binding(1) var<storage, read> tw: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read_write> src: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read_write> dst: array<vec2<f32>>;

var<workgroup> sre: array<f32, 2048>;
var<workgroup> sim: array<f32, 2048>;

// tw[k] = exp(-2 pi i k / m), k < m / 2; conjugated for the inverse.
fn twiddle(k: u32, inverse: bool) -> vec2<f32> {
    let w = tw[k];
    return select(w, vec2<f32>(w.x, -w.y), inverse);
}

// In place on `src`; each workgroup transforms `per` consecutive signals
// (per * m <= 2048). p = [m, log2 m, signals, inverse, per]
@compute @workgroup_size(256)
fn fft_shared(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let m = p[0];
    let logm = p[1];
    let signals = p[2];
    let inverse = p[3] != 0u;
    let per = p[4];
    let first = (wid.y * nwg.x + wid.x) * per;
    if (first >= signals) {
        return;
    }
    // Signals of this group that exist; the rest of the shared arrays is idle.
    let count = min(per, signals - first);
    let total = count * m;
    let base = first * m;
    for (var t = lid; t < total; t += 256u) {
        let q = t & (m - 1u);
        let r = (reverseBits(q) >> (31u - logm)) >> 1u;
        let v = src[base + t - q + r];
        sre[t] = v.x;
        sim[t] = v.y;
    }
    workgroupBarrier();
    let halfm = m / 2u;
    for (var st = 0u; st < logm; st++) {
        let half = 1u << st;
        let step = m >> (st + 1u);
        for (var b = lid; b < per * halfm; b += 256u) {
            // m is a power of two: signal b / (m / 2) and butterfly b % (m / 2) by shifts.
            let sig = b >> (logm - 1u);
            let bb = b & (halfm - 1u);
            let pos = bb & (half - 1u);
            let i = (sig << logm) + ((bb >> st) << (st + 1u)) + pos;
            let j = i + half;
            if (sig < count) {
                let w = twiddle(pos * step, inverse);
                let xr = sre[j] * w.x - sim[j] * w.y;
                let xi = sre[j] * w.y + sim[j] * w.x;
                let ur = sre[i];
                let ui = sim[i];
                sre[i] = ur + xr;
                sim[i] = ui + xi;
                sre[j] = ur - xr;
                sim[j] = ui - xi;
            }
        }
        workgroupBarrier();
    }
    for (var t = lid; t < total; t += 256u) {
        src[base + t] = vec2<f32>(sre[t], sim[t]);
    }
}

// One Stockham radix-2 pass src -> dst on sub-transforms of size ns (1, 2, 4, ...).
// p = [m, ns, signals, inverse]
@compute @workgroup_size(256)
fn fft_pass(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let t = (wid.y * nwg.x + wid.x) * 256u + lid;
    let m = p[0];
    let h = m / 2u;
    if (t >= h * p[2]) {
        return;
    }
    let ns = p[1];
    let s = t / h;
    let j = t % h;
    let base = s * m;
    let k = j & (ns - 1u);
    let w = twiddle(k * (h / ns), p[3] != 0u);
    let v0 = src[base + j];
    let v1 = src[base + j + h];
    let x1 = vec2<f32>(v1.x * w.x - v1.y * w.y, v1.x * w.y + v1.y * w.x);
    let o = (j / ns) * ns * 2u + k;
    dst[base + o] = v0 + x1;
    dst[base + o + ns] = v0 - x1;
}
