//! Device context of the wgpu backend: adapter choice, pooled storage buffers, cached pipelines and command submission.
//!
//! Every backend operation records its dispatches into one [`Job`] (one
//! command encoder) and submits it at once without waiting; data comes back
//! to the host only through [`Ctx::read_bytes`] (downloads and the few status
//! words of a factorisation).

use rate_core::{Error, Result};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Environment variable selecting an adapter by a substring of its name.
pub const ADAPTER_ENV: &str = "RATE_WGPU_ADAPTER";

/// Threads per workgroup of the one-dimensional kernels.
pub const WG: usize = 256;

/// Largest number of workgroups along one dispatch dimension (WebGPU's guaranteed limit).
pub const MAX_GROUPS: usize = 65535;

/// Free buffers kept by the pool, in bytes; buffers freed beyond this are released.
const POOL_CAP_BYTES: u64 = 512 << 20;

/// Locks a mutex, ignoring poisoning (the guarded caches stay valid if a holder panicked).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Byte size class of a buffer holding `bytes`: at least 16, and at most 25% above `bytes`.
fn size_class(bytes: u64) -> u64 {
    let b = bytes.max(16);
    let top = 1u64 << (63 - b.leading_zeros());
    let step = (top / 4).max(16);
    b.div_ceil(step) * step
}

#[derive(Default)]
struct PoolState {
    free: HashMap<u64, Vec<wgpu::Buffer>>,
    bytes: u64,
}

/// Size-bucketed pool of storage buffers, shared by every buffer handle.
pub struct Pool {
    state: Mutex<PoolState>,
}

impl Pool {
    fn put(&self, buf: wgpu::Buffer) {
        let size = buf.size();
        let mut st = lock(&self.state);
        if st.bytes + size > POOL_CAP_BYTES {
            return; // dropped: wgpu frees it once no submitted work uses it
        }
        st.bytes += size;
        st.free.entry(size).or_default().push(buf);
    }

    fn take(&self, class: u64) -> Option<wgpu::Buffer> {
        let mut st = lock(&self.state);
        let buf = st.free.get_mut(&class)?.pop()?;
        st.bytes -= class;
        Some(buf)
    }
}

struct BufInner {
    buf: Option<wgpu::Buffer>,
    len: usize,
    pool: Arc<Pool>,
}

impl Drop for BufInner {
    fn drop(&mut self) {
        if let Some(b) = self.buf.take() {
            self.pool.put(b);
        }
    }
}

/// A device buffer of `len` 32-bit words (f32 values, or u32 for indices and
/// status flags); cheap to clone, returned to the pool when the last clone drops.
#[derive(Clone)]
pub struct Buf(Arc<BufInner>);

impl std::fmt::Debug for Buf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WgpuBuffer(len {})", self.0.len)
    }
}

impl Buf {
    /// Number of 32-bit elements.
    pub fn len(&self) -> usize {
        self.0.len
    }

    /// Whether the buffer holds no element.
    pub fn is_empty(&self) -> bool {
        self.0.len == 0
    }

    /// The wgpu buffer.
    pub fn raw(&self) -> &wgpu::Buffer {
        // The buffer is only taken out in `Drop`.
        match &self.0.buf {
            Some(b) => b,
            None => unreachable!("buffer used after drop"),
        }
    }

    /// Bytes bound to a shader: the logical length, at least 16.
    fn binding_size(&self) -> u64 {
        (self.0.len as u64 * 4).max(16)
    }
}

/// Access of one binding of a kernel.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Access {
    /// `var<storage, read>`
    Read,
    /// `var<storage, read_write>`
    ReadWrite,
}

/// A compute kernel: one entry point of a WGSL module and the access of its
/// bindings after binding 0 (binding 0 is always the read-only `array<u32>` of parameters).
#[derive(Debug)]
pub struct Kernel {
    /// Module name (for messages and the module cache).
    pub module: &'static str,
    /// WGSL source.
    pub source: &'static str,
    /// Entry point.
    pub entry: &'static str,
    /// Bindings 1.. and their access.
    pub bindings: &'static [Access],
    /// Number of u32 parameters the entry point reads from binding 0.
    pub params: usize,
}

