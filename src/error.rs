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
    /// A data CRC did not match: the cached data is damaged.
    #[error("data CRC mismatch in cached data at offset {offset} (+{len} bytes)")]
    DataCrc { offset: u64, len: u64 },
    /// No free segment for the key log (the cache is full of unreclaimable data).
    #[error("no space: {0}")]
    NoSpace(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn corrupt(what: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Corrupt { what: what.into(), detail: detail.into() }
    }
}
