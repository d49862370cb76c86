//! Server-side partition assignors for KIP-848 groups (not built yet).
