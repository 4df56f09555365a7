"""IVR flows as data and the interpreter that runs them on a call (later issue)."""
