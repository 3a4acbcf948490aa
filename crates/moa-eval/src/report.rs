//! Reports comparing runs.
