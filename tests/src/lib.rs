//! End-to-end tests of Labwright live in `e2e/`; this library is empty on purpose.
