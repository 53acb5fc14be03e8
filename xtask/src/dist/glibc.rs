//! The glibc floor, proved from the binary rather than from the build
//! route: the dynamic loader refuses to start a program that needs a
//! symbol version (`GLIBC_2.34`) its glibc does not define, so the newest
//! `GLIBC_x.y` among the binary's version needs is the oldest glibc it runs
//! on. Parsed from `readelf` (binutils reads every CPU's ELF), and from
//! the `libc.so.6(GLIBC_x.y)` requirements rpmbuild derives from them.

use std::{collections::BTreeMap, fmt};

/// The oldest glibc the packages support: RHEL, Alma and Rocky 8 (2.28);
/// Debian 11 and Ubuntu 20.04 have 2.31, Amazon Linux 2023 2.34.
pub const FLOOR: &str = "2.28";

/// A numbered glibc symbol version, `GLIBC_2.3.4` as `[2, 3, 4]`, compared
/// number by number (`2.3.4` < `2.28`, which as text it is not).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(Vec<u32>);

impl Version {
    /// `2.28`.
    pub fn parse(number: &str) -> Option<Self> {
        number
            .split('.')
            .map(|n| n.parse().ok())
            .collect::<Option<Vec<u32>>>()
            .filter(|v| v.len() >= 2)
            .map(Self)
    }

    /// The floor the packages promise (`FLOOR` parses: a test says so).
    pub fn floor() -> Self {
        Self::parse(FLOOR).unwrap_or_else(|| Self(vec![2, 28]))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(u32::to_string).collect();
        write!(f, "{}", parts.join("."))
    }
}

/// What a version name means for the floor: `GLIBC_2.28` is numbered;
/// `GLIBC_PRIVATE` and markers such as `GLIBC_ABI_DT_RELR` (2.36) are
/// not, and no older glibc grants them.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    Numbered(Version),
    Unnumbered,
    NotGlibc,
}

fn kind(name: &str) -> Kind {
    match name.strip_prefix("GLIBC_") {
        None => Kind::NotGlibc,
        Some(rest) => Version::parse(rest).map_or(Kind::Unnumbered, Kind::Numbered),
    }
}

/// The glibc versions a binary needs, from one `readelf -W --dyn-syms -V`.
#[derive(Debug, Default)]
pub struct Needs {
    /// Undefined dynamic symbols with a `GLIBC_` version: (symbol, version).
    imports: Vec<(String, String)>,
    /// The version needs (`.gnu.version_r`): (library, version). The
    /// loader checks these, symbol or not.
    required: Vec<(String, String)>,
}

impl Needs {
    pub fn parse(readelf: &str) -> Self {
        let mut needs = Self::default();
        let mut in_needs = false;
        let mut file = String::new();
        for line in readelf.lines() {
            let trimmed = line.trim_start();
            if trimmed.starts_with("Version needs section") {
                in_needs = true;
                continue;
            }
            if trimmed.starts_with("Version ") || trimmed.starts_with("Symbol table") {
                in_needs = false;
            }
            if in_needs {
                // `000000: Version: 1  File: libc.so.6  Cnt: 14`, then
                // `0x0040:   Name: GLIBC_2.2.5  Flags: none  Version: 2`.
                if let Some(f) = field(trimmed, "File:") {
                    file = f.to_owned();
                } else if let Some(name) = field(trimmed, "Name:") {
                    needs.required.push((file.clone(), name.to_owned()));
                }
                continue;
            }
            // `84: 0000000000000000 0 FUNC WEAK DEFAULT UND statx@GLIBC_2.28 (5)`
            let cols: Vec<&str> = trimmed.split_whitespace().collect();
            if cols.len() < 8 || !cols[0].ends_with(':') || cols[6] != "UND" {
                continue;
            }
            if let Some((symbol, version)) = cols[7].split_once('@') {
                let version = version.trim_start_matches('@');
                if version.starts_with("GLIBC_") {
                    needs.imports.push((symbol.to_owned(), version.to_owned()));
                }
            }
        }
        needs
    }

