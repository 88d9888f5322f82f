//! Scheduler integration tests: lab plans on the simulated site, and shop benchmark instances.

mod lab;
mod shop;
