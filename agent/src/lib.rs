//! torpor: user-space hibernation for the Raspberry Pi Zero.
//!
//! The data flow reads top-down: request → freeze → collect → encode → store
//! → power on the way down; boot → store → decode → rebuild → resume on the
//! way up. Each module is one step of that flow.
#![deny(unsafe_code)]

pub mod apps;
pub mod arch;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod image;
pub mod power;
pub mod protocol;
pub mod store;

/// The torpor version recorded in every image header.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
