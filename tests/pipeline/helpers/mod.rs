//! Shared set-up for the pipeline tests, split by concern.

mod delivery;
mod http;
mod network;
mod process;
mod running;
mod servers;

pub use delivery::*;
pub use http::*;
pub use network::*;
pub use process::*;
pub use running::*;
pub use servers::*;
