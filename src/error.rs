//! Errors the engine reports. Every one is a plain sentence for an operator.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A caller passed a value the engine cannot accept.
    InvalidArgument(String),
    /// A media access outside the device.
    OutOfBounds { off: u64, len: u64, cap: u64 },
    /// Metadata on the cache device is damaged or crafted; `what` names the structure.
    Corrupt { what: String, detail: String },
    /// The device holds a pcache for another base device or with other options.
    Mismatch(String),
    /// The device holds something that is not a pcache (or a newer version of one).
    NotPcache(String),
    /// Mapping or base-device I/O failed.
    Io(String),
    /// A data CRC did not match: the cached data is damaged.
    DataCrc { offset: u64, len: u64 },
    /// No free segment for the key log (the cache is full of unreclaimable data).
    NoSpace(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn corrupt(what: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Corrupt { what: what.into(), detail: detail.into() }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidArgument(s) => write!(f, "invalid argument: {s}"),
            Error::OutOfBounds { off, len, cap } => {
                write!(f, "access of {len} bytes at offset {off} is outside the device ({cap} bytes)")
            }
            Error::Corrupt { what, detail } => write!(f, "corrupt {what}: {detail}"),
            Error::Mismatch(s) => write!(f, "cache does not match: {s}"),
            Error::NotPcache(s) => write!(f, "not a pcache device: {s}"),
            Error::Io(s) => write!(f, "I/O error: {s}"),
            Error::DataCrc { offset, len } => {
                write!(f, "data CRC mismatch in cached data at offset {offset} (+{len} bytes)")
            }
            Error::NoSpace(s) => write!(f, "no space: {s}"),
        }
    }
}

impl std::error::Error for Error {}
