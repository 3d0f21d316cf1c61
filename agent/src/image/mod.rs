//! Image format.
