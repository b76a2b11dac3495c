// Real SPD Cholesky (A = L L^T) by blocks, triangular solves with L and L^T, log-determinants; pivot failures go to a status buffer.

@group(0) @binding(0) var<storage, read> p: array<u32>;
@group(0) @binding(1) var<storage, read_write> l: array<f32>;
@group(0) @binding(2) var<storage, read_write> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> status: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

var<workgroup> piv: f32;

// Right-looking factorisation of the diagonal block [kb, kb + nb) of every
// matrix, in place; one workgroup of 64 threads per matrix.
// p = [n, kb, nb, batch]; status[2b] = failing row + 1, status[2b + 1] = pivot bits.
@compute @workgroup_size(64)
fn chol_diag(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let bi = wid.y * nwg.x + wid.x;
    if (bi >= p[3]) {
        return;
    }
    let n = p[0];
    let kb = p[1];
    let nb = p[2];
    let base = bi * n * n + kb * n + kb;
    for (var j = 0u; j < nb; j++) {
        if (lid == 0u) {
            var d = l[base + j * n + j];
            if (!(d > 0.0) || !finite(d)) {
                if (status[2u * bi] == 0u) {
                    status[2u * bi] = kb + j + 1u;
                    status[2u * bi + 1u] = bitcast<u32>(d);
                }
                d = 1.0;
            }
            d = sqrt(d);
            l[base + j * n + j] = d;
            piv = d;
        }
        let d = workgroupUniformLoad(&piv);
        for (var i = j + 1u + lid; i < nb; i += 64u) {
            l[base + i * n + j] = l[base + i * n + j] / d;
        }
        storageBarrier();
        for (var i = j + 1u + lid; i < nb; i += 64u) {
            let lij = l[base + i * n + j];
            for (var c = j + 1u; c <= i; c++) {
                l[base + i * n + c] -= lij * l[base + c * n + j];
            }
        }
        storageBarrier();
    }
}

// Whole factorisation of one small matrix per thread (no barriers), in place.
// p = [n, batch]; status as in chol_diag.
@compute @workgroup_size(256)
fn chol_thread(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let bi = linear_id(wid, nwg, lid);
    if (bi >= p[1]) {
        return;
    }
    let n = p[0];
    let mb = bi * n * n;
    for (var j = 0u; j < n; j++) {
        var d = l[mb + j * n + j];
        if (!(d > 0.0) || !finite(d)) {
            if (status[2u * bi] == 0u) {
                status[2u * bi] = j + 1u;
                status[2u * bi + 1u] = bitcast<u32>(d);
            }
            d = 1.0;
        }
        d = sqrt(d);
        l[mb + j * n + j] = d;
        for (var i = j + 1u; i < n; i++) {
            l[mb + i * n + j] = l[mb + i * n + j] / d;
        }
        for (var i = j + 1u; i < n; i++) {
            let lij = l[mb + i * n + j];
            for (var c = j + 1u; c <= i; c++) {
                l[mb + i * n + c] -= lij * l[mb + c * n + j];
            }
        }
    }
}

// Panel below the diagonal block: L21 = A21 L11^-T, one thread per row.
// p = [n, kb, nb, batch]
@compute @workgroup_size(256)
fn chol_panel(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let t = linear_id(wid, nwg, lid);
    let n = p[0];
    let kb = p[1];
    let nb = p[2];
    let rows = n - kb - nb;
    if (t >= rows * p[3]) {
        return;
    }
    let bi = t / rows;
    let i = kb + nb + t % rows;
    let mb = bi * n * n;
    for (var c = 0u; c < nb; c++) {
        var s = l[mb + i * n + kb + c];
        for (var q = 0u; q < c; q++) {
            s -= l[mb + i * n + kb + q] * l[mb + (kb + c) * n + kb + q];
        }
        l[mb + i * n + kb + c] = s / l[mb + (kb + c) * n + kb + c];
    }
}

