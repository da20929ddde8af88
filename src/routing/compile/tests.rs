//! Compile tests (see tests/ for the seed fixtures).
