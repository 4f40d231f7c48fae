//! LightStep receiver unit tests.
