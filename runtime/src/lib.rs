//! Loads a tessera artifact and generates tokens.