    /// Whether readelf showed any glibc version at all (a glibc binary
    /// always needs some, if only for `__libc_start_main`).
    pub fn is_empty(&self) -> bool {
        self.imports.is_empty() && self.required.is_empty()
    }

    /// The newest numbered version needed, and the symbols that need it
    /// (none when only a version need names it).
    pub fn highest(&self) -> Option<(Version, Vec<&str>)> {
        let newest = self
            .required
            .iter()
            .map(|(_, v)| v)
            .chain(self.imports.iter().map(|(_, v)| v))
            .filter_map(|v| match kind(v) {
                Kind::Numbered(n) => Some(n),
                _ => None,
            })
            .max()?;
        let symbols = self
            .imports
            .iter()
            .filter(|(_, v)| kind(v) == Kind::Numbered(newest.clone()))
            .map(|(s, _)| s.as_str())
            .collect();
        Some((newest, symbols))
    }

    /// Why the binary would not start on glibc `floor`, one line per
    /// version, naming the symbols that need it; empty when it would.
    pub fn above(&self, floor: &Version) -> Vec<String> {
        let too_new = |v: &str| match kind(v) {
            Kind::Numbered(n) => n > *floor,
            Kind::Unnumbered => true,
            Kind::NotGlibc => false,
        };
        let mut by_version: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (symbol, version) in &self.imports {
            if too_new(version) {
                by_version.entry(version).or_default().push(symbol);
            }
        }
        for (file, version) in &self.required {
            if too_new(version) && !by_version.contains_key(version.as_str()) {
                by_version.entry(version).or_default().push(file);
            }
        }
        by_version
            .into_iter()
            .map(|(version, names)| {
                let why = match kind(version) {
                    Kind::Numbered(_) => format!("newer than the floor, glibc {floor}"),
                    _ => "which no other glibc build grants".to_owned(),
                };
                format!("{version} ({why}) is needed by {}", names.join(", "))
            })
            .collect()
    }
}

/// The text after `key` up to the next space.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let (_, rest) = line.split_once(key)?;
    rest.split_whitespace().next()
}

/// The glibc versions among rpm's requirements (`rpm -qp --requires`):
/// `libc.so.6(GLIBC_2.28)(64bit)` as (`libc.so.6`, `GLIBC_2.28`).
pub fn rpm_requires(requires: &str) -> Vec<(String, String)> {
    requires
        .lines()
        .filter_map(|l| {
            let (lib, rest) = l.trim().split_once('(')?;
            let (version, _) = rest.split_once(')')?;
            version
                .starts_with("GLIBC_")
                .then(|| (lib.to_owned(), version.to_owned()))
        })
        .collect()
}

