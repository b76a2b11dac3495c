// Layout kernels: permute, strided row copies (narrow, concat), index_select and index_add (gather by an inverse index, no atomics).

@group(0) @binding(0) var<storage, read> p: array<u32>;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read> idx: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

// p = [n, rank, 0, 0, out_shape[8], src_strides[8]]
@compute @workgroup_size(256)
fn permute(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = linear_id(wid, nwg, lid);
    if (i >= p[0]) {
        return;
    }
    let rank = p[1];
    var rem = i;
    var s = 0u;
    for (var d = 0u; d < rank; d++) {
        let ax = rank - 1u - d;
        let sz = p[4u + ax];
        s += (rem % sz) * p[12u + ax];
        rem = rem / sz;
    }
    out[i] = src[s];
}

// p = [n, row, src_stride, src_off, dst_stride, dst_off]: row o of `row` elements.
@compute @workgroup_size(256)
fn copy_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = linear_id(wid, nwg, lid);
    if (i >= p[0]) {
        return;
    }
    let o = i / p[1];
    let r = i % p[1];
    out[o * p[4] + p[5] + r] = src[o * p[2] + p[3] + r];
}

// p = [n, nidx, len, inner]
@compute @workgroup_size(256)
fn index_select(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = linear_id(wid, nwg, lid);
    if (i >= p[0]) {
        return;
    }
    let inner = p[3];
    let j = i % inner;
    let t = i / inner;
    let k = t % p[1];
    let o = t / p[1];
    out[i] = src[(o * p[2] + idx[k]) * inner + j];
}

// p = [n, len_out, len_in, inner]; idx = [offsets (len_out + 1), sources]: the
// sources of output slot r are idx[len_out + 1 + e] for e in idx[r]..idx[r + 1].
@compute @workgroup_size(256)
fn index_add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = linear_id(wid, nwg, lid);
    if (i >= p[0]) {
        return;
    }
    let len_out = p[1];
    let inner = p[3];
    let j = i % inner;
    let t = i / inner;
    let r = t % len_out;
    let o = t / len_out;
    var s = 0.0;
    for (var e = idx[r]; e < idx[r + 1u]; e++) {
        s += src[(o * p[2] + idx[len_out + 1u + e]) * inner + j];
    }
    out[i] = s;
}
