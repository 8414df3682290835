//! Build platforms (`OS/ARCH[/VARIANT]`): `--platform` of `hybrid build`
//! and `FROM --platform=...`. The image config's os/architecture/variant
//! and the platform of the manifest's index entry come from it, and a base
//! image that is an index gives the manifest of that platform.
//!
//! `wasip1/wasm` and `wasip2/wasm` are wasm platforms. A wasm image is
//! linux/amd64 with a `.wasm` entrypoint by default; `wasip1/wasm` is
//! accepted too. RUN steps on a wasm platform run only `.wasm` programs
//! (the runtime decides); RUN on any other platform than the host's needs
//! an emulator, which is not supported.

use std::fmt;

use oci_spec::image::{Arch, Os};
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlatformError {
    #[error("invalid platform {0:?} (want OS/ARCH[/VARIANT], e.g. linux/amd64, linux/arm64/v8, wasip1/wasm)")]
    Syntax(String),
    #[error("platform {0:?}: the wasm architecture goes with wasip1 or wasip2, not {1}")]
    WasmOs(String, String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Platform {
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
}

impl Platform {
    /// `OS/ARCH[/VARIANT]`, lower-cased; `x86_64` and `aarch64` become
    /// `amd64` and `arm64` (as in OCI), and `arm64/v8` is `arm64`.
    pub fn parse(text: &str) -> Result<Platform, PlatformError> {
        let bad = || PlatformError::Syntax(text.to_string());
        let lower = text.trim().to_ascii_lowercase();
        let parts: Vec<&str> = lower.split('/').collect();
        let valid = |p: &&str| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(valid) {
            return Err(bad());
        }
        let arch = match parts[1] {
            "x86_64" | "x86-64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        let mut variant = parts.get(2).map(|v| v.to_string());
        if arch == "arm64" && variant.as_deref() == Some("v8") {
            variant = None;
        }
        let os = parts[0];
        if arch == "wasm" && !matches!(os, "wasip1" | "wasip2") {
            return Err(PlatformError::WasmOs(text.to_string(), os.to_string()));
        }
        if matches!(os, "wasip1" | "wasip2") && (arch != "wasm" || variant.is_some()) {
            return Err(bad());
        }
        Ok(Platform { os: os.to_string(), arch: arch.to_string(), variant })
    }

    /// This host's: linux and its architecture.
    pub fn host() -> Platform {
        Platform { os: "linux".into(), arch: crate::image::host_arch().to_string(), variant: None }
    }

    /// `wasip1/wasm` or `wasip2/wasm`.
    pub fn is_wasm(&self) -> bool {
        self.arch == "wasm"
    }

    /// RUN can run here: on the host's platform, or wasm (the runtime
    /// runs `.wasm` programs only).
    pub fn can_run(&self) -> bool {
        self.is_wasm() || self.matches(&Platform::host())
    }

    /// Same os and architecture, and the same variant when both name one.
    pub fn matches(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.arch == other.arch
            && match (&self.variant, &other.variant) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }

    /// Whether an OCI platform (of an index entry) is this one.
    pub fn matches_oci(&self, platform: &oci_spec::image::Platform) -> bool {
        let os = platform.os().to_string().to_ascii_lowercase();
        let arch = platform.architecture().to_string().to_ascii_lowercase();
        let variant = platform.variant().clone().filter(|v| !v.is_empty());
        let text = match &variant {
            Some(v) => format!("{os}/{arch}/{v}"),
            None => format!("{os}/{arch}"),
        };
        Platform::parse(&text).is_ok_and(|p| self.matches(&p))
    }

    pub fn oci_os(&self) -> Os {
        Os::from(self.os.as_str())
    }

    pub fn oci_arch(&self) -> Arch {
        Arch::from(self.arch.as_str())
    }

    pub fn to_oci(&self) -> oci_spec::image::Platform {
        let mut platform = oci_spec::image::Platform::default();
        platform.set_os(self.oci_os());
        platform.set_architecture(self.oci_arch());
        platform.set_variant(self.variant.clone());
        platform
    }
}

impl Default for Platform {
    fn default() -> Self {
        Platform::host()
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Platform {
    type Err = PlatformError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Platform::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_platforms() {
        let p = Platform::parse("linux/amd64").unwrap();
        assert_eq!((p.os.as_str(), p.arch.as_str(), p.variant.clone()), ("linux", "amd64", None));
        assert_eq!(p.to_string(), "linux/amd64");
        assert_eq!(Platform::parse("Linux/x86_64").unwrap(), p);
        let arm = Platform::parse("linux/arm/v7").unwrap();
        assert_eq!(arm.variant.as_deref(), Some("v7"));
        assert_eq!(arm.to_string(), "linux/arm/v7");
        assert_eq!(Platform::parse("linux/arm64/v8").unwrap().to_string(), "linux/arm64");
        assert!(Platform::parse("wasip1/wasm").unwrap().is_wasm());
        assert!(Platform::parse("wasip2/wasm").unwrap().is_wasm());
        for bad in ["", "linux", "linux/", "/amd64", "linux/amd64/v1/x", "linux/am d64", "wasip1/amd64"] {
            assert_eq!(Platform::parse(bad), Err(PlatformError::Syntax(bad.to_string())), "{bad}");
        }
        assert!(matches!(Platform::parse("linux/wasm"), Err(PlatformError::WasmOs(..))));
    }

    #[test]
    fn run_only_on_host_or_wasm() {
        assert!(Platform::host().can_run());
        assert!(Platform::parse("wasip1/wasm").unwrap().can_run());
        let other = if Platform::host().arch == "arm64" { "linux/amd64" } else { "linux/arm64" };
        assert!(!Platform::parse(other).unwrap().can_run());
    }

    #[test]
    fn matches_index_entries() {
        let mut entry = oci_spec::image::Platform::default();
        entry.set_os(Os::Linux);
        entry.set_architecture(Arch::ARM);
        entry.set_variant(Some("v7".into()));
        assert!(Platform::parse("linux/arm/v7").unwrap().matches_oci(&entry));
        assert!(Platform::parse("linux/arm").unwrap().matches_oci(&entry));
        assert!(!Platform::parse("linux/arm/v6").unwrap().matches_oci(&entry));
        assert!(!Platform::parse("linux/amd64").unwrap().matches_oci(&entry));
    }
}