var<workgroup> ti: array<f32, 512>;
var<workgroup> tc: array<f32, 512>;

// Trailing update A22 -= L21 L21^T on the lower triangle, 16x16 tiles, nb <= 32.
// p = [n, kb, nb, batch_offset]; grid (tiles, tiles, batch).
@compute @workgroup_size(16, 16)
fn chol_update(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    if (wid.x > wid.y) {
        return;
    }
    let n = p[0];
    let kb = p[1];
    let nb = p[2];
    let bi = wid.z + p[3];
    let mb = bi * n * n;
    let t0 = kb + nb;
    let r0 = t0 + wid.y * 16u;
    let c0 = t0 + wid.x * 16u;
    let tid = lid.y * 16u + lid.x;
    for (var e = tid; e < 512u; e += 256u) {
        let r = e / 32u;
        let q = e % 32u;
        var vi = 0.0;
        var vc = 0.0;
        if (q < nb && r0 + r < n) {
            vi = l[mb + (r0 + r) * n + kb + q];
        }
        if (q < nb && c0 + r < n) {
            vc = l[mb + (c0 + r) * n + kb + q];
        }
        ti[e] = vi;
        tc[e] = vc;
    }
    workgroupBarrier();
    let i = r0 + lid.y;
    let c = c0 + lid.x;
    if (i < n && c <= i) {
        var s = 0.0;
        for (var q = 0u; q < nb; q++) {
            s += ti[lid.y * 32u + q] * tc[lid.x * 32u + q];
        }
        l[mb + i * n + c] -= s;
    }
}

// Zeroes the strict upper triangle. p = [total, n]
@compute @workgroup_size(256)
fn zero_upper(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = linear_id(wid, nwg, lid);
    if (i >= p[0]) {
        return;
    }
    let n = p[1];
    if (i % n > (i / n) % n) {
        l[i] = 0.0;
    }
}

// Identity matrices into x. p = [total, n]
@compute @workgroup_size(256)
fn eye(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) lid: u32) {
    let i = linear_id(wid, nwg, lid);
    if (i >= p[0]) {
        return;
    }
    let n = p[1];
    x[i] = select(0.0, 1.0, i % n == (i / n) % n);
}

// Solves L L^T X = B in place of B (n x nrhs per matrix), one thread per
// right-hand-side column. p = [n, nrhs, batch, rhs_is_identity]
@compute @workgroup_size(256)
fn tri_solve(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let t = linear_id(wid, nwg, lid);
    let n = p[0];
    let nrhs = p[1];
    if (t >= nrhs * p[2]) {
        return;
    }
    let bi = t / nrhs;
    let col = t % nrhs;
    let lb = bi * n * n;
    let xb = bi * n * nrhs + col;
    // Column `col` of the identity is zero above row `col`, and so is its forward solution.
    let first = select(0u, col, p[3] != 0u);
    for (var i = first; i < n; i++) {
        var s = x[xb + i * nrhs];
        for (var q = first; q < i; q++) {
            s -= l[lb + i * n + q] * x[xb + q * nrhs];
        }
        x[xb + i * nrhs] = s / l[lb + i * n + i];
    }
    for (var ii = 0u; ii < n; ii++) {
        let i = n - 1u - ii;
        var s = x[xb + i * nrhs];
        for (var q = i + 1u; q < n; q++) {
            s -= l[lb + q * n + i] * x[xb + q * nrhs];
        }
        x[xb + i * nrhs] = s / l[lb + i * n + i];
    }
}

// log det = 2 sum log L_ii, one thread per matrix. p = [n, batch]
@compute @workgroup_size(256)
fn logdet(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let bi = linear_id(wid, nwg, lid);
    if (bi >= p[1]) {
        return;
    }
    let n = p[0];
    var s = 0.0;
    for (var i = 0u; i < n; i++) {
        s += log(l[bi * n * n + i * n + i]);
    }
    out[bi] = 2.0 * s;
}
