//! The wire protocol between applications and `torpor daemon`.
//!
//! The message types and their encoding live in the `torpor-client` crate,
//! so an application links the very same definitions the daemon uses; this
//! module is the agent's view of them. `docs/protocol.md` describes every
//! byte for applications in other languages.

pub use torpor_client::packet;
pub use torpor_client::proto::*;
