//! Shared set-up for the pipeline tests, split by concern.

mod delivery;
mod process;
mod running;
mod servers;

pub use delivery::*;
pub use process::*;
pub use running::*;
pub use servers::*;