/// Of rpm's glibc requirements, those newer than `floor` (or unnumbered).
pub fn rpm_requires_above(requires: &[(String, String)], floor: &Version) -> Vec<String> {
    requires
        .iter()
        .filter(|(_, v)| match kind(v) {
            Kind::Numbered(n) => n > *floor,
            Kind::Unnumbered => true,
            Kind::NotGlibc => false,
        })
        .map(|(lib, v)| format!("{lib}({v})"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Abridged `readelf -W --dyn-syms -V` of the x86_64 agent as the host
    /// linker built it against Debian 12's glibc 2.36.
    const HOST_LINKED: &str = "
Symbol table '.dynsym' contains 3 entries:
   Num:    Value          Size Type    Bind   Vis      Ndx Name
     0: 0000000000000000     0 NOTYPE  LOCAL  DEFAULT  UND 
     1: 0000000000000000     0 FUNC    GLOBAL DEFAULT  UND __libc_start_main@GLIBC_2.34 (2)
    65: 0000000000000000     0 FUNC    WEAK   DEFAULT  UND gettid@GLIBC_2.30 (13)
    80: 0000000000000000     0 FUNC    GLOBAL DEFAULT  UND pthread_join@GLIBC_2.34 (2)
    81: 0000000000000000     0 FUNC    GLOBAL DEFAULT  UND fstat64@GLIBC_2.33 (15)
    90: 0000000000000000     0 FUNC    GLOBAL DEFAULT  UND _Unwind_Resume@GCC_3.0 (4)
    91: 0000000000000000     0 FUNC    GLOBAL DEFAULT  UND memcpy@GLIBC_2.14 (7)
    99: 0000000000045f20    40 FUNC    GLOBAL DEFAULT   14 exported@@GLIBC_2.99

Version symbols section '.gnu.version' contains 3 entries:
 Addr: 0x0000000000000d9e  Offset: 0x00000d9e  Link: 7 (.dynsym)
  000:   0 (*local*)       2 (GLIBC_2.34)   13 (GLIBC_2.30)

Version needs section '.gnu.version_r' contains 2 entries:
 Addr: 0x0000000000000e4c  Offset: 0x00000e4c  Link: 8 (.dynstr)
  000000: Version: 1  File: libgcc_s.so.1  Cnt: 1
  0x0010:   Name: GCC_3.0  Flags: none  Version: 4
  0x0020: Version: 1  File: libc.so.6  Cnt: 4
  0x0030:   Name: GLIBC_2.14  Flags: none  Version: 7
  0x0040:   Name: GLIBC_2.33  Flags: none  Version: 15
  0x0050:   Name: GLIBC_2.30  Flags: none  Version: 13
  0x0060:   Name: GLIBC_2.34  Flags: none  Version: 2
";

    /// The same, as `cargo zigbuild --target ….2.28` links it.
    const ZIG_LINKED: &str = "
Symbol table '.dynsym' contains 4 entries:
   Num:    Value          Size Type    Bind   Vis      Ndx Name
     1: 0000000000000000     0 FUNC    GLOBAL DEFAULT  UND __libc_start_main@GLIBC_2.2.5 (2)
    37: 0000000000000000     0 FUNC    GLOBAL DEFAULT  UND clock_gettime@GLIBC_2.17 (7)
    85: 0000000000000000     0 FUNC    WEAK   DEFAULT  UND statx@GLIBC_2.28 (14)
    86: 0000000000000000     0 FUNC    WEAK   DEFAULT  UND getrandom@GLIBC_2.25 (15)
    87: 0000000000000000     0 FUNC    GLOBAL DEFAULT  UND memcpy@GLIBC_2.14 (3)

Version needs section '.gnu.version_r' contains 2 entries:
 Addr: 0x0000000000000e4c  Offset: 0x00000e4c  Link: 8 (.dynstr)
  000000: Version: 1  File: libc.so.6  Cnt: 5
  0x0040:   Name: GLIBC_2.2.5  Flags: none  Version: 2
  0x0050:   Name: GLIBC_2.14  Flags: none  Version: 3
  0x0060:   Name: GLIBC_2.17  Flags: none  Version: 7
  0x0070:   Name: GLIBC_2.28  Flags: none  Version: 14
  0x0080:   Name: GLIBC_2.25  Flags: none  Version: 15
  0x0010: Version: 1  File: ld-linux-x86-64.so.2  Cnt: 1
  0x0120:   Name: GLIBC_2.3  Flags: none  Version: 4
";

    fn v(s: &str) -> Version {
        Version::parse(s).expect(s)
    }

    #[test]
    fn versions_compare_number_by_number() {
        assert!(v("2.3.4") < v("2.28"));
        assert!(v("2.28") < v("2.34"));
        assert!(v("2.9") < v("2.10"));
        assert!(v("2.2.5") < v("2.3"));
        assert_eq!(Version::parse(FLOOR), Some(Version::floor()));
        assert_eq!(v("2.3.4").to_string(), "2.3.4");
        assert_eq!(Version::parse("PRIVATE"), None);
        assert_eq!(Version::parse("2"), None);
        assert_eq!(Version::parse("2.x"), None);
    }

    #[test]
    fn only_undefined_glibc_imports_are_read() {
        let needs = Needs::parse(HOST_LINKED);
        let symbols: Vec<&str> = needs.imports.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(
            symbols,
            [
                "__libc_start_main",
                "gettid",
                "pthread_join",
                "fstat64",
                "memcpy"
            ]
        );
        assert!(
            needs
                .required
                .contains(&("libc.so.6".to_owned(), "GLIBC_2.33".to_owned()))
        );
        assert!(
            needs
                .required
                .contains(&("libgcc_s.so.1".to_owned(), "GCC_3.0".to_owned()))
        );
    }

    #[test]
    fn the_host_linked_binary_is_over_the_floor_and_says_by_what() {
        let needs = Needs::parse(HOST_LINKED);
        let (highest, symbols) = needs.highest().expect("versions");
        assert_eq!(highest, v("2.34"));
        assert_eq!(symbols, ["__libc_start_main", "pthread_join"]);
        let above = needs.above(&Version::floor());
        assert_eq!(
            above,
            [
                "GLIBC_2.30 (newer than the floor, glibc 2.28) is needed by gettid",
                "GLIBC_2.33 (newer than the floor, glibc 2.28) is needed by fstat64",
                "GLIBC_2.34 (newer than the floor, glibc 2.28) is needed by \
                 __libc_start_main, pthread_join",
            ]
        );
        // The same binary is fine for a 2.34 floor.
        assert!(needs.above(&v("2.34")).is_empty());
    }

    #[test]
    fn the_zig_linked_binary_meets_the_floor() {
        let needs = Needs::parse(ZIG_LINKED);
        assert!(!needs.is_empty());
        assert_eq!(needs.highest(), Some((v("2.28"), vec!["statx"])));
        assert!(needs.above(&Version::floor()).is_empty());
        assert_eq!(needs.above(&v("2.27")).len(), 1);
    }

    #[test]
    fn an_unnumbered_version_is_always_a_problem() {
        let text = "
    12: 0000000000000000     0 FUNC    GLOBAL DEFAULT  UND __nss_lookup@GLIBC_PRIVATE (9)
Version needs section '.gnu.version_r' contains 1 entry:
  000000: Version: 1  File: libc.so.6  Cnt: 2
  0x0010:   Name: GLIBC_PRIVATE  Flags: none  Version: 9
  0x0020:   Name: GLIBC_ABI_DT_RELR  Flags: none  Version: 10
";
        let above = Needs::parse(text).above(&Version::floor());
        assert_eq!(
            above,
            [
                "GLIBC_ABI_DT_RELR (which no other glibc build grants) is needed by libc.so.6",
                "GLIBC_PRIVATE (which no other glibc build grants) is needed by __nss_lookup",
            ]
        );
    }

    #[test]
    fn a_version_need_without_a_symbol_still_counts() {
        let text = "
Version needs section '.gnu.version_r' contains 1 entry:
  000000: Version: 1  File: libc.so.6  Cnt: 1
  0x0010:   Name: GLIBC_2.35  Flags: none  Version: 2
";
        let needs = Needs::parse(text);
        assert_eq!(needs.highest(), Some((v("2.35"), vec![])));
        assert_eq!(needs.above(&Version::floor()).len(), 1);
    }

    #[test]
    fn no_versions_at_all_is_visible() {
        assert!(Needs::parse("not an ELF file").is_empty());
    }

    #[test]
    fn rpm_glibc_requirements_are_read_and_judged() {
        let requires = "\
/bin/sh
ld-linux-aarch64.so.1()(64bit)
ld-linux-aarch64.so.1(GLIBC_2.17)(64bit)
libc.so.6()(64bit)
libc.so.6(GLIBC_2.17)(64bit)
libc.so.6(GLIBC_2.28)(64bit)
libgcc_s.so.1(GCC_3.0)(64bit)
rtld(GNU_HASH)
";
        let glibc = rpm_requires(requires);
        assert_eq!(
            glibc,
            [
                ("ld-linux-aarch64.so.1".to_owned(), "GLIBC_2.17".to_owned()),
                ("libc.so.6".to_owned(), "GLIBC_2.17".to_owned()),
                ("libc.so.6".to_owned(), "GLIBC_2.28".to_owned()),
            ]
        );
        assert!(rpm_requires_above(&glibc, &Version::floor()).is_empty());
        assert_eq!(
            rpm_requires_above(&glibc, &v("2.27")),
            ["libc.so.6(GLIBC_2.28)"]
        );
    }
}
