//! Where the data sets come from, pinned to the commits the reference used, and their download.
