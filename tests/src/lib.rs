//! Integration tests for volley.