struct Compiled {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
}

/// The device, its queue, and the caches around them.
pub struct Ctx {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pool: Arc<Pool>,
    modules: Mutex<HashMap<&'static str, wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<(&'static str, &'static str), Arc<Compiled>>>,
    /// Constant tables (twiddles, chirps, Bluestein spectra) by name and size.
    pub tables: Mutex<HashMap<(&'static str, usize), Buf>>,
    submits: AtomicUsize,
}

fn device_rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

impl Ctx {
    /// Opens the best adapter (discrete, integrated, virtual, other, then
    /// software), or the first whose name contains `$RATE_WGPU_ADAPTER`.
    pub fn open() -> Result<Ctx> {
        let err = |message: String| Error::Backend { backend: "wgpu".into(), message };
        let wanted = std::env::var(ADAPTER_ENV).ok().filter(|s| !s.trim().is_empty());
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.flags = wgpu::InstanceFlags::empty().with_env();
        desc.backends = wgpu::Backends::all().with_env();
        let instance = wgpu::Instance::new(desc);
        let mut adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
        let names: Vec<String> = adapters
            .iter()
            .map(|a| {
                let i = a.get_info();
                format!("{} ({:?}, {:?})", i.name, i.backend, i.device_type)
            })
            .collect();
        adapters.sort_by_key(|a| device_rank(a.get_info().device_type));
        let adapter = match &wanted {
            Some(w) => {
                let wl = w.to_lowercase();
                adapters.into_iter().find(|a| a.get_info().name.to_lowercase().contains(&wl)).ok_or_else(
                    || {
                        err(format!(
                            "no wgpu adapter whose name contains {w:?} (from ${ADAPTER_ENV}); adapters found: {}",
                            if names.is_empty() { "none".to_string() } else { names.join(", ") }
                        ))
                    },
                )?
            }
            None => adapters.into_iter().next().ok_or_else(|| {
                err("no wgpu adapter found: looked for Vulkan, Metal and DX12 adapters of any kind \
                     (discrete, integrated, virtual, software such as llvmpipe); on Linux install a \
                     Vulkan driver, e.g. Debian's mesa-vulkan-drivers"
                    .to_string())
            })?,
        };
        let info = adapter.get_info();
        let limits = adapter.limits();
        let dd = wgpu::DeviceDescriptor {
            label: Some("rate-core"),
            required_features: wgpu::Features::empty(),
            required_limits: limits.clone(),
            ..Default::default()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&dd))
            .map_err(|e| err(format!("adapter {}: device request failed: {e}", info.name)))?;
        Ok(Ctx {
            device,
            queue,
            info,
            limits,
            pool: Arc::new(Pool { state: Mutex::new(PoolState::default()) }),
            modules: Mutex::new(HashMap::new()),
            pipelines: Mutex::new(HashMap::new()),
            tables: Mutex::new(HashMap::new()),
            submits: AtomicUsize::new(0),
        })
    }

    /// A pooled buffer of `len` 32-bit words with undefined contents.
    pub fn alloc(&self, len: usize) -> Buf {
        let bytes = len as u64 * 4;
        let max_bind = self.limits.max_storage_buffer_binding_size;
        let max_buf = self.limits.max_buffer_size;
        if bytes > max_bind.min(max_buf) {
            panic!(
                "wgpu backend: a buffer of {len} f32 ({bytes} bytes) exceeds the adapter's limit of {} bytes \
                 per storage binding ({})",
                max_bind.min(max_buf),
                self.info.name
            );
        }
        let class = size_class(bytes).min(max_bind.min(max_buf)).max(16);
        let class = class.div_ceil(4) * 4;
        let buf = self.pool.take(class).unwrap_or_else(|| {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: class,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        });
        Buf(Arc::new(BufInner { buf: Some(buf), len, pool: self.pool.clone() }))
    }

