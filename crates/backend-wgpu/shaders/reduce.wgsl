// Reductions (sum, max, min, argmax) and softmax along one axis of an [outer, len, inner] view: one thread or one workgroup per output line.

@group(0) @binding(0) var<storage, read> p: array<u32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

var<workgroup> sv: array<f32, 256>;
var<workgroup> si: array<u32, 256>;

const EMPTY: u32 = 0xffffffffu;

// `v` (at `vi`) beats `best` (at `bi`) for op 1 (max), 2 (min), 3 (argmax); earlier index wins ties.
fn beats(op: u32, v: f32, vi: u32, best: f32, bi: u32) -> bool {
    if (vi == EMPTY) {
        return false;
    }
    if (bi == EMPTY) {
        return true;
    }
    if (op == 2u) {
        return v < best || (v == best && vi < bi);
    }
    return v > best || (v == best && vi < bi);
}

// p = [outer, len, inner, op]; one thread per output (o, j).
@compute @workgroup_size(256)
fn reduce_thread(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let t = linear_id(wid, nwg, lid);
    let inner = p[2];
    if (t >= p[0] * inner) {
        return;
    }
    let len = p[1];
    let op = p[3];
    let base = (t / inner) * len * inner + t % inner;
    if (op == 0u) {
        var s = 0.0;
        for (var l = 0u; l < len; l++) {
            s += x[base + l * inner];
        }
        out[t] = s;
        return;
    }
    var best = x[base];
    var arg = 0u;
    for (var l = 1u; l < len; l++) {
        let v = x[base + l * inner];
        if ((op == 2u && v < best) || (op != 2u && v > best)) {
            best = v;
            arg = l;
        }
    }
    out[t] = select(best, f32(arg), op == 3u);
}

// Combines the per-thread partials in sv/si; the result is in sv[0]/si[0].
fn tree(op: u32, lid: u32) {
    for (var s = 128u; s > 0u; s = s >> 1u) {
        workgroupBarrier();
        if (lid < s) {
            if (op == 0u) {
                sv[lid] += sv[lid + s];
            } else if (beats(op, sv[lid + s], si[lid + s], sv[lid], si[lid])) {
                sv[lid] = sv[lid + s];
                si[lid] = si[lid + s];
            }
        }
    }
    workgroupBarrier();
}

// p = [outer, len, inner, op]; one workgroup per output (long axes).
@compute @workgroup_size(256)
fn reduce_group(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let t = wid.y * nwg.x + wid.x;
    let inner = p[2];
    if (t >= p[0] * inner) {
        return;
    }
    let len = p[1];
    let op = p[3];
    let base = (t / inner) * len * inner + t % inner;
    var acc = 0.0;
    var ai = EMPTY;
    for (var l = lid; l < len; l += 256u) {
        let v = x[base + l * inner];
        if (op == 0u) {
            acc += v;
        } else if (beats(op, v, l, acc, ai)) {
            acc = v;
            ai = l;
        }
    }
    sv[lid] = acc;
    si[lid] = ai;
    tree(op, lid);
    if (lid == 0u) {
        out[t] = select(sv[0], f32(si[0]), op == 3u);
    }
}

// p = [outer, len, inner]; one thread per line.
@compute @workgroup_size(256)
fn softmax_thread(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let t = linear_id(wid, nwg, lid);
    let inner = p[2];
    if (t >= p[0] * inner) {
        return;
    }
    let len = p[1];
    let base = (t / inner) * len * inner + t % inner;
    var mx = x[base];
    for (var l = 1u; l < len; l++) {
        mx = max(mx, x[base + l * inner]);
    }
    var s = 0.0;
    for (var l = 0u; l < len; l++) {
        let e = exp(x[base + l * inner] - mx);
        out[base + l * inner] = e;
        s += e;
    }
    let r = 1.0 / s;
    for (var l = 0u; l < len; l++) {
        out[base + l * inner] *= r;
    }
}

// p = [outer, len, inner]; one workgroup per line (long axes).
@compute @workgroup_size(256)
fn softmax_group(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let t = wid.y * nwg.x + wid.x;
    let inner = p[2];
    if (t >= p[0] * inner) {
        return;
    }
    let len = p[1];
    let base = (t / inner) * len * inner + t % inner;
    var acc = 0.0;
    var ai = EMPTY;
    for (var l = lid; l < len; l += 256u) {
        let v = x[base + l * inner];
        if (beats(1u, v, l, acc, ai)) {
            acc = v;
            ai = l;
        }
    }
    sv[lid] = acc;
    si[lid] = ai;
    tree(1u, lid);
    let mx = sv[0];
    workgroupBarrier();
    var s = 0.0;
    for (var l = lid; l < len; l += 256u) {
        let e = exp(x[base + l * inner] - mx);
        out[base + l * inner] = e;
        s += e;
    }
    sv[lid] = s;
    tree(0u, lid);
    let r = 1.0 / sv[0];
    for (var l = lid; l < len; l += 256u) {
        out[base + l * inner] *= r;
    }
}
