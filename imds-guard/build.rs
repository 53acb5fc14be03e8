//! Builds the eBPF programs in `imds-guard-ebpf` twice and leaves the
//! objects in `OUT_DIR`, where `src/kernel/loader.rs` embeds both:
//! `imds-guard` with `bpf_loop` (Linux 5.17), `imds-guard-unrolled` with
//! the crate's `unrolled` feature, for kernels without it.
//!
//! Two routes, chosen by what the machine has (and said in a build warning):
//! - `nightly` with `rust-src`: the usual aya route, `-Z build-std=core`;
//! - `bpf-debian`: Debian's rustc with its prebuilt `core` for
//!   `bpfel-unknown-none` (see `../shared/EBPF-TOOLCHAIN.md` and
//!   `cargo xtask setup`). That compiler is stable, so the crates that use
//!   `#![feature]` are named in `RUSTC_BOOTSTRAP`; naming them (rather than
//!   `1`) also keeps aya-build from asking for `build-std`.
//!
//! `IMDS_GUARD_EBPF_TOOLCHAIN=nightly|bpf-debian` forces a route.
//! `AYA_BUILD_SKIP=1` skips the eBPF build (for editors and quick checks);
//! the binary then refuses to load with a message that says so.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, anyhow, bail};
use aya_build::{Package, Toolchain};

const EBPF_CRATE: &str = "imds-guard-ebpf";
const OBJECT: &str = "imds-guard";
/// The object of the `unrolled` build.
const UNROLLED_OBJECT: &str = "imds-guard-unrolled";
/// The crates of the eBPF build that use `#![feature]`.
const BOOTSTRAP_CRATES: &str =
    "aya_ebpf,aya_ebpf_bindings,aya_ebpf_cty,aya_log_ebpf,aya_log_common,imds_guard_ebpf";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=IMDS_GUARD_EBPF_TOOLCHAIN");
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let object = out_dir.join(OBJECT);

    if env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v == "true") {
        println!("cargo:warning=AYA_BUILD_SKIP is set: building without eBPF programs");
        fs::write(&object, b"").context("writing the empty eBPF placeholder")?;
        fs::write(out_dir.join(UNROLLED_OBJECT), b"")
            .context("writing the empty eBPF placeholder")?;
        return Ok(());
    }

    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("no manifest dir")?);
    let root_dir = manifest_dir
        .parent()
        .context("imds-guard has no parent directory")?
        .join(EBPF_CRATE);
    let root_dir = root_dir
        .to_str()
        .context("non UTF-8 path to the eBPF crate")?;
    println!("cargo:rerun-if-changed=../imds-guard-common/src");

    let route = choose_route()?;
    let toolchain = match route {
        Route::Nightly => {
            println!("cargo:warning=eBPF build: rustup nightly with rust-src (-Z build-std=core)");
            // SAFETY: build scripts are single-threaded here; the variable is
            // only read by the child cargo that aya-build spawns.
            unsafe { env::remove_var("RUSTC_BOOTSTRAP") };
            "nightly"
        }
        Route::Debian => {
            println!(
                "cargo:warning=eBPF build: Debian rustc (toolchain bpf-debian) with its prebuilt core"
            );
            // SAFETY: as above.
            unsafe { env::set_var("RUSTC_BOOTSTRAP", BOOTSTRAP_CRATES) };
            "bpf-debian"
        }
    };
    // Each build leaves its object under the same name: the unrolled one
    // first, renamed, then the default one where it lands.
    for (features, name) in [(&["unrolled"][..], UNROLLED_OBJECT), (&[][..], OBJECT)] {
        let _ = fs::remove_file(&object);
        aya_build::build_ebpf(
            [Package {
                name: EBPF_CRATE,
                root_dir,
                features,
                ..Default::default()
            }],
            Toolchain::Custom(toolchain),
        )
        .context("building the eBPF programs (run `cargo xtask setup` to install the toolchain)")?;
        if !object.exists() {
            bail!("the eBPF build did not produce {}", object.display());
        }
        if name != OBJECT {
            fs::rename(&object, out_dir.join(name))
                .with_context(|| format!("cannot rename {} to {name}", object.display()))?;
        }
    }
    Ok(())
}

enum Route {
    Nightly,
    Debian,
}

fn choose_route() -> anyhow::Result<Route> {
    match env::var("IMDS_GUARD_EBPF_TOOLCHAIN").ok().as_deref() {
        Some("nightly") => return Ok(Route::Nightly),
        Some("bpf-debian") => return Ok(Route::Debian),
        Some(other) => bail!("IMDS_GUARD_EBPF_TOOLCHAIN={other}: expected nightly or bpf-debian"),
        None => {}
    }
    if sysroot("nightly").is_some_and(|s| s.join("lib/rustlib/src/rust/library/core").is_dir()) {
        return Ok(Route::Nightly);
    }
    if sysroot("bpf-debian").is_some_and(|s| s.join("lib/rustlib/bpfel-unknown-none/lib").is_dir())
    {
        return Ok(Route::Debian);
    }
    Err(anyhow!(
        "no toolchain can build the eBPF programs: need rustup `nightly` with `rust-src`, \
         or the `bpf-debian` toolchain; `cargo xtask setup` installs the latter"
    ))
}

fn sysroot(toolchain: &str) -> Option<PathBuf> {
    let out = Command::new("rustup")
        .args(["run", toolchain, "rustc", "--print", "sysroot"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?;
    Some(Path::new(s.trim()).to_owned())
}