    /// Uploads 32-bit words.
    pub fn upload_words<T: bytemuck::Pod>(&self, data: &[T]) -> Buf {
        debug_assert_eq!(std::mem::size_of::<T>(), 4);
        let b = self.alloc(data.len());
        if !data.is_empty() {
            self.queue.write_buffer(b.raw(), 0, bytemuck::cast_slice(data));
        }
        b
    }

    /// Copies the first `len` words of a buffer back to the host (blocks until
    /// every submitted job is done).
    pub fn read_bytes(&self, buf: &Buf, len: usize) -> Vec<u8> {
        let bytes = len as u64 * 4;
        if bytes == 0 {
            return Vec::new();
        }
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("download"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(buf.raw(), 0, &staging, 0, bytes);
        self.queue.submit([enc.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        if let Err(e) = self.device.poll(wgpu::PollType::wait_indefinitely()) {
            panic!("wgpu backend ({}): waiting for the device failed: {e}", self.info.name);
        }
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("wgpu backend ({}): mapping a download buffer failed: {e}", self.info.name),
            Err(_) => panic!("wgpu backend ({}): the download callback never ran", self.info.name),
        }
        let out = match staging.get_mapped_range(..) {
            Ok(view) => view.to_vec(),
            Err(e) => panic!("wgpu backend ({}): reading a mapped buffer failed: {e}", self.info.name),
        };
        staging.unmap();
        out
    }

    /// Downloads `len` f32 values.
    pub fn read_f32(&self, buf: &Buf, len: usize) -> Vec<f32> {
        self.read_bytes(buf, len)
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    /// Downloads `len` u32 values.
    pub fn read_u32(&self, buf: &Buf, len: usize) -> Vec<u32> {
        self.read_bytes(buf, len)
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    /// Blocks until every submitted job has finished.
    pub fn wait(&self) {
        if let Err(e) = self.device.poll(wgpu::PollType::wait_indefinitely()) {
            panic!("wgpu backend ({}): waiting for the device failed: {e}", self.info.name);
        }
    }

    fn compiled(&self, k: &'static Kernel) -> Arc<Compiled> {
        if let Some(c) = lock(&self.pipelines).get(&(k.module, k.entry)) {
            return c.clone();
        }
        let module = {
            let mut mods = lock(&self.modules);
            mods.entry(k.module)
                .or_insert_with(|| {
                    self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
                        label: Some(k.module),
                        source: wgpu::ShaderSource::Wgsl(k.source.into()),
                    })
                })
                .clone()
        };
        let mut entries = vec![storage_entry(0, true)];
        for (i, a) in k.bindings.iter().enumerate() {
            entries.push(storage_entry(i as u32 + 1, *a == Access::Read));
        }
        let layout = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: None, entries: &entries });
        let pl = self.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: None,
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(k.entry),
            layout: Some(&pl),
            module: &module,
            entry_point: Some(k.entry),
            compilation_options: Default::default(),
            cache: None,
        });
        let c = Arc::new(Compiled { pipeline, layout });
        lock(&self.pipelines).insert((k.module, k.entry), c.clone());
        c
    }

    /// A new job (command encoder).
    pub fn job(&self) -> Job<'_> {
        Job { ctx: self, enc: self.device.create_command_encoder(&Default::default()), keep: Vec::new() }
    }
}

fn storage_entry(binding: u32, read_only: bool) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }
}

/// The workgroup grid covering `groups` workgroups: `(x, y)` with `x <= 65535`
/// (kernels compute the linear group as `wid.y * num_workgroups.x + wid.x`).
pub fn grid(groups: usize) -> (u32, u32) {
    if groups <= MAX_GROUPS {
        (groups as u32, 1)
    } else {
        let y = groups.div_ceil(MAX_GROUPS);
        (groups.div_ceil(y) as u32, y as u32)
    }
}

