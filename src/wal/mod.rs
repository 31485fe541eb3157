//! The write-ahead log (issue 3). Built on the `wal` branch.
