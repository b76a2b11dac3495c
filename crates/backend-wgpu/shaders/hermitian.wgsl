// Complex Hermitian positive definite Cholesky (A = L L^H) per matrix, solves with L and L^H, and log-determinants; planes re/im separate.

@group(0) @binding(0) var<storage, read> p: array<u32>;
@group(0) @binding(1) var<storage, read_write> lre: array<f32>;
@group(0) @binding(2) var<storage, read_write> lim: array<f32>;
@group(0) @binding(3) var<storage, read_write> xre: array<f32>;
@group(0) @binding(4) var<storage, read_write> xim: array<f32>;
@group(0) @binding(5) var<storage, read_write> status: array<u32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;

var<workgroup> piv: f32;

// Right-looking factorisation in place (lower triangle read), one workgroup of
// 64 threads per matrix. p = [n, batch]; status as in cholesky.wgsl.
@compute @workgroup_size(64)
fn herm_factor(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let bi = wid.y * nwg.x + wid.x;
    if (bi >= p[1]) {
        return;
    }
    let n = p[0];
    let mb = bi * n * n;
    for (var j = 0u; j < n; j++) {
        if (lid == 0u) {
            var d = lre[mb + j * n + j];
            if (!(d > 0.0) || !finite(d)) {
                if (status[2u * bi] == 0u) {
                    status[2u * bi] = j + 1u;
                    status[2u * bi + 1u] = bitcast<u32>(d);
                }
                d = 1.0;
            }
            d = sqrt(d);
            lre[mb + j * n + j] = d;
            lim[mb + j * n + j] = 0.0;
            piv = d;
        }
        let d = workgroupUniformLoad(&piv);
        for (var i = j + 1u + lid; i < n; i += 64u) {
            lre[mb + i * n + j] = lre[mb + i * n + j] / d;
            lim[mb + i * n + j] = lim[mb + i * n + j] / d;
        }
        storageBarrier();
        for (var i = j + 1u + lid; i < n; i += 64u) {
            let ar = lre[mb + i * n + j];
            let ai = lim[mb + i * n + j];
            for (var c = j + 1u; c <= i; c++) {
                // A[i][c] -= L[i][j] conj(L[c][j])
                let br = lre[mb + c * n + j];
                let bim = lim[mb + c * n + j];
                lre[mb + i * n + c] -= ar * br + ai * bim;
                lim[mb + i * n + c] -= ai * br - ar * bim;
            }
        }
        storageBarrier();
    }
}

// Whole factorisation of one small matrix per thread (no barriers). p = [n, batch]
@compute @workgroup_size(256)
fn herm_factor_thread(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let bi = linear_id(wid, nwg, lid);
    if (bi >= p[1]) {
        return;
    }
    let n = p[0];
    let mb = bi * n * n;
    for (var j = 0u; j < n; j++) {
        var d = lre[mb + j * n + j];
        if (!(d > 0.0) || !finite(d)) {
            if (status[2u * bi] == 0u) {
                status[2u * bi] = j + 1u;
                status[2u * bi + 1u] = bitcast<u32>(d);
            }
            d = 1.0;
        }
        d = sqrt(d);
        lre[mb + j * n + j] = d;
        lim[mb + j * n + j] = 0.0;
        for (var i = j + 1u; i < n; i++) {
            lre[mb + i * n + j] = lre[mb + i * n + j] / d;
            lim[mb + i * n + j] = lim[mb + i * n + j] / d;
        }
        for (var i = j + 1u; i < n; i++) {
            let ar = lre[mb + i * n + j];
            let ai = lim[mb + i * n + j];
            for (var c = j + 1u; c <= i; c++) {
                let br = lre[mb + c * n + j];
                let bim = lim[mb + c * n + j];
                lre[mb + i * n + c] -= ar * br + ai * bim;
                lim[mb + i * n + c] -= ai * br - ar * bim;
            }
        }
    }
}

// Identity into x (re) and zeros (im). p = [total, n]
@compute @workgroup_size(256)
fn herm_eye(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = linear_id(wid, nwg, lid);
    if (i >= p[0]) {
        return;
    }
    let n = p[1];
    xre[i] = select(0.0, 1.0, i % n == (i / n) % n);
    xim[i] = 0.0;
}

// Solves L L^H X = B in place, one thread per right-hand-side column.
// p = [n, nrhs, batch, rhs_is_identity]
@compute @workgroup_size(256)
fn herm_solve(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
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
    let first = select(0u, col, p[3] != 0u);
    for (var i = first; i < n; i++) {
        var sr = xre[xb + i * nrhs];
        var si = xim[xb + i * nrhs];
        for (var q = first; q < i; q++) {
            let ar = lre[lb + i * n + q];
            let ai = lim[lb + i * n + q];
            let br = xre[xb + q * nrhs];
            let bim = xim[xb + q * nrhs];
            sr -= ar * br - ai * bim;
            si -= ar * bim + ai * br;
        }
        let d = lre[lb + i * n + i];
        xre[xb + i * nrhs] = sr / d;
        xim[xb + i * nrhs] = si / d;
    }
    for (var ii = 0u; ii < n; ii++) {
        let i = n - 1u - ii;
        var sr = xre[xb + i * nrhs];
        var si = xim[xb + i * nrhs];
        for (var q = i + 1u; q < n; q++) {
            // conj(L[q][i]) x_q
            let ar = lre[lb + q * n + i];
            let ai = -lim[lb + q * n + i];
            let br = xre[xb + q * nrhs];
            let bim = xim[xb + q * nrhs];
            sr -= ar * br - ai * bim;
            si -= ar * bim + ai * br;
        }
        let d = lre[lb + i * n + i];
        xre[xb + i * nrhs] = sr / d;
        xim[xb + i * nrhs] = si / d;
    }
}

// log det = 2 sum log Re L_ii. p = [n, batch]
@compute @workgroup_size(256)
fn herm_logdet(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let bi = linear_id(wid, nwg, lid);
    if (bi >= p[1]) {
        return;
    }
    let n = p[0];
    var s = 0.0;
    for (var i = 0u; i < n; i++) {
        s += log(lre[bi * n * n + i * n + i]);
    }
    out[bi] = 2.0 * s;
}
