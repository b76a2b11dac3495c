//! Adapter selection: `RATE_WGPU_ADAPTER` picks by name, and naming no adapter (or having none) is a clear `Error::Backend`, never a panic (own process: it sets variables).

use backend_wgpu::{WgpuBackend, ADAPTER_ENV};
use rate_core::{Backend, Error};
use std::io::Write;

#[test]
fn unknown_adapter_name_is_a_backend_error_and_a_known_one_is_chosen() {
    // Which adapter the default choice is (if any), before the variable is set.
    let default = WgpuBackend::new();
    // SAFETY of the test: this file holds one test, so no other thread reads the environment meanwhile.
    std::env::set_var(ADAPTER_ENV, "no-such-adapter-xyz");
    match WgpuBackend::new() {
        Err(Error::Backend { backend, message }) => {
            assert_eq!(backend, "wgpu");
            assert!(message.contains("no-such-adapter-xyz") && message.contains(ADAPTER_ENV), "{message}");
        }
        Err(other) => panic!("expected Error::Backend, got {other}"),
        Ok(b) => panic!("expected no adapter to match, got {}", b.name()),
    }
    match default {
        Ok(b) => {
            // Selecting the default adapter by a piece of its name finds it again.
            let name = b.adapter_name().to_string();
            let piece: String = name.chars().take(6).collect::<String>().to_uppercase();
            std::env::set_var(ADAPTER_ENV, &piece);
            let again = WgpuBackend::new().expect("adapter chosen by name");
            assert!(again.adapter_name().to_uppercase().contains(&piece));
            assert!(
                again.name().contains(again.adapter_name()),
                "name() names the adapter: {}",
                again.name()
            );
        }
        Err(e) => {
            if std::env::var("RATE_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("RATE_REQUIRE_GPU=1 but no wgpu adapter could be opened: {e}");
            }
            let _ = writeln!(std::io::stderr(), "no wgpu adapter found: skipped ({e})");
        }
    }
    std::env::remove_var(ADAPTER_ENV);

    // No adapter at all (Metal only, on Linux): an error that says what was looked for.
    #[cfg(target_os = "linux")]
    {
        std::env::set_var("WGPU_BACKEND", "metal");
        match WgpuBackend::new() {
            Err(Error::Backend { message, .. }) => {
                assert!(message.contains("no wgpu adapter found") && message.contains("Vulkan"), "{message}")
            }
            Err(other) => panic!("expected Error::Backend, got {other}"),
            Ok(b) => panic!("expected no adapter with WGPU_BACKEND=metal on Linux, got {}", b.name()),
        }
        std::env::remove_var("WGPU_BACKEND");
    }
}
