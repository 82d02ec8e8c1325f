# Sources of src/proxy/ (added to aoai_core).
