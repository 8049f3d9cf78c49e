//! Exit codes (README, "For cron"), carried as an error so that any command can end
//! with the right one and a clear message.

use std::fmt;

pub const FAILED: u8 = 1;
pub const USAGE: u8 = 2;
pub const TOO_MANY_REJECTS: u8 = 3;

#[derive(Debug)]
pub struct Exit {
    pub code: u8,
    pub message: String,
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

/// A usage or configuration error (exit 2).
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    Exit {
        code: USAGE,
        message: message.into(),
    }
    .into()
}

/// A failed command (exit 1).
pub fn failed(message: impl Into<String>) -> anyhow::Error {
    Exit {
        code: FAILED,
        message: message.into(),
    }
    .into()
}
