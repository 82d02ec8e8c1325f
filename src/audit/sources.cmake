# Sources of src/audit/ (added to aoai_core).
