// Batched matrix product C = op(A) op(B): one thread per output for tiny matrices, and workgroup-memory tiles of 16x16 (one output per thread) or 64x64 (4x4 outputs per thread).

@group(0) @binding(0) var<storage, read> p: array<u32>;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

// p = [m, k, n, trans_a, trans_b, a_batch_stride, b_batch_stride, batch_offset, batch]

// op(A)[i, q]
fn load_a(base: u32, i: u32, q: u32) -> f32 {
    let m = p[0];
    let k = p[1];
    if (i >= m || q >= k) {
        return 0.0;
    }
    if (p[3] != 0u) {
        return a[base + q * m + i];
    }
    return a[base + i * k + q];
}

// op(B)[q, j]
fn load_b(base: u32, q: u32, j: u32) -> f32 {
    let k = p[1];
    let n = p[2];
    if (q >= k || j >= n) {
        return 0.0;
    }
    if (p[4] != 0u) {
        return b[base + j * k + q];
    }
    return b[base + q * n + j];
}

var<workgroup> sa: array<f32, 256>;
var<workgroup> sb: array<f32, 256>;

@compute @workgroup_size(16, 16)
fn mm_small(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let m = p[0];
    let k = p[1];
    let n = p[2];
    let bi = wid.z + p[7];
    let abase = bi * p[5];
    let bbase = bi * p[6];
    let row0 = wid.y * 16u;
    let col0 = wid.x * 16u;
    var acc = 0.0;
    for (var k0 = 0u; k0 < k; k0 += 16u) {
        // Tiles stored [q][i] and [q][j]; the thread-to-element map follows the memory order.
        if (p[3] != 0u) {
            sa[lid.y * 16u + lid.x] = load_a(abase, row0 + lid.x, k0 + lid.y);
        } else {
            sa[lid.x * 16u + lid.y] = load_a(abase, row0 + lid.y, k0 + lid.x);
        }
        if (p[4] != 0u) {
            sb[lid.x * 16u + lid.y] = load_b(bbase, k0 + lid.x, col0 + lid.y);
        } else {
            sb[lid.y * 16u + lid.x] = load_b(bbase, k0 + lid.y, col0 + lid.x);
        }
        workgroupBarrier();
        for (var q = 0u; q < 16u; q++) {
            acc += sa[q * 16u + lid.y] * sb[q * 16u + lid.x];
        }
        workgroupBarrier();
    }
    let row = row0 + lid.y;
    let col = col0 + lid.x;
    if (row < m && col < n) {
        c[bi * m * n + row * n + col] = acc;
    }
}

var<workgroup> la: array<f32, 1024>;
var<workgroup> lb: array<f32, 1024>;

@compute @workgroup_size(16, 16)
fn mm_large(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let m = p[0];
    let k = p[1];
    let n = p[2];
    let bi = wid.z + p[7];
    let abase = bi * p[5];
    let bbase = bi * p[6];
    let row0 = wid.y * 64u;
    let col0 = wid.x * 64u;
    let tid = lid.y * 16u + lid.x;
    // Row r of this thread's 4x4 block (rows lid.y + 16 r, columns lid.x + 16 c) in acc_r.
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < k; k0 += 16u) {
        for (var r = 0u; r < 4u; r++) {
            let e = tid + r * 256u;
            if (p[3] != 0u) {
                let i = e % 64u;
                let q = e / 64u;
                la[q * 64u + i] = load_a(abase, row0 + i, k0 + q);
            } else {
                let i = e / 16u;
                let q = e % 16u;
                la[q * 64u + i] = load_a(abase, row0 + i, k0 + q);
            }
            if (p[4] != 0u) {
                let j = e / 16u;
                let q = e % 16u;
                lb[q * 64u + j] = load_b(bbase, k0 + q, col0 + j);
            } else {
                let j = e % 64u;
                let q = e / 64u;
                lb[q * 64u + j] = load_b(bbase, k0 + q, col0 + j);
            }
        }
        workgroupBarrier();
        for (var q = 0u; q < 16u; q++) {
            let bv = vec4<f32>(lb[q * 64u + lid.x], lb[q * 64u + lid.x + 16u], lb[q * 64u + lid.x + 32u],
                               lb[q * 64u + lid.x + 48u]);
            acc0 += la[q * 64u + lid.y] * bv;
            acc1 += la[q * 64u + lid.y + 16u] * bv;
            acc2 += la[q * 64u + lid.y + 32u] * bv;
            acc3 += la[q * 64u + lid.y + 48u] * bv;
        }
        workgroupBarrier();
    }
    let out = bi * m * n;
    store_row(out, row0 + lid.y, col0 + lid.x, acc0);
    store_row(out, row0 + lid.y + 16u, col0 + lid.x, acc1);
    store_row(out, row0 + lid.y + 32u, col0 + lid.x, acc2);
    store_row(out, row0 + lid.y + 48u, col0 + lid.x, acc3);
}

// Writes v.x, v.y, v.z, v.w to columns col, col + 16, col + 32, col + 48 of a row of C.
fn store_row(base: u32, row: u32, col: u32, v: vec4<f32>) {
    let m = p[0];
    let n = p[2];
    if (row >= m) {
        return;
    }
    let o = base + row * n;
    if (col < n) {
        c[o + col] = v.x;
    }
    if (col + 16u < n) {
        c[o + col + 16u] = v.y;
    }
    if (col + 32u < n) {
        c[o + col + 32u] = v.z;
    }
    if (col + 48u < n) {
        c[o + col + 48u] = v.w;
    }
}

// One thread per output of the whole batch, straight from global memory (tiny m, n).
// p as above; batch_offset is unused and the thread count is batch * m * n.
@compute @workgroup_size(256)
fn mm_thread(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let t = (wid.y * nwg.x + wid.x) * 256u + lid;
    let m = p[0];
    let k = p[1];
    let n = p[2];
    if (t >= p[8] * m * n) {
        return;
    }
    let bi = t / (m * n);
    let row = (t / n) % m;
    let col = t % n;
    let abase = bi * p[5];
    let bbase = bi * p[6];
    var acc = 0.0;
    for (var q = 0u; q < k; q++) {
        acc += load_a(abase, row, q) * load_b(bbase, q, col);
    }
    c[t] = acc;
}
