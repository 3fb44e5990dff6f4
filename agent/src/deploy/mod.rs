//! The deployer (DESIGN §5): releases of a service under its deploy root, switched atomically,
//! watched through probation, and rolled back on their own when unhealthy.

pub mod unpack;
