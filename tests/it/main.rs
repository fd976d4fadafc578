//! One integration-test binary (as ripgrep does), split in modules. These tests run the real binary on real
//! SQLite files; they need no server. Python readers (pyarrow, DuckDB) come from scripts/python-env.sh.

mod bad_input;
mod common;
mod e2e;
mod faults;
mod resume;
