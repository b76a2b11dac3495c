// Helpers shared by every kernel module (prepended to each shader source by kernels.rs).

// The flat index of invocation `lid` of workgroup `wid` in a grid of `nwg`
// workgroups of 256 invocations (the 2-D grid that lifts the 65535 limit).
fn linear_id(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * 256u + lid;
}

// Not NaN and not an infinity.
fn finite(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7f800000u) != 0x7f800000u;
}

