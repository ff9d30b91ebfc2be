//! Fault injection for the commit protocol: tests fail each of its steps the way a full disk or a
//! failing device would, then check what the writer and the next writer's recovery make of it.
//!
//! A writer opened with [`crate::StoreWriter::open_with_faults`] asks its [`Faults`] before each
//! step; one opened with [`crate::StoreWriter::open`] has none, and each check costs a test of an
//! `Option`. The steps are the protocol's own (see [`crate::writer`]), not a general file-system
//! layer: what matters is which promises hold when any one of them fails.

use std::io;
use std::path::Path;

/// A step of the commit protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    /// A write of part data into its temporary file.
    PartWrite,
    /// The fsync of the finished temporary file.
    PartSync,
    /// The rename of the part into its table directory.
    Rename,
    /// The fsync of the table directory after the rename.
    DirSync,
    /// The append of the part's manifest line.
    ManifestWrite,
    /// The fsync of the manifest after the append.
    ManifestSync,
}

impl Step {
    /// Every step, in protocol order.
    pub const ALL: [Step; 6] = [
        Step::PartWrite,
        Step::PartSync,
        Step::Rename,
        Step::DirSync,
        Step::ManifestWrite,
        Step::ManifestSync,
    ];

    /// Whether the step writes bytes (and so can be torn).
    pub fn writes(self) -> bool {
        matches!(self, Step::PartWrite | Step::ManifestWrite)
    }
}

/// What an injected fault does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The step fails without doing anything.
    Fail,
    /// A write puts down the first half of its bytes, then fails (a disk filling up mid-write);
    /// other steps just fail.
    Torn,
}

/// Decides, before each step, whether it fails.
pub trait Faults: Send + Sync + std::fmt::Debug {
    /// The fault to inject at this step of the file at `path`, if any.
    fn at(&self, step: Step, path: &Path) -> Option<Fault>;
}

/// The error an injected fault returns: the one a full disk gives.
pub(crate) fn error(step: Step, path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::StorageFull,
        format!("fault injected at {step:?} of {}", path.display()),
    )
}
