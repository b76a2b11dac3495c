//! Backend conformance suite: one generic check per primitive, instantiated per backend by `conformance_tests!`.
