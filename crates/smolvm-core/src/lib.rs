//! smolvm core.
