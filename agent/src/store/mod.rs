//! A/B store.
