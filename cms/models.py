"""Role matrix, system settings and audit review come with the access work (DESIGN.md step 2)."""
