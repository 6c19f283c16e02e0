"""Chat sessions, messages and AI analysis come with the assistant work (DESIGN.md step 6)."""