/// The bits of an f32 parameter.
pub fn fbits(x: f64) -> u32 {
    (x as f32).to_bits()
}

/// One command encoder being filled with dispatches; [`Job::submit`] sends it.
pub struct Job<'a> {
    pub ctx: &'a Ctx,
    enc: wgpu::CommandEncoder,
    keep: Vec<Buf>,
}

impl Job<'_> {
    /// Dispatches `k` over a `groups` grid, with `params` at binding 0 and `bufs` at bindings 1...
    pub fn dispatch(&mut self, k: &'static Kernel, params: &[u32], bufs: &[&Buf], groups: [u32; 3]) {
        assert_eq!(bufs.len(), k.bindings.len(), "kernel {}: wrong number of buffers", k.entry);
        assert_eq!(params.len(), k.params, "kernel {}: wrong number of parameters", k.entry);
        if groups.contains(&0) {
            return;
        }
        let c = self.ctx.compiled(k);
        let p = self.ctx.upload_words(params);
        let mut all: Vec<&Buf> = Vec::with_capacity(bufs.len() + 1);
        all.push(&p);
        all.extend_from_slice(bufs);
        let entries: Vec<wgpu::BindGroupEntry> = all
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: b.raw(),
                    offset: 0,
                    size: wgpu::BufferSize::new(b.binding_size()),
                }),
            })
            .collect();
        let bg = self.ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &c.layout,
            entries: &entries,
        });
        {
            let mut pass = self.enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
            pass.set_pipeline(&c.pipeline);
            pass.set_bind_group(0, &bg, &[]);
            pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        }
        self.keep.push(p);
        for b in bufs {
            self.keep.push((*b).clone());
        }
    }

    /// Dispatches a one-dimensional kernel of `threads` threads (256 per workgroup).
    pub fn dispatch_1d(&mut self, k: &'static Kernel, params: &[u32], bufs: &[&Buf], threads: usize) {
        let (x, y) = grid(threads.div_ceil(WG));
        self.dispatch(k, params, bufs, [x, y, 1]);
    }

    /// Dispatches one workgroup per item (`items` workgroups on a 2-D grid).
    pub fn dispatch_groups(&mut self, k: &'static Kernel, params: &[u32], bufs: &[&Buf], items: usize) {
        let (x, y) = grid(items);
        self.dispatch(k, params, bufs, [x, y, 1]);
    }

    /// A scratch buffer for a binding a kernel does not use.
    pub fn dummy(&mut self) -> Buf {
        self.ctx.alloc(4)
    }

    /// Zeroes the first `len` words of `b`.
    pub fn clear(&mut self, b: &Buf, len: usize) {
        if len > 0 {
            self.enc.clear_buffer(b.raw(), 0, Some((len as u64 * 4).div_ceil(4) * 4));
        }
    }

    /// Copies `len` words from `src` to `dst`.
    pub fn copy(&mut self, src: &Buf, dst: &Buf, len: usize) {
        if len > 0 {
            self.enc.copy_buffer_to_buffer(src.raw(), 0, dst.raw(), 0, len as u64 * 4);
            self.keep.push(src.clone());
            self.keep.push(dst.clone());
        }
    }

    /// Submits the recorded work (no wait).
    pub fn submit(self) {
        let Job { ctx, enc, keep } = self;
        ctx.queue.submit([enc.finish()]);
        drop(keep);
        // Let wgpu retire finished submissions now and then when nothing reads back.
        if ctx.submits.fetch_add(1, Ordering::Relaxed) % 64 == 63 {
            let _ = ctx.device.poll(wgpu::PollType::Poll);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_classes_cover_and_bound_the_request() {
        for b in [0u64, 1, 15, 16, 17, 100, 1000, 4096, 4097, 1 << 20, (1 << 20) + 1, 123_456_789] {
            let c = size_class(b);
            assert!(c >= b.max(16), "{b} -> {c}");
            assert!(c <= (b.max(16) * 5).div_ceil(4) + 16, "{b} -> {c}");
        }
    }
}
