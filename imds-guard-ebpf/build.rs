//! Rebuild when the linker changes: the object depends on bpf-linker too.
fn main() {
    println!("cargo:rerun-if-env-changed=CARGO_CFG_BPF_TARGET_ARCH");
}
