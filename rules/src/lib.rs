//! fleet's rules engine, shared by fleet-coordinator (which evaluates rules over its history)
//! and fleetctl (which runs rule unit tests): PromQL evaluation ([`promql`]), rule files and
//! alert state ([`rules`]), alert templates ([`template`]), promtool's unit-test format
//! ([`unittest`]) and Prometheus' PromQL test format ([`promqltest`]).

#![forbid(unsafe_code)]

pub mod labels;
pub mod promql;
pub mod promqltest;
pub mod rules;
pub mod template;
pub mod unittest;
