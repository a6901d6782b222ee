//! End-to-end tests: the real `smolvm` binary driving real QEMU guests
//! (TCG here), real SQLite and real qemu-img. Each test gets its own data
//! directory; the tiny test image is built once and shared.

mod common;
mod lifecycle;
mod exec_files;
mod bad_input;
mod snapshots;
mod integrity;
mod fork;
mod crash;
mod doctor;
mod stress;
mod diskfull;
mod counter_guest;
mod firecracker;
