// Elementwise kernels: unary ops with one scalar parameter, fill, and binary ops with broadcasting strides.

@group(0) @binding(0) var<storage, read> p: array<u32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

// p = [n, op, c bits]
@compute @workgroup_size(256)
fn unary(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = linear_id(wid, nwg, lid);
    if (i >= p[0]) {
        return;
    }
    let v = x[i];
    let c = bitcast<f32>(p[2]);
    var r = v;
    switch p[1] {
        case 0u: { r = -v; }
        case 1u: { r = exp(v); }
        case 2u: { r = log(v); }
        case 3u: { r = sqrt(v); }
        case 4u: { r = abs(v); }
        case 5u: { r = v * v; }
        case 6u: { r = 1.0 / v; }
        case 7u: { r = select(0.0, v, v > 0.0); }
        case 8u: { r = select(0.0, 1.0, v > 0.0); }
        case 9u: { r = select(select(0.0, v + c, v < -c), v - c, v > c); }
        case 10u: { r = v + c; }
        case 11u: { r = v * c; }
        case 12u: { r = select(v, c, v < c); }
        case 13u: { r = select(v, c, v > c); }
        case 14u: { let s = v + c; r = select(0.0, s, s > 0.0); }
        default: { r = v; }
    }
    out[i] = r;
}

// p = [n, value bits]
@compute @workgroup_size(256)
fn fill(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = linear_id(wid, nwg, lid);
    if (i >= p[0]) {
        return;
    }
    out[i] = bitcast<f32>(p[1]);
}

// p = [n, op, rank, 0, shape[8], a_strides[8], b_strides[8]]
@compute @workgroup_size(256)
fn binary(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = linear_id(wid, nwg, lid);
    if (i >= p[0]) {
        return;
    }
    let rank = p[2];
    var rem = i;
    var ia = 0u;
    var ib = 0u;
    for (var d = 0u; d < rank; d++) {
        let ax = rank - 1u - d;
        let s = p[4u + ax];
        let q = rem % s;
        rem = rem / s;
        ia += q * p[12u + ax];
        ib += q * p[20u + ax];
    }
    let a = x[ia];
    let b = y[ib];
    var r = a;
    switch p[1] {
        case 0u: { r = a + b; }
        case 1u: { r = a - b; }
        case 2u: { r = a * b; }
        case 3u: { r = a / b; }
        case 4u: { r = select(b, a, a >= b); }
        case 5u: { r = select(b, a, a <= b); }
        case 6u: { r = select(0.0, a, b > 0.0); }
        default: { r = a; }
    }
    out[i] = r;
}
