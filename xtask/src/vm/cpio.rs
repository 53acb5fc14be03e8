//! A writer of the "new ASCII" (`newc`) cpio format, the only one the
//! kernel unpacks as an initramfs (`Documentation/driver-api/early-userspace/
//! buffer-format.rst`), uncompressed.
//!
//! Written here rather than by `cpio` so that trees are merged, filtered and
//! owned by root without a staging copy or a shell pipeline. When a path
//! comes twice, the kernel keeps the later entry, so the guest's files can
//! be laid over the packages' ones.

use std::{
    fs::{self, File},
    io::{self, BufWriter, Write},
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::Path,
};

use anyhow::{Context as _, Result, bail};

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;

pub struct Writer {
    out: BufWriter<File>,
    ino: u32,
}

impl Writer {
    pub fn create(path: &Path) -> Result<Writer> {
        let file =
            File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Writer {
            out: BufWriter::with_capacity(1 << 20, file),
            ino: 0,
        })
    }

    /// A directory, and its parents first (the kernel creates no missing
    /// parent).
    pub fn dir(&mut self, path: &str) -> Result<()> {
        let mut at = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if !at.is_empty() {
                at.push('/');
            }
            at.push_str(part);
            self.entry(&at, S_IFDIR | 0o755, &[])?;
        }
        Ok(())
    }

    /// A file with these contents and permission bits.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<()> {
        self.entry(path, S_IFREG | (mode & 0o7777), data)
    }

    /// A symbolic link to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        self.entry(path, S_IFLNK | 0o777, target.as_bytes())
    }

    /// `src`, a directory, as `dest` and everything under it, except the
    /// paths (relative to `src`) for which `skip` is true. Owners become
    /// root; devices, sockets and fifos are left out (devtmpfs has them).
    pub fn tree(&mut self, src: &Path, dest: &str, skip: &dyn Fn(&Path) -> bool) -> Result<()> {
        self.dir(dest)?;
        self.walk(src, Path::new(""), dest, skip)
    }

    fn walk(
        &mut self,
        base: &Path,
        rel: &Path,
        dest: &str,
        skip: &dyn Fn(&Path) -> bool,
    ) -> Result<()> {
        let dir = base.join(rel);
        let mut entries: Vec<_> = fs::read_dir(&dir)
            .with_context(|| format!("cannot list {}", dir.display()))?
            .collect::<io::Result<_>>()
            .with_context(|| format!("cannot list {}", dir.display()))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let rel = rel.join(entry.file_name());
            if skip(&rel) {
                continue;
            }
            let path = base.join(&rel);
            let name = join(dest, &rel);
            let meta = fs::symlink_metadata(&path)
                .with_context(|| format!("cannot stat {}", path.display()))?;
            let perm = meta.permissions().mode() & 0o7777;
            let kind = meta.file_type();
            if kind.is_dir() {
                self.entry(&name, S_IFDIR | perm, &[])?;
                self.walk(base, &rel, dest, skip)?;
            } else if kind.is_symlink() {
                let target = fs::read_link(&path)
                    .with_context(|| format!("cannot read link {}", path.display()))?;
                self.entry(
                    &name,
                    S_IFLNK | 0o777,
                    target.as_os_str().as_encoded_bytes(),
                )?;
            } else if kind.is_file() {
                let data =
                    fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
                if data.len() as u64 != meta.size() {
                    bail!("{} changed while being read", path.display());
                }
                self.entry(&name, S_IFREG | perm, &data)?;
            }
        }
        Ok(())
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) -> Result<()> {
        self.ino += 1;
        let header = header(self.ino, mode, name, data.len())?;
        self.out
            .write_all(&header)
            .context("cannot write the initramfs")?;
        self.out
            .write_all(data)
            .context("cannot write the initramfs")?;
        self.out
            .write_all(&[0; 3][..pad(data.len())])
            .context("cannot write the initramfs")
    }

    /// The trailer, then flushes.
    pub fn finish(mut self) -> Result<()> {
        let trailer = header(0, 0, "TRAILER!!!", 0)?;
        self.out
            .write_all(&trailer)
            .context("cannot write the initramfs")?;
        self.out.flush().context("cannot write the initramfs")
    }
}

fn join(dest: &str, rel: &Path) -> String {
    let rel = rel.to_string_lossy();
    let dest = dest.trim_matches('/');
    if dest.is_empty() {
        rel.into_owned()
    } else {
        format!("{dest}/{rel}")
    }
}

/// Bytes that bring `len` to a multiple of 4.
fn pad(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// A `newc` header and the NUL-terminated name, padded to 4 bytes; owner
/// root, one link, time 0 (the archive is the same for the same files).
fn header(ino: u32, mode: u32, name: &str, size: usize) -> Result<Vec<u8>> {
    let Ok(size) = u32::try_from(size) else {
        bail!("{name}: {size} bytes are too many for cpio");
    };
    let namesize = name.len() + 1;
    let fields = [ino, mode, 0, 0, 1, 0, size, 0, 0, 0, 0, namesize as u32, 0];
    let mut h = String::from("070701");
    for f in fields {
        h.push_str(&format!("{f:08x}"));
    }
    let mut bytes = h.into_bytes();
    bytes.extend_from_slice(name.as_bytes());
    bytes.push(0);
    bytes.resize(bytes.len() + pad(bytes.len()), 0);
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields_and_padding() {
        let h = header(7, S_IFREG | 0o644, "init", 5).expect("header");
        let text = String::from_utf8_lossy(&h);
        assert!(text.starts_with("070701"));
        // ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor,
        // rdevmajor, rdevminor, namesize, check.
        assert_eq!(&text[6..14], "00000007");
        assert_eq!(&text[14..22], "000081a4");
        assert_eq!(&text[38..46], "00000001");
        assert_eq!(&text[54..62], "00000005");
        assert_eq!(&text[94..102], "00000005");
        // 110 bytes of header, "init\0", padded to 116.
        assert_eq!(h.len(), 116);
        assert_eq!(&h[110..115], b"init\0");
    }

    #[test]
    fn names_join_under_the_destination() {
        assert_eq!(join("/", Path::new("bin/sh")), "bin/sh");
        assert_eq!(
            join("lib/modules/6.1.0-1", Path::new("modules.dep")),
            "lib/modules/6.1.0-1/modules.dep"
        );
    }

    #[test]
    fn data_pads_to_four() {
        assert_eq!([pad(0), pad(1), pad(2), pad(3), pad(4)], [0, 3, 2, 1, 0]);
    }
}
