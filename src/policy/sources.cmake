# Sources of src/policy/ (added to aoai_core).
