//! Shared helpers for the lab tests in `tests/tests/`: where the running lab is.
