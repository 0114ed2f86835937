//! Traceability summary (§5.1) over traffic injected through the sandbox (§5.3).
