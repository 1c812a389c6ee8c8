//! Errors the engine reports. Every one is a plain sentence for an operator.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A caller passed a value the engine cannot accept.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A media access outside the device.
    #[error("access of {len} bytes at offset {off} is outside the device ({cap} bytes)")]
    OutOfBounds { off: u64, len: u64, cap: u64 },
    /// Metadata on the cache device is damaged or crafted; `what` names the structure.
    #[error("corrupt {what}: {detail}")]
    Corrupt { what: String, detail: String },
    /// The device holds a pcache for another base device or with other options.
    #[error("cache does not match: {0}")]
    Mismatch(String),
    /// The device holds something that is not a pcache (or a newer version of one).
    #[error("not a pcache device: {0}")]
    NotPcache(String),
    /// Mapping or base-device I/O failed.
    #[error("I/O error: {0}")]
    Io(String),
    /// A system call failed; the operating system's error is kept as the source.
    #[error("I/O error: {context}: {source}")]
    Os {
        context: String,
        #[source]
        source: OsError,
    },
    /// A data CRC did not match: the cached data is damaged.
    #[error("data CRC mismatch in cached data at offset {offset} (+{len} bytes)")]
    DataCrc { offset: u64, len: u64 },
    /// No free segment for the key log (the cache is full of unreclaimable data).
    #[error("no space: {0}")]
    NoSpace(String),
    /// The range is being written to the base past the cache (bypass.rs):
    /// a write over it waits until that ends. Not a lack of space.
    #[error("busy: {0}")]
    Busy(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// `context` (what was being done) failed with the system's error `e`.
    pub fn os(context: impl Into<String>, e: std::io::Error) -> Self {
        Error::Os { context: context.into(), source: OsError(std::sync::Arc::new(e)) }
    }

    pub fn corrupt(what: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Corrupt { what: what.into(), detail: detail.into() }
    }
}

/// An operating-system error kept as an error's source. Shared, so that
/// [`Error`] stays `Clone`; equal when the kind and errno are.
#[derive(Debug, Clone)]
pub struct OsError(std::sync::Arc<std::io::Error>);

impl OsError {
    /// The system's error.
    pub fn io(&self) -> &std::io::Error {
        &self.0
    }
}

impl PartialEq for OsError {
    fn eq(&self, other: &Self) -> bool {
        self.0.kind() == other.0.kind() && self.0.raw_os_error() == other.0.raw_os_error()
    }
}

impl Eq for OsError {}

impl std::fmt::Display for OsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for OsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_system_error_is_kept_as_the_source() {
        let e = Error::os("cannot open /x", std::io::Error::from_raw_os_error(libc::ENOENT));
        assert!(e.to_string().starts_with("I/O error: cannot open /x: No such file"), "{e}");
        let src = std::error::Error::source(&e).expect("the OS error is the source");
        let os = src.downcast_ref::<OsError>().expect("an OsError");
        assert_eq!(os.io().raw_os_error(), Some(libc::ENOENT));
        assert_eq!(e.clone(), e, "errors stay comparable and cloneable");
    }
}
